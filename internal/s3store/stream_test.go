package s3store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/testkit"
)

// TestPutStream stores bodies of unknown length: empty, under one part, exactly parts long,
// and across parts, each as the bytes read with their SHA-256.
func TestPutStream(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "jobs", s3store.Config{PartSize: minPart, Concurrency: 2})
	for _, size := range []int{0, 1000, 2 * minPart, 2*minPart + 17} {
		data := randomBytes(size)
		// A reader that is not a bytes.Reader, so that nothing can learn its length.
		n, sum, err := f.tree.PutStream(t.Context(), "up/input", io.MultiReader(bytes.NewReader(data)), -1)
		if err != nil {
			t.Fatalf("PutStream of %d bytes: %v", size, err)
		}
		if n != int64(size) || sum != sha256hex(data) {
			t.Errorf("PutStream of %d bytes = %d, %s; want %d, %s", size, n, sum, size, sha256hex(data))
		}
		if got := read(t, f.tree, "up/input"); !bytes.Equal(got, data) {
			t.Errorf("stored %d bytes differ from the %d streamed", len(got), size)
		}
	}
	checkNoUploads(t, f.tree)
}

// failingReader fails after n bytes, as a client whose connection drops.
type failingReader struct {
	r   io.Reader
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	p = p[:min(len(p), f.n)]
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

// TestPutStreamFailureStoresNothing: a body that breaks, or a context that ends, mid-stream
// aborts the multipart upload, and the reader's error stays reachable.
func TestPutStreamFailureStoresNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "jobs", s3store.Config{PartSize: minPart, Concurrency: 1})
	data := randomBytes(3 * minPart)
	broken := errors.New("connection reset")
	_, _, err := f.tree.PutStream(t.Context(), "input", &failingReader{r: bytes.NewReader(data), n: minPart + 5, err: broken}, -1)
	if !errors.Is(err, broken) {
		t.Errorf("PutStream of a broken body = %v; want its error", err)
	}
	checkAbsent(t, f.tree, "input")

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	_, _, err = f.tree.PutStream(ctx, "input", &cancelAfter{r: bytes.NewReader(data), n: minPart + 1, cancel: cancel}, int64(len(data)))
	if fault.KindOf(err) != fault.Canceled {
		t.Errorf("PutStream canceled after a part = %v; want a %s fault", err, fault.Canceled)
	}
	checkAbsent(t, f.tree, "input")
}

// TestHeadOpenAtPresign: Head reports the digest Put recorded and the store's checksum; OpenAt
// reads from an offset only while the object is the one described; a presigned URL serves the
// bytes to a client without credentials.
func TestHeadOpenAtPresign(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "jobs", s3store.Config{PartSize: minPart})
	data := randomBytes(minPart + 100)
	put(t, f.tree, "a/output", data)
	info, err := f.tree.Head(t.Context(), "a/output")
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != int64(len(data)) || info.SHA256 != sha256hex(data) || info.Checksum == "" || info.ETag == "" {
		t.Errorf("Head = %+v; want size %d, SHA-256 %s, a checksum and an ETag", info, len(data), sha256hex(data))
	}
	rc, err := f.tree.OpenAt(t.Context(), "a/output", 1000, info.ETag)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data[1000:]) {
		t.Errorf("OpenAt(1000) read %d bytes, %v; want the %d from offset 1000", len(got), err, len(data)-1000)
	}

	// Another client replaces the object: the old ETag no longer opens it.
	_, err = s3store.Client(f.tree).PutObject(t.Context(), &s3.PutObjectInput{
		Bucket: aws.String(f.bucket), Key: aws.String("jobs/a/output"), Body: bytes.NewReader([]byte("other")),
	})
	if err != nil {
		t.Fatal(err)
	}
	if rc, err := f.tree.OpenAt(t.Context(), "a/output", 0, info.ETag); err == nil {
		rc.Close()
		t.Error("OpenAt with the replaced object's ETag succeeded; want a refusal")
	}
	if info, err := f.tree.Head(t.Context(), "a/output"); err != nil || info.SHA256 != "" {
		t.Errorf("Head of an object put without a digest = %+v, %v; want no SHA-256", info, err)
	}

	put(t, f.tree, "b/output", data)
	u, err := f.tree.PresignGet(t.Context(), "b/output", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || err != nil || !bytes.Equal(body, data) {
		t.Errorf("GET of the presigned URL = %s, %d bytes, %v; want 200 and the object", resp.Status, len(body), err)
	}
}

// BenchmarkPutStream measures a 256 MiB upload of unknown length to versitygw on loopback; its
// memory (B/op) is the part buffers, whatever the size.
func BenchmarkPutStream(b *testing.B) {
	srv := testkit.StartS3(b)
	tree, err := s3store.New(b.Context(), "s3://"+srv.Bucket(b)+"/bench", s3store.Config{Endpoint: srv.Endpoint,
		Credentials: srv.Credentials()})
	if err != nil {
		b.Fatal(err)
	}
	const size = 256 << 20
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := tree.PutStream(b.Context(), "input", io.LimitReader(zeros{}, size), -1); err != nil {
			b.Fatal(err)
		}
	}
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

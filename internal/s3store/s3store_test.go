package s3store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/store"
	"github.com/ptsafe/converter/internal/testkit"
)

// minPart is the smallest part S3 (and versitygw) accepts but for the last.
const minPart = s3store.MinPartSize

// fixture is a versitygw server with a fresh bucket, and a tree on it.
type fixture struct {
	srv    *testkit.S3Server
	bucket string
	tree   *s3store.Tree
}

// newFixture starts a server and opens the tree at s3://BUCKET/prefix on a fresh bucket.
func newFixture(t *testing.T, prefix string, cfg s3store.Config) *fixture {
	t.Helper()
	srv := testkit.StartS3(t)
	f := &fixture{srv: srv, bucket: srv.Bucket(t)}
	f.tree = f.open(t, prefix, cfg)
	return f
}

// open opens another tree on the fixture's bucket.
func (f *fixture) open(t *testing.T, prefix string, cfg s3store.Config) *s3store.Tree {
	t.Helper()
	cfg.Endpoint = f.srv.Endpoint
	cfg.Credentials = f.srv.Credentials()
	tree, err := s3store.New(t.Context(), "s3://"+f.bucket+"/"+prefix, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func put(t *testing.T, tree *s3store.Tree, path string, data []byte) {
	t.Helper()
	if err := tree.Put(t.Context(), path, bytes.NewReader(data), int64(len(data)), sha256hex(data)); err != nil {
		t.Fatal(err)
	}
}

func sha256hex(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func read(t *testing.T, tree *s3store.Tree, path string) []byte {
	t.Helper()
	rc, err := tree.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// randomBytes returns n deterministic bytes that do not compress or repeat by part.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	_, _ = r.Read(b)
	return b
}

// checkAbsent fails t unless nothing is at path, neither an object nor an incomplete upload.
func checkAbsent(t *testing.T, tree *s3store.Tree, path string) {
	t.Helper()
	if _, err := tree.Stat(t.Context(), path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat(%q) after a failed Put = %v; want fs.ErrNotExist", path, err)
	}
	checkNoUploads(t, tree)
}

func checkNoUploads(t *testing.T, tree *s3store.Tree) {
	t.Helper()
	out, err := s3store.Client(tree).ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: aws.String(s3store.Bucket(tree))})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Uploads) != 0 {
		t.Errorf("%d incomplete multipart uploads left, want none", len(out.Uploads))
	}
}

// checkStoredChecksum fails t unless the store holds key with the SHA-256 checksum want: the
// proof that Put sent it, for the store to check the bytes against.
func checkStoredChecksum(t *testing.T, f *fixture, key, want string) {
	t.Helper()
	head, err := s3store.Client(f.tree).HeadObject(t.Context(), &s3.HeadObjectInput{
		Bucket: aws.String(f.bucket), Key: aws.String(key), ChecksumMode: types.ChecksumModeEnabled,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := aws.ToString(head.ChecksumSHA256); got != want {
		t.Errorf("HeadObject(%q) = checksum %q; want %q", key, got, want)
	}
}

func TestWalkListsFilesInLexicalOrderOverPages(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "hub", s3store.Config{})
	root := f.open(t, "", s3store.Config{})
	// '-' < '.' < '/' in byte order: a walk by directories would list "a/b.txt" before "a.b".
	files := []string{"a-z", "a.b", "a/b.txt", "a/c/d.bin", "config.json", "z"}
	for _, p := range files {
		put(t, f.tree, p, []byte(p))
	}
	for _, key := range []string{"hub.txt", "other/x", "hub/m/"} { // beside the prefix, and a directory marker
		if _, err := s3store.Client(f.tree).PutObject(t.Context(), &s3.PutObjectInput{
			Bucket: aws.String(f.bucket), Key: aws.String(key), Body: strings.NewReader(""),
		}); err != nil {
			t.Fatal(err)
		}
	}
	s3store.SetPageSize(f.tree, 2)
	var got []string
	err := f.tree.Walk(t.Context(), func(o store.Object, err error) error {
		if err != nil {
			t.Errorf("Walk passed %q with %v", o.Path, err)
		}
		if o.Size != int64(len(o.Path)) || o.ETag == "" || strings.Contains(o.ETag, `"`) || o.ModTime.IsZero() {
			t.Errorf("Walk passed %+v; want size %d, an unquoted ETag and a time", o, len(o.Path))
		}
		stat, err := f.tree.Stat(t.Context(), o.Path)
		if err != nil || stat.ETag != o.ETag || stat.Size != o.Size || !stat.ModTime.Equal(o.ModTime) {
			t.Errorf("Stat(%q) = %+v, %v; want what Walk passed, %+v", o.Path, stat, err, o)
		}
		got = append(got, o.Path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != strings.Join(files, " ") {
		t.Errorf("Walk listed %q; want %q", got, files)
	}

	// The whole bucket, and fn's error ending the walk.
	stop := errors.New("stop")
	got = nil
	err = root.Walk(t.Context(), func(o store.Object, _ error) error {
		got = append(got, o.Path)
		if o.Path == "hub/a.b" {
			return stop
		}
		return nil
	})
	if want := []string{"hub.txt", "hub/a-z", "hub/a.b"}; !errors.Is(err, stop) || strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("Walk of the bucket = %q, %v; want %q, %v", got, err, want, stop)
	}
}

func TestPutStatOpenRemove(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "models/bert", s3store.Config{})
	for _, data := range [][]byte{{}, []byte(`{"architectures": ["BertModel"]}`)} {
		const path = "org/config.json"
		before := time.Now().Add(-time.Minute)
		put(t, f.tree, path, data)
		o, err := f.tree.Stat(t.Context(), path)
		if err != nil || o.Path != path || o.Size != int64(len(data)) || o.ModTime.Before(before) || o.ETag == "" {
			t.Errorf("Stat = %+v, %v; want %q of %d bytes", o, err, path, len(data))
		}
		if got := read(t, f.tree, path); !bytes.Equal(got, data) {
			t.Errorf("Open read %q; want %q", got, data)
		}
		// The key is under the prefix, as other S3 clients see it.
		sum := sha256.Sum256(data)
		checkStoredChecksum(t, f, "models/bert/"+path, base64.StdEncoding.EncodeToString(sum[:]))
		for range 2 { // removing what is gone is no error
			if err := f.tree.Remove(t.Context(), path); err != nil {
				t.Fatalf("Remove: %v", err)
			}
		}
		checkAbsent(t, f.tree, path)
	}
	if _, err := f.tree.Open(t.Context(), "missing.bin"); !errors.Is(err, fs.ErrNotExist) || fault.KindOf(err) != fault.Internal ||
		!strings.Contains(err.Error(), "s3://"+f.bucket+"/models/bert/missing.bin") {
		t.Errorf("Open of a missing object = %v; want fs.ErrNotExist naming the object", err)
	}
	if s := f.tree.String(); s != "s3://"+f.bucket+"/models/bert" {
		t.Errorf("String() = %q", s)
	}
	if _, ok := f.tree.LocalPath("org/config.json"); ok {
		t.Error("LocalPath of an S3 object is ok")
	}
}

func TestPathsThatAreNotRelativeAreRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "hub", s3store.Config{})
	for _, path := range []string{"", "/etc/passwd", "../other/x", "a//b", "a/./b", "a/"} {
		if err := f.tree.Put(t.Context(), path, strings.NewReader("x"), 1, ""); err == nil {
			t.Errorf("Put(%q) succeeded", path)
		}
		if _, err := f.tree.Stat(t.Context(), path); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Stat(%q) = %v; want a refusal", path, err)
		}
	}
}

func TestPutMultipart(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "hub", s3store.Config{PartSize: minPart, Concurrency: 2})
	data := randomBytes(3*minPart + 12345) // four parts, two in flight
	put(t, f.tree, "pytorch_model.bin", data)
	if got := read(t, f.tree, "pytorch_model.bin"); !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes back, not the %d put", len(got), len(data))
	}
	head, err := s3store.Client(f.tree).HeadObject(t.Context(), &s3.HeadObjectInput{
		Bucket: aws.String(f.bucket), Key: aws.String("hub/pytorch_model.bin"), PartNumber: aws.Int32(1),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := aws.ToInt32(head.PartsCount); got != 4 {
		t.Errorf("the object has %d parts; want 4", got)
	}
	checkStoredChecksum(t, f, "hub/pytorch_model.bin", compositeChecksum(data, minPart))
	// Without an expected SHA-256 the parts' own checksums still apply.
	if err := f.tree.Put(t.Context(), "again.bin", bytes.NewReader(data), int64(len(data)), ""); err != nil {
		t.Fatal(err)
	}
	checkNoUploads(t, f.tree)
}

// TestStoreChecksSHA256 shows that versitygw checks x-amz-checksum-sha256 on PutObject and
// UploadPart, with a signed payload and with the unsigned payload Put sends: what Put relies
// on to know the store holds the bytes it sent.
func TestStoreChecksSHA256(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "", s3store.Config{})
	client := s3store.Client(f.tree)
	wrong := aws.String(base64.StdEncoding.EncodeToString(make([]byte, sha256.Size)))
	for _, tc := range []struct {
		payload string
		opts    []func(*s3.Options)
	}{
		{"signed", nil},
		{"unsigned", []func(*s3.Options){s3store.UnsignedPayload}},
	} {
		_, err := client.PutObject(t.Context(), &s3.PutObjectInput{
			Bucket: aws.String(f.bucket), Key: aws.String("x"), Body: strings.NewReader("data"), ChecksumSHA256: wrong,
		}, tc.opts...)
		if err == nil || !strings.Contains(err.Error(), "BadDigest") {
			t.Errorf("PutObject (%s payload) with a wrong SHA-256 = %v; want BadDigest", tc.payload, err)
		}
		up, err := client.CreateMultipartUpload(t.Context(), &s3.CreateMultipartUploadInput{
			Bucket: aws.String(f.bucket), Key: aws.String("y"), ChecksumAlgorithm: "SHA256",
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = client.UploadPart(t.Context(), &s3.UploadPartInput{
			Bucket: aws.String(f.bucket), Key: aws.String("y"), UploadId: up.UploadId, PartNumber: aws.Int32(1),
			Body: strings.NewReader("data"), ChecksumSHA256: wrong,
		}, tc.opts...)
		if err == nil || !strings.Contains(err.Error(), "BadDigest") {
			t.Errorf("UploadPart (%s payload) with a wrong SHA-256 = %v; want BadDigest", tc.payload, err)
		}
	}
}

// partDigests returns the hex SHA-256 of each partSize bytes of data, as a conversion takes them.
func partDigests(data []byte, partSize int) []string {
	var sums []string
	for part := range slices.Chunk(data, partSize) {
		sums = append(sums, sha256hex(part))
	}
	return sums
}

// TestPutFile: an object the caller hashed goes in one request, checked by the store against
// the caller's digest, which becomes its checksum; bytes other than those hashed are refused
// and leave nothing.
func TestPutFile(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "hub", s3store.Config{PartSize: minPart})
	data := randomBytes(3*minPart + 12345) // more than a part: still one request
	size := int64(len(data))
	if got := f.tree.FilePartSize(size); got != 0 {
		t.Errorf("FilePartSize(%d) = %d; want 0, one request", size, got)
	}
	if err := f.tree.PutFile(t.Context(), "model.safetensors", bytes.NewReader(data), size, sha256hex(data), 0, nil); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.tree, "model.safetensors"); !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes back, not the %d put", len(got), len(data))
	}
	sum := sha256.Sum256(data)
	checkStoredChecksum(t, f, "hub/model.safetensors", base64.StdEncoding.EncodeToString(sum[:]))
	if info, err := f.tree.Head(t.Context(), "model.safetensors"); err != nil || info.SHA256 != sha256hex(data) {
		t.Errorf("Head = %+v, %v; want the SHA-256 put recorded", info, err)
	}
	other := bytes.Clone(data)
	other[size-1] ^= 1
	err := f.tree.PutFile(t.Context(), "other.safetensors", bytes.NewReader(other), size, sha256hex(data), 0, nil)
	if err == nil || !strings.Contains(err.Error(), "BadDigest") {
		t.Errorf("PutFile of bytes that are not those hashed = %v; want BadDigest", err)
	}
	checkAbsent(t, f.tree, "other.safetensors")
	if err := f.tree.PutFile(t.Context(), "x", bytes.NewReader(data), size, "", 0, nil); err == nil {
		t.Error("PutFile without a SHA-256 succeeded")
	}
	if err := f.tree.PutFile(t.Context(), "x", bytes.NewReader(data), -1, sha256hex(data), 0, nil); fault.KindOf(err) != fault.Internal {
		t.Errorf("PutFile of a negative size = %v; want an internal fault", err)
	}
}

// TestPutFileInParts: an object too large for one request is a multipart upload that sends the
// caller's part digests as its checksums, so that bytes other than those the caller hashed are
// refused by the store, part by part, and the failed upload leaves nothing; parts of another
// size than the upload's are hashed as by Put.
func TestPutFileInParts(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "hub", s3store.Config{PartSize: minPart, Concurrency: 2})
	s3store.SetSingleMax(f.tree, minPart)
	data := randomBytes(3*minPart + 12345)
	size, sums := int64(len(data)), partDigests(data, minPart)
	if got := f.tree.FilePartSize(size); got != minPart {
		t.Fatalf("FilePartSize(%d) = %d; want %d", size, got, minPart)
	}
	if err := f.tree.PutFile(t.Context(), "model.safetensors", bytes.NewReader(data), size, sha256hex(data), minPart, sums); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.tree, "model.safetensors"); !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes back, not the %d put", len(got), len(data))
	}
	checkStoredChecksum(t, f, "hub/model.safetensors", compositeChecksum(data, minPart))
	if info, err := f.tree.Head(t.Context(), "model.safetensors"); err != nil || info.SHA256 != sha256hex(data) {
		t.Errorf("Head = %+v, %v; want the SHA-256 put recorded", info, err)
	}

	other := bytes.Clone(data)
	other[minPart+1] ^= 1 // in the second part
	for _, tc := range []struct {
		name     string
		partSize int64
		sums     []string
		want     string
	}{
		{"bytes that are not those hashed", minPart, sums, "BadDigest"},
		{"a digest short", minPart, sums[1:], "3 part digests"},
		{"a digest that is not hex", minPart, append([]string{"xyz"}, sums[1:]...), "not 64 hex digits"},
		// Put's own hashing finds the bytes are not those of the expected SHA-256.
		{"parts of another size", 2 * minPart, partDigests(data, 2*minPart), "SHA-256 mismatch"},
	} {
		err := f.tree.PutFile(t.Context(), "other.safetensors", bytes.NewReader(other), size, sha256hex(data), tc.partSize, tc.sums)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("PutFile of %s = %v; want an error with %q", tc.name, err, tc.want)
		}
		checkAbsent(t, f.tree, "other.safetensors")
	}
}

// compositeChecksum is the multipart checksum of data in parts of partSize: the SHA-256 of
// the parts' SHA-256 digests, base64, then "-" and the count of parts.
func compositeChecksum(data []byte, partSize int) string {
	composite := sha256.New()
	n := 0
	for part := range slices.Chunk(data, partSize) {
		sum := sha256.Sum256(part)
		composite.Write(sum[:])
		n++
	}
	return fmt.Sprintf("%s-%d", base64.StdEncoding.EncodeToString(composite.Sum(nil)), n)
}

func TestPutRefusesContentThatIsNotTheExpected(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "hub", s3store.Config{PartSize: minPart, Concurrency: 2})
	for _, size := range []int{100, 2*minPart + 1} {
		data := randomBytes(size)
		other := bytes.Clone(data)
		other[size-1] ^= 1 // the last byte: all but the last part were already sent
		put(t, f.tree, "model.bin", data)
		err := f.tree.Put(t.Context(), "model.bin", bytes.NewReader(other), int64(size), sha256hex(data))
		if err == nil || !strings.Contains(err.Error(), "SHA-256 mismatch") {
			t.Errorf("Put of %d bytes that differ from their SHA-256 = %v; want a mismatch", size, err)
		}
		if got := read(t, f.tree, "model.bin"); !bytes.Equal(got, data) {
			t.Errorf("the failed Put of %d bytes replaced the object", size)
		}
		checkNoUploads(t, f.tree)
		if err := f.tree.Put(t.Context(), "x", strings.NewReader(""), 0, "abc"); err == nil {
			t.Error("Put with a SHA-256 that is not 64 hex digits succeeded")
		}
	}
}

func TestPutOfAShortReaderStoresNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "hub", s3store.Config{PartSize: minPart, Concurrency: 2})
	for _, size := range []int{100, 3 * minPart} {
		data := randomBytes(size)
		err := f.tree.Put(t.Context(), "short.bin", bytes.NewReader(data[:size*2/3]), int64(size), "")
		if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			t.Errorf("Put of a reader short by %d bytes = %v; want an unexpected EOF", size-size*2/3, err)
		}
		checkAbsent(t, f.tree, "short.bin")
	}
}

// cancelAfter cancels a context once more than n bytes have been read through it.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n -= n; c.n < 0 {
		c.cancel()
	}
	return n, err
}

func TestCanceledPutStoresNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "hub", s3store.Config{PartSize: minPart, Concurrency: 1})
	data := randomBytes(4 * minPart)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r := &cancelAfter{r: bytes.NewReader(data), n: minPart + 1, cancel: cancel}
	err := f.tree.Put(ctx, "model.bin", r, int64(len(data)), sha256hex(data))
	if fault.KindOf(err) != fault.Canceled {
		t.Errorf("Put canceled after a part = %v; want a %s fault", err, fault.Canceled)
	}
	checkAbsent(t, f.tree, "model.bin")
}

// TestKilledUploadIsInvisibleAndAborted plays a run killed mid-upload: a multipart upload with
// a part sent and never completed.
func TestKilledUploadIsInvisibleAndAborted(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "hub", s3store.Config{})
	client := s3store.Client(f.tree)
	start := func(key string) {
		up, err := client.CreateMultipartUpload(t.Context(), &s3.CreateMultipartUploadInput{Bucket: aws.String(f.bucket), Key: aws.String(key)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.UploadPart(t.Context(), &s3.UploadPartInput{
			Bucket: aws.String(f.bucket), Key: aws.String(key), UploadId: up.UploadId, PartNumber: aws.Int32(1),
			Body: bytes.NewReader(randomBytes(minPart)),
		}); err != nil {
			t.Fatal(err)
		}
	}
	start("hub/model.bin")
	start("other/model.bin") // outside the tree: not ours to abort
	start("hub/job/output")
	start("hub/jobs/output") // beside hub/job/: not in it
	if n, err := f.tree.AbortIncompleteIn(t.Context(), "job", time.Now().Add(time.Hour)); n != 1 || err != nil {
		t.Errorf("AbortIncompleteIn(job, in an hour) = %d, %v; want 1", n, err)
	}
	if _, err := f.tree.Stat(t.Context(), "model.bin"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of an incomplete upload = %v; want fs.ErrNotExist", err)
	}
	err := f.tree.Walk(t.Context(), func(o store.Object, _ error) error {
		t.Errorf("Walk passed %q, an incomplete upload", o.Path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Uploads started after the cut-off belong to a run still going.
	if n, err := f.tree.AbortIncomplete(t.Context(), time.Now().Add(-time.Hour)); n != 0 || err != nil {
		t.Errorf("AbortIncomplete(an hour ago) = %d, %v; want 0", n, err)
	}
	if n, err := f.tree.AbortIncomplete(t.Context(), time.Now().Add(time.Hour)); n != 2 || err != nil {
		t.Errorf("AbortIncomplete(in an hour) = %d, %v; want 2", n, err)
	}
	out, err := client.ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: aws.String(f.bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Uploads) != 1 || aws.ToString(out.Uploads[0].Key) != "other/model.bin" {
		t.Errorf("uploads left: %d; want only other/model.bin's", len(out.Uploads))
	}
}

func TestStoreErrorsAreClassified(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "hub", s3store.Config{})
	missing, err := s3store.New(t.Context(), "s3://no-such-bucket/hub", s3store.Config{
		Endpoint:    f.srv.Endpoint,
		Credentials: f.srv.Credentials(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := missing.Walk(t.Context(), func(store.Object, error) error { return nil }); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Walk of a missing bucket = %v; want fs.ErrNotExist", err)
	}
	if err := missing.Ping(t.Context()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Ping of a missing bucket = %v; want fs.ErrNotExist", err)
	}
	if err := f.tree.Ping(t.Context()); err != nil {
		t.Errorf("Ping of the bucket = %v; want nil", err)
	}
	stranger, err := s3store.New(t.Context(), "s3://"+f.bucket+"/hub", s3store.Config{
		Endpoint:    f.srv.Endpoint,
		Credentials: credentials.NewStaticCredentialsProvider(f.srv.AccessKey, "not the secret", ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.Stat(t.Context(), "x"); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Stat with a wrong secret = %v; want fs.ErrPermission", err)
	}
	if err := stranger.Ping(t.Context()); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Ping with a wrong secret = %v; want fs.ErrPermission", err)
	}
}

// TestStandardChain configures everything through the SDK's environment, as the CLI is: the
// credentials, and an endpoint that AWS_ENDPOINT_URL names, which must be addressed path-style.
// The endpoint is named "localhost" here: the SDK addresses an IP address path-style anyway.
func TestStandardChain(t *testing.T) {
	srv := testkit.StartS3(t)
	bucket := srv.Bucket(t)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		if k == "AWS_ENDPOINT_URL" {
			v = strings.Replace(v, "127.0.0.1", "localhost", 1)
		}
		t.Setenv(k, v)
	}
	tree, err := s3store.New(t.Context(), "s3://"+bucket+"/hub", s3store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	put(t, tree, "config.json", []byte("{}"))
	if got := read(t, tree, "config.json"); string(got) != "{}" {
		t.Errorf("read %q back; want {}", got)
	}
}

func TestTinyPartSizeIsRaisedToTheMinimum(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "hub", s3store.Config{PartSize: 1 << 20})
	data := randomBytes(minPart + 1)
	put(t, f.tree, "model.bin", data) // two parts, or S3's EntityTooSmall for 1 MiB parts
	if got := read(t, f.tree, "model.bin"); !bytes.Equal(got, data) {
		t.Error("read other bytes back")
	}
}

package s3store

import (
	"context"
	"crypto/sha256"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/testkit"
)

func TestStoredMismatch(t *testing.T) {
	t.Parallel()
	const sum = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
	for _, tc := range []struct {
		name     string
		size     int64
		checksum *string
		ok       bool
	}{
		{"the object put", 5, aws.String(sum), true},
		{"a store that keeps no checksums", 5, nil, true},
		{"a truncated object", 4, aws.String(sum), false},
		{"other bytes", 5, aws.String("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="), false},
		{"a multipart object where one part was put", 5, aws.String(sum + "-1"), false},
	} {
		err := storedMismatch(&s3.HeadObjectOutput{ContentLength: aws.Int64(tc.size), ChecksumSHA256: tc.checksum}, 5, sum)
		if (err == nil) != tc.ok {
			t.Errorf("%s: storedMismatch = %v; want ok %v", tc.name, err, tc.ok)
		}
	}
}

// TestConfirmed: a part sent with the caller's digest counts only when the store's answer
// echoes that checksum; a store that ignores checksums echoes none.
func TestConfirmed(t *testing.T) {
	t.Parallel()
	const sum = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
	for _, tc := range []struct {
		name string
		got  *string
		ok   bool
	}{
		{"the checksum echoed", aws.String(sum), true},
		{"no checksum in the answer", nil, false},
		{"another checksum", aws.String("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="), false},
	} {
		if err := confirmed(sum, tc.got); (err == nil) != tc.ok {
			t.Errorf("%s: confirmed = %v; want ok %v", tc.name, err, tc.ok)
		}
	}
}

// TestBodyClassifiesReadErrors: a connection that drops or a context canceled while an object
// is read fails the read with a fault naming the object and the bytes read; EOF stays EOF.
func TestBodyClassifiesReadErrors(t *testing.T) {
	t.Parallel()
	tree := &Tree{bucket: "models"}
	b := &body{ReadCloser: io.NopCloser(io.MultiReader(strings.NewReader("0123456789"), iotest.ErrReader(context.Canceled))), tree: tree, key: "hub/model.bin"}
	n, err := io.Copy(io.Discard, b)
	if n != 10 || fault.KindOf(err) != fault.Canceled || !strings.Contains(err.Error(), "s3://models/hub/model.bin: cannot read after 10 bytes") {
		t.Errorf("read %d bytes, %v; want 10 and a canceled fault naming the object", n, err)
	}
	b = &body{ReadCloser: io.NopCloser(strings.NewReader("")), tree: tree, key: "hub/model.bin"}
	if _, err := b.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read at the end = %v; want io.EOF itself", err)
	}
}

// TestBuffers: a released part buffer is reused only for a part of the configured size.
func TestBuffers(t *testing.T) {
	t.Parallel()
	tree := &Tree{partSize: MinPartSize}
	for range 3 {
		b := tree.buffer(MinPartSize)
		if len(b) != MinPartSize {
			t.Fatalf("buffer(%d) has %d bytes", MinPartSize, len(b))
		}
		tree.releaseBuffer(b)
		if b := tree.buffer(2 * MinPartSize); len(b) != 2*MinPartSize {
			t.Fatalf("buffer(%d) after a release of %d has %d bytes", 2*MinPartSize, MinPartSize, len(b))
		}
		tree.releaseBuffer(make([]byte, 10)) // not kept: it would be too short for a part
		tree.releaseBuffer(nil)              // a buffer never taken
	}
}

// TestCheckRead: after a store that did not check the checksum took an object, the bytes sent
// are hashed here; the object stays when they are those expected and is removed when not.
func TestCheckRead(t *testing.T) {
	t.Parallel()
	srv := testkit.StartS3(t)
	tree, err := New(t.Context(), "s3://"+srv.Bucket(t), Config{Endpoint: srv.Endpoint,
		Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("the bytes hashed")
	want := sha256.Sum256(data)
	for _, tc := range []struct {
		sent string
		kept bool
	}{
		{"the bytes hashed", true},
		{"the bytes changed", false},
	} {
		if err := tree.Put(t.Context(), "model.safetensors", strings.NewReader(tc.sent), int64(len(tc.sent)), ""); err != nil {
			t.Fatal(err)
		}
		err := tree.checkRead(t.Context(), "model.safetensors", strings.NewReader(tc.sent), want[:])
		_, statErr := tree.Stat(t.Context(), "model.safetensors")
		if (err == nil) != tc.kept || (statErr == nil) != tc.kept {
			t.Errorf("sent %q: checkRead = %v, then Stat = %v; want the object kept %v", tc.sent, err, statErr, tc.kept)
		}
	}
}

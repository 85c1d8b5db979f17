package s3store

import (
	"context"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/ptsafe/converter/internal/fault"
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

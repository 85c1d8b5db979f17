package s3store

import (
	"context"
	"encoding/hex"
	"io"
	"net/url"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/ptsafe/converter/internal/fault"
)

// PutStream stores what r yields at path, for a body whose length and digest are known only
// once it ends (an HTTP upload): always as a multipart upload, each part sent with its
// SHA-256 checksum while the next is read, and the whole hashed as it streams, never held in
// memory beyond Config.Concurrency parts. sizeHint is the expected length, or negative when
// unknown; it only chooses the part size (Config.PartSize when unknown, which bounds the
// object at 10,000 parts). An upload that fails, or whose ctx ends, is aborted: nothing
// appears at path. It returns the length and SHA-256 (lower-case hex) of the object stored.
func (t *Tree) PutStream(ctx context.Context, path string, r io.Reader, sizeHint int64) (int64, string, error) {
	key, err := t.key(path)
	if err != nil {
		return 0, "", err
	}
	partSize := t.partSize
	if sizeHint > 0 {
		partSize = t.partSizeFor(sizeHint)
	}
	s, err := t.putMultipart(ctx, key, r, -1, partSize, sending{}, nil)
	if err != nil {
		return 0, "", err
	}
	if err := t.checkStored(ctx, key, s.size, s.checksum); err != nil {
		return 0, "", err
	}
	return s.size, hex.EncodeToString(s.sha256), nil
}

// Info describes a stored object as a HEAD request answers.
type Info struct {
	Size    int64
	ModTime time.Time
	ETag    string // without quotes
	// Checksum is the store's SHA-256 checksum of the object, base64: of its bytes for an object
	// put in one request, composite ("BASE64-N", over the parts' checksums) for a multipart
	// upload; "" when the store keeps none.
	Checksum string
	// SHA256 is the SHA-256 (lower-case hex) its writer recorded in its metadata (see Put); ""
	// when it has none.
	SHA256 string
}

// Head describes the object at path, with its checksum and recorded SHA-256.
func (t *Tree) Head(ctx context.Context, path string) (Info, error) {
	key, err := t.key(path)
	if err != nil {
		return Info{}, err
	}
	out, err := t.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &t.bucket, Key: &key, ChecksumMode: types.ChecksumModeEnabled})
	if err != nil {
		return Info{}, t.fail(err, key, "cannot stat")
	}
	return Info{
		Size:     aws.ToInt64(out.ContentLength),
		ModTime:  aws.ToTime(out.LastModified),
		ETag:     etag(out.ETag),
		Checksum: aws.ToString(out.ChecksumSHA256),
		SHA256:   out.Metadata[sha256Metadata],
	}, nil
}

// OpenAt streams the object at path from byte offset on, only if it still is the object whose
// ETag is etag (a GET with If-Match): an object replaced since it was described is refused
// with a fault naming it, not served in its place.
func (t *Tree) OpenAt(ctx context.Context, path string, offset int64, etag string) (io.ReadCloser, error) {
	key, err := t.key(path)
	if err != nil {
		return nil, err
	}
	in := &s3.GetObjectInput{Bucket: &t.bucket, Key: &key}
	if offset > 0 {
		in.Range = aws.String("bytes=" + strconv.FormatInt(offset, 10) + "-")
	}
	if etag != "" {
		in.IfMatch = aws.String(`"` + etag + `"`)
	}
	out, err := t.client.GetObject(ctx, in)
	if err != nil {
		return nil, t.fail(err, key, "cannot open at byte %d", offset)
	}
	return &body{ReadCloser: out.Body, tree: t, key: key, read: offset}, nil
}

// PresignGet returns a URL that lets whoever holds it GET the object at path, without
// credentials, until ttl has passed. Nothing is sent to the store.
func (t *Tree) PresignGet(ctx context.Context, path string, ttl time.Duration) (*url.URL, error) {
	key, err := t.key(path)
	if err != nil {
		return nil, err
	}
	req, err := s3.NewPresignClient(t.client, s3.WithPresignExpires(ttl)).PresignGetObject(ctx,
		&s3.GetObjectInput{Bucket: &t.bucket, Key: &key})
	if err != nil {
		return nil, fault.Wrap(fault.Internal, t.url(key), err, "cannot presign")
	}
	return url.Parse(req.URL)
}

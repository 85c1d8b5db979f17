package s3store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/store"
)

// Config selects the store and tunes uploads. The zero value uses AWS (or the endpoint the
// SDK's own settings name) with the standard credential chain.
type Config struct {
	// Endpoint is the URL of an S3-compatible store, for example "http://127.0.0.1:7070". Empty
	// means AWS, or the endpoint the SDK's settings name (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3,
	// a profile's endpoint_url). Any such endpoint is addressed path-style.
	Endpoint string
	// Credentials replaces the standard credential chain when not nil.
	Credentials aws.CredentialsProvider
	// PartSize is the size of a multipart upload's parts, and the largest object Put sends in
	// a single request; 0 means DefaultPartSize, and less than MinPartSize means MinPartSize.
	// An object larger than 10,000 parts of PartSize hold gets larger parts.
	PartSize int64
	// Concurrency is how many parts of one upload are in flight at once; 0 means
	// DefaultConcurrency. A Put holds at most Concurrency buffers of the part size.
	Concurrency int
}

const (
	// DefaultPartSize is Config.PartSize's default: the SDK transfer manager's default part
	// size is 8 MiB; 16 MiB halves the requests for multi-gigabyte checkpoints.
	DefaultPartSize = 16 << 20
	// MinPartSize is the smallest part S3 accepts, but for the last.
	MinPartSize = 5 << 20
	// DefaultConcurrency is Config.Concurrency's default, as in the SDK's transfer manager.
	DefaultConcurrency = 4
	// maxParts is S3's limit on the parts of one upload.
	maxParts = 10000
	// maxSingleSize is S3's limit on an object put in one request.
	maxSingleSize = 5 << 30
	// defaultRegion is used when nothing names one: S3-compatible stores mostly ignore it, and
	// the SDK refuses to sign without one.
	defaultRegion = "us-east-1"
)

// Tree is the objects under one S3 prefix. It is safe for concurrent use.
type Tree struct {
	client      *s3.Client
	location    string
	bucket      string
	prefix      string // "" for the whole bucket, else the key prefix ending in "/"
	partSize    int64
	concurrency int
	singleMax   int64 // the largest object PutFile sends in one request
	pageSize    int32 // ListObjectsV2 MaxKeys; 0 lets the store choose (1000 on S3)
	// buffers holds part buffers of partSize bytes (*[]byte) between uploads: at most the
	// parts in flight at once, until the garbage collector takes them back.
	buffers sync.Pool
}

var _ store.Tree = (*Tree)(nil)

// New returns the tree at location, "s3://bucket" or "s3://bucket/prefix" (a trailing slash is
// allowed). It loads the SDK's configuration (credentials, region, endpoint) but sends no
// request: a missing bucket or bad credentials show at the first call.
func New(ctx context.Context, location string, cfg Config) (*Tree, error) {
	bucket, prefix, err := ParseLocation(location)
	if err != nil {
		return nil, err
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fault.Wrap(fault.Internal, location, err, "cannot load the AWS SDK configuration")
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		if o.Region == "" {
			o.Region = defaultRegion
		}
		if o.BaseEndpoint != nil {
			// On-prem stores serve buckets as paths, and many reject the CRC32 checksums and
			// aws-chunked bodies the SDK sends by default (aws/aws-sdk-go-v2#3151). Put sends
			// its own SHA-256 checksums whatever these say.
			o.UsePathStyle = true
			o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
			o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		}
	})
	t := &Tree{
		client:      client,
		location:    location,
		bucket:      bucket,
		prefix:      prefix,
		partSize:    cfg.PartSize,
		concurrency: cfg.Concurrency,
		singleMax:   maxSingleSize,
	}
	if t.partSize == 0 {
		t.partSize = DefaultPartSize
	}
	t.partSize = max(t.partSize, MinPartSize)
	if t.concurrency <= 0 {
		t.concurrency = DefaultConcurrency
	}
	return t, nil
}

// ParseLocation splits s3://bucket/prefix into the bucket and the key prefix ("" or ending in
// "/"). The prefix must itself be a relative path (no empty, "." or ".." element), so that
// every key under it maps to one, and a prefix that is a string prefix of another on a "/"
// boundary names a tree holding the other's.
func ParseLocation(location string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(location, "s3://")
	if !ok {
		return "", "", fault.New(fault.Internal, location, "not an S3 location: want s3://bucket/prefix")
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	if bucket == "" {
		return "", "", fault.New(fault.Internal, location, "no bucket in the S3 location")
	}
	prefix = strings.TrimRight(prefix, "/")
	if prefix == "" {
		return bucket, "", nil
	}
	if reason := badPath(prefix); reason != "" {
		return "", "", fault.New(fault.Internal, location, "bad S3 prefix: %s", reason)
	}
	return bucket, prefix + "/", nil
}

// badPath says why p cannot be a tree's relative path, or returns "" when it can.
func badPath(p string) string {
	if p == "" {
		return "empty path"
	}
	if strings.ContainsRune(p, 0) {
		return "NUL byte in the path"
	}
	for elem := range strings.SplitSeq(p, "/") {
		switch elem {
		case "":
			return "empty path element (leading, trailing or doubled slash)"
		case ".", "..":
			return fmt.Sprintf("%q path element", elem)
		}
	}
	return ""
}

// String returns the location as given to New.
func (t *Tree) String() string { return t.location }

// LocalPath reports that no object has a local file name.
func (t *Tree) LocalPath(string) (string, bool) { return "", false }

// key returns the object key of a tree path, refusing a path that is not relative.
func (t *Tree) key(path string) (string, error) {
	if reason := badPath(path); reason != "" {
		return "", fault.New(fault.Internal, t.url(t.prefix+path), "not a relative path: %s", reason)
	}
	return t.prefix + path, nil
}

// url names an object in messages the way users write it.
func (t *Tree) url(key string) string { return "s3://" + t.bucket + "/" + key }

// Walk lists the objects under the prefix, a page at a time, in the store's order: S3 lists keys
// in ascending UTF-8 byte order, which is the lexical order of their paths. Directory markers
// (keys ending in "/") are not files and are left out; a key that is no relative path is
// passed with a *store.SkipError.
func (t *Tree) Walk(ctx context.Context, fn func(store.Object, error) error) error {
	in := &s3.ListObjectsV2Input{Bucket: &t.bucket}
	if t.prefix != "" {
		in.Prefix = &t.prefix
	}
	if t.pageSize > 0 {
		in.MaxKeys = &t.pageSize
	}
	var w walker
	pages := s3.NewListObjectsV2Paginator(t.client, in)
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return t.fail(err, t.prefix, "cannot list")
		}
		for _, o := range page.Contents {
			obj, skip, err := w.entry(t.prefix, o)
			if err != nil {
				return t.fail(err, aws.ToString(o.Key), "cannot list")
			}
			if obj.Path == "" {
				continue
			}
			if err := fn(obj, skip); err != nil {
				return err
			}
		}
	}
	return nil
}

// walker turns listed objects into tree entries, checking the order the Tree contract promises.
type walker struct{ last string }

// errOrder is returned when a store lists keys out of order: resuming and reporting rely on
// the lexical order, so a store that breaks it is not silently trusted.
var errOrder = errors.New("the store listed keys out of ascending order")

// entry returns the tree entry of o listed under prefix: an Object with an empty Path for a
// directory marker, an Object with a *store.SkipError for a key that is no relative path.
func (w *walker) entry(prefix string, o types.Object) (obj store.Object, skip, err error) {
	key := aws.ToString(o.Key)
	if key <= w.last {
		return store.Object{}, nil, errOrder
	}
	w.last = key
	rel, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return store.Object{}, nil, fmt.Errorf("the store listed a key outside the prefix %q", prefix)
	}
	if strings.HasSuffix(rel, "/") {
		return store.Object{}, nil, nil
	}
	obj = store.Object{
		Path:    rel,
		Size:    aws.ToInt64(o.Size),
		ModTime: aws.ToTime(o.LastModified),
		ETag:    etag(o.ETag),
	}
	if reason := badPath(rel); reason != "" {
		return obj, &store.SkipError{Path: rel, Reason: "key is not a relative path: " + reason}, nil
	}
	return obj, nil, nil
}

// etag removes the quotes of an entity tag, which some stores send in listings and not in
// HEAD answers, so that the same object always has the same ETag.
func etag(s *string) string { return strings.Trim(aws.ToString(s), `"`) }

// Ping asks the store for at most one key under the prefix: a cheap request that succeeds
// only when the store answers, the bucket exists and the credentials may list it.
func (t *Tree) Ping(ctx context.Context) error {
	in := &s3.ListObjectsV2Input{Bucket: &t.bucket, MaxKeys: aws.Int32(1)}
	if t.prefix != "" {
		in.Prefix = &t.prefix
	}
	if _, err := t.client.ListObjectsV2(ctx, in); err != nil {
		return t.fail(err, t.prefix, "cannot list")
	}
	return nil
}

// Stat describes the object at path.
func (t *Tree) Stat(ctx context.Context, path string) (store.Object, error) {
	info, err := t.Head(ctx, path)
	if err != nil {
		return store.Object{}, err
	}
	return store.Object{Path: path, Size: info.Size, ModTime: info.ModTime, ETag: info.ETag}, nil
}

// Open streams the object at path.
func (t *Tree) Open(ctx context.Context, path string) (io.ReadCloser, error) {
	return t.OpenAt(ctx, path, 0, "")
}

// body is an object's content being read, whose read errors (a dropped connection, a canceled
// context) are classified and name the object like every other error of the tree.
type body struct {
	io.ReadCloser
	tree *Tree
	key  string
	read int64
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read += int64(n)
	if err != nil && err != io.EOF {
		err = b.tree.fail(err, b.key, "cannot read after %d bytes", b.read)
	}
	return n, err
}

// Remove deletes the object at path; S3 answers success for a key that is already gone.
func (t *Tree) Remove(ctx context.Context, path string) error {
	key, err := t.key(path)
	if err != nil {
		return err
	}
	if _, err := t.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &t.bucket, Key: &key}); err != nil {
		return t.fail(err, key, "cannot remove")
	}
	return nil
}

// fail classifies the error of a request about key: Canceled when the context ended, with
// fs.ErrNotExist or fs.ErrPermission in the chain when the store's error code says so.
func (t *Tree) fail(err error, key, format string, args ...any) error {
	kind := fault.Internal
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		kind = fault.Canceled
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "NoSuchKey", "NotFound", "NoSuchBucket", "NoSuchUpload":
			err = fmt.Errorf("%w: %w", fs.ErrNotExist, err)
		case "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch":
			err = fmt.Errorf("%w: %w", fs.ErrPermission, err)
		}
	}
	return fault.Wrap(kind, t.url(key), err, format, args...)
}

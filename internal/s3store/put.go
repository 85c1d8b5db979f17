package s3store

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
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"

	"github.com/ptsafe/converter/internal/fault"
)

// cleanupTimeout bounds the requests that undo a failed upload, which run even when the
// caller's context has ended.
const cleanupTimeout = time.Minute

// sha256Metadata is the user metadata key (x-amz-meta-sha256) holding the SHA-256 (lower-case
// hex) of an object's whole content, as its writer expected it.
const sha256Metadata = "sha256"

// Put stores size bytes read from r at path. An object of at most one part goes in one
// PutObject request; a larger one is a multipart upload of bounded parts, several in flight,
// completed only when every part is sent and the whole matched sha256hex, and aborted on any
// failure. Every request carries the SHA-256 of its bytes (x-amz-checksum-sha256), which the
// store checks. Afterwards the stored object's size and checksum are checked. An object put
// with its expected SHA-256 records it in its metadata (Info.SHA256), so that a reader can
// tell it from an object another client put at the name later.
func (t *Tree) Put(ctx context.Context, path string, r io.Reader, size int64, sha256hex string) error {
	key, err := t.key(path)
	if err != nil {
		return err
	}
	if size < 0 {
		return fault.New(fault.Internal, t.url(key), "negative size %d", size)
	}
	var want []byte
	if sha256hex != "" {
		if want, err = hex.DecodeString(sha256hex); err != nil || len(want) != sha256.Size {
			return fault.New(fault.Internal, t.url(key), "expected SHA-256 %q is not 64 hex digits", sha256hex)
		}
	}
	var metadata map[string]string
	if want != nil {
		metadata = map[string]string{sha256Metadata: hex.EncodeToString(want)}
	}
	var checksum string
	partSize := t.partSizeFor(size)
	if size <= partSize {
		checksum, err = t.putObject(ctx, key, r, size, want, metadata)
	} else {
		var s sent
		s, err = t.putMultipart(ctx, key, r, size, partSize, want, metadata)
		checksum = s.checksum
	}
	if err != nil {
		return err
	}
	return t.checkStored(ctx, key, size, checksum)
}

// partSizeFor returns the part size for an object of size bytes: the configured one, or more
// when the object would need more than maxParts parts.
func (t *Tree) partSizeFor(size int64) int64 {
	return max(t.partSize, (size+maxParts-1)/maxParts)
}

// putObject sends an object of at most one part in one request, read into a buffer first so
// that the SDK can sign it and retry it. It returns the checksum sent.
func (t *Tree) putObject(ctx context.Context, key string, r io.Reader, size int64, want []byte, metadata map[string]string) (string, error) {
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", fault.Wrap(fault.Internal, t.url(key), err, "cannot read the %d bytes to put", size)
	}
	sum := sha256.Sum256(buf)
	if err := checkSum(sum[:], want); err != nil {
		return "", fault.Wrap(fault.Internal, t.url(key), err, "refusing to put")
	}
	checksum := base64.StdEncoding.EncodeToString(sum[:])
	_, err := t.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:         &t.bucket,
		Key:            &key,
		Body:           bytes.NewReader(buf),
		ContentLength:  &size,
		ChecksumSHA256: &checksum,
		Metadata:       metadata,
	})
	if err != nil {
		return "", t.fail(err, key, "cannot put")
	}
	return checksum, nil
}

// errSum says that the bytes read are not those the caller expected.
var errSum = errors.New("SHA-256 mismatch")

func checkSum(got, want []byte) error {
	if want != nil && !bytes.Equal(got, want) {
		return fmt.Errorf("%w: read %x, expected %x", errSum, got, want)
	}
	return nil
}

// putMultipart sends size bytes from r (size < 0: until r ends) as parts of partSize, at most
// t.concurrency at once, and completes the upload only if all went well; otherwise it aborts
// it. The object carries metadata.
func (t *Tree) putMultipart(ctx context.Context, key string, r io.Reader, size, partSize int64, want []byte, metadata map[string]string) (sent, error) {
	created, err := t.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket:            &t.bucket,
		Key:               &key,
		ChecksumAlgorithm: types.ChecksumAlgorithmSha256,
		Metadata:          metadata,
	})
	if err != nil {
		return sent{}, t.fail(err, key, "cannot start a multipart upload")
	}
	up := upload{tree: t, key: key, id: created.UploadId}
	s, err := up.sendParts(ctx, r, size, partSize, want)
	if err == nil {
		_, err = t.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket:          &t.bucket,
			Key:             &key,
			UploadId:        up.id,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: s.parts},
		})
		if err != nil {
			err = t.fail(err, key, "cannot complete the multipart upload")
		}
	}
	if err != nil {
		return sent{}, errors.Join(err, up.abort(ctx))
	}
	return s, nil
}

// upload is one multipart upload in progress.
type upload struct {
	tree *Tree
	key  string
	id   *string
}

// sendParts reads r a part at a time into one of t.concurrency buffers, hashing every byte,
// and sends each part while the next is read. size < 0 means unknown: parts are read until r
// ends (an empty r is one empty part), at most maxParts of them. It returns the parts for
// completion, the composite checksum and what was read: its length and SHA-256.
func (u upload) sendParts(ctx context.Context, r io.Reader, size, partSize int64, want []byte) (sent, error) {
	t := u.tree
	type part struct {
		done types.CompletedPart
		sum  [sha256.Size]byte
	}
	var parts []*part
	free := make(chan []byte, t.concurrency)
	for range t.concurrency {
		free <- nil // allocated on first use, so a small upload holds few buffers
	}
	g, gctx := errgroup.WithContext(ctx)
	whole := sha256.New()
	var read int64
	readErr := func() error {
		for i := 0; ; i++ {
			if size >= 0 && read == size && i > 0 {
				return nil
			}
			if i == maxParts {
				return fault.New(fault.Internal, t.url(u.key), "more than %d parts of %d bytes", maxParts, partSize)
			}
			var buf []byte
			select {
			case buf = <-free:
			case <-gctx.Done():
				return fault.Wrap(fault.Canceled, t.url(u.key), gctx.Err(), "multipart upload stopped")
			}
			if buf == nil {
				buf = make([]byte, partSize)
			}
			length := partSize
			if size >= 0 {
				length = min(partSize, size-read)
			}
			n, err := io.ReadFull(r, buf[:length])
			last := false
			switch {
			case size < 0 && (err == io.EOF && i > 0):
				free <- buf
				return nil
			case size < 0 && (err == io.EOF || err == io.ErrUnexpectedEOF):
				last = true
			case err != nil:
				free <- buf
				return fault.Wrap(fault.Internal, t.url(u.key), err, "cannot read part %d (%d bytes)", i+1, length)
			}
			data := buf[:n]
			read += int64(n)
			whole.Write(data)
			p := &part{}
			parts = append(parts, p)
			number := int32(i + 1)
			// Each part is hashed again by its sender, so that the two hashes run on two cores.
			g.Go(func() error {
				defer func() { free <- buf }()
				p.sum = sha256.Sum256(data)
				var err error
				p.done, err = u.sendPart(gctx, number, data, p.sum[:])
				return err
			})
			if last {
				return nil
			}
		}
	}()
	// A failed part stops the reading: its error is the one to report.
	if err := g.Wait(); err != nil {
		return sent{}, err
	}
	if readErr != nil {
		return sent{}, readErr
	}
	s := sent{size: read, sha256: whole.Sum(nil)}
	if err := checkSum(s.sha256, want); err != nil {
		return sent{}, fault.Wrap(fault.Internal, t.url(u.key), err, "refusing to complete the multipart upload")
	}
	composite := sha256.New()
	for _, p := range parts {
		composite.Write(p.sum[:])
		s.parts = append(s.parts, p.done)
	}
	s.checksum = fmt.Sprintf("%s-%d", base64.StdEncoding.EncodeToString(composite.Sum(nil)), len(parts))
	return s, nil
}

// sent is what a multipart upload sent: its parts, the object's composite checksum (the
// SHA-256 of the parts' SHA-256s, then "-" and their count), and the bytes read.
type sent struct {
	parts    []types.CompletedPart
	checksum string
	size     int64
	sha256   []byte
}

// sendPart uploads one part with its checksum, which the store checks, and returns what
// completing the upload needs to name it.
func (u upload) sendPart(ctx context.Context, number int32, part, sum []byte) (types.CompletedPart, error) {
	t := u.tree
	checksum := aws.String(base64.StdEncoding.EncodeToString(sum))
	out, err := t.client.UploadPart(ctx, &s3.UploadPartInput{
		Bucket:         &t.bucket,
		Key:            &u.key,
		UploadId:       u.id,
		PartNumber:     &number,
		Body:           bytes.NewReader(part),
		ContentLength:  aws.Int64(int64(len(part))),
		ChecksumSHA256: checksum,
	})
	if err != nil {
		return types.CompletedPart{}, t.fail(err, u.key, "cannot upload part %d", number)
	}
	return types.CompletedPart{PartNumber: &number, ETag: out.ETag, ChecksumSHA256: checksum}, nil
}

// abort discards the upload's parts, even when ctx has ended: a canceled Put must not leave
// them behind (a killed one does; AbortIncomplete finds those).
func (u upload) abort(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	t := u.tree
	return t.abortUpload(ctx, u.key, u.id)
}

// abortUpload aborts the multipart upload id of key.
func (t *Tree) abortUpload(ctx context.Context, key string, id *string) error {
	_, err := t.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &t.bucket, Key: &key, UploadId: id})
	if err != nil {
		return t.fail(err, key, "cannot abort the multipart upload %s", aws.ToString(id))
	}
	return nil
}

// checkStored compares the stored object with the one put: the request checksums cover the
// bytes sent, this covers a store that assembled them wrongly, or another client's put to the
// same name meanwhile.
func (t *Tree) checkStored(ctx context.Context, key string, size int64, checksum string) error {
	out, err := t.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &t.bucket, Key: &key, ChecksumMode: types.ChecksumModeEnabled})
	if err != nil {
		return t.fail(err, key, "cannot check the object put")
	}
	if err := storedMismatch(out, size, checksum); err != nil {
		return fault.Wrap(fault.Internal, t.url(key), err, "the store does not hold the object put")
	}
	return nil
}

// storedMismatch compares a HEAD answer with the size and SHA-256 checksum put. A store that
// keeps no checksums answers none, and is checked by size alone.
func storedMismatch(out *s3.HeadObjectOutput, size int64, checksum string) error {
	if got := aws.ToInt64(out.ContentLength); got != size {
		return fmt.Errorf("%d bytes stored, %d put", got, size)
	}
	if got := aws.ToString(out.ChecksumSHA256); got != "" && got != checksum {
		return fmt.Errorf("SHA-256 checksum %s stored, %s put", got, checksum)
	}
	return nil
}

// AbortIncomplete aborts the multipart uploads under the prefix started before olderThan: a
// run killed mid-upload leaves its parts stored (and billed) but invisible. Uploads started
// after olderThan are left alone, since another run may be sending them. It returns how many
// it aborted.
func (t *Tree) AbortIncomplete(ctx context.Context, olderThan time.Time) (int, error) {
	return t.abortIncomplete(ctx, t.prefix, olderThan)
}

// AbortIncompleteIn is AbortIncomplete for the uploads to names under the directory dir only:
// a writer that knows no other run can be sending there (the one that was is dead) aborts
// them all with olderThan now.
func (t *Tree) AbortIncompleteIn(ctx context.Context, dir string, olderThan time.Time) (int, error) {
	key, err := t.key(dir)
	if err != nil {
		return 0, err
	}
	return t.abortIncomplete(ctx, key+"/", olderThan)
}

func (t *Tree) abortIncomplete(ctx context.Context, prefix string, olderThan time.Time) (int, error) {
	in := &s3.ListMultipartUploadsInput{Bucket: &t.bucket}
	if prefix != "" {
		in.Prefix = &prefix
	}
	aborted := 0
	pages := s3.NewListMultipartUploadsPaginator(t.client, in)
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return aborted, t.fail(err, prefix, "cannot list incomplete multipart uploads")
		}
		for _, mu := range page.Uploads {
			if !aws.ToTime(mu.Initiated).Before(olderThan) {
				continue
			}
			switch err := t.abortUpload(ctx, aws.ToString(mu.Key), mu.UploadId); {
			case errors.Is(err, fs.ErrNotExist):
				// Another run aborted or completed it meanwhile.
			case err != nil:
				return aborted, err
			default:
				aborted++
			}
		}
	}
	return aborted, nil
}

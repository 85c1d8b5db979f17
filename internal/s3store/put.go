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
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
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
	return t.put(ctx, path, r, size, sha256hex, nil)
}

// partSizeFor returns the size of the parts Put splits an object of size bytes into: the
// configured one, or more when the object would need more than 10,000 parts.
func (t *Tree) partSizeFor(size int64) int64 {
	return max(t.partSize, (size+maxParts-1)/maxParts)
}

// FilePartSize returns the size of the parts PutFile splits an object of size bytes into, or
// 0 when it sends it in one request: the part digests a caller should take (see PutFile).
func (t *Tree) FilePartSize(size int64) int64 {
	if size <= t.singleMax {
		return 0
	}
	return t.partSizeFor(size)
}

// PutFile stores the size bytes of f at path, for a caller that hashed them as it wrote them
// (a conversion into a staging copy): sha256hex is their SHA-256, and partSHA256, when set,
// the SHA-256 of each consecutive partSize bytes, the last part shorter. Nothing is hashed
// here, and nothing is held in memory but for a multipart upload's parts:
//   - an object of at most 5 GiB (S3's limit for one request) goes in one PutObject request
//     that streams f and carries sha256hex as its checksum: the store checks the whole object
//     against the caller's digest, and its checksum is that digest. A store that does not
//     confirm the checksum checked nothing, so f is hashed and compared as Put would, and the
//     object removed when it differs;
//   - a larger object is a multipart upload. When partSize is FilePartSize(size), every part
//     goes with the caller's digest as its checksum, which the store checks and must confirm
//     before the upload is completed; otherwise it is Put.
//
// So the object stored is exactly the bytes the caller hashed, or nothing appears.
// sha256hex is recorded (Info.SHA256).
func (t *Tree) PutFile(ctx context.Context, path string, f io.ReaderAt, size int64, sha256hex string, partSize int64, partSHA256 []string) error {
	r := io.NewSectionReader(f, 0, size)
	if size > t.singleMax {
		if partSize != t.partSizeFor(size) {
			partSHA256 = nil
		}
		return t.put(ctx, path, r, size, sha256hex, partSHA256)
	}
	key, want, err := t.target(path, size, sha256hex)
	if err != nil {
		return err
	}
	if want == nil {
		return fault.New(fault.Internal, t.url(key), "no SHA-256 to put the file with")
	}
	checksum := base64.StdEncoding.EncodeToString(want)
	out, err := t.sendObject(ctx, key, r, size, checksum, map[string]string{sha256Metadata: sha256hex})
	if err != nil {
		return err
	}
	if confirmed(checksum, out.ChecksumSHA256) != nil {
		if err := t.checkRead(ctx, key, io.NewSectionReader(f, 0, size), want); err != nil {
			return err
		}
	}
	return t.checkStored(ctx, key, size, checksum)
}

// checkRead hashes what r yields and compares it with want, the SHA-256 the object just put
// at key was sent with, for a store that did not check it: the object is removed when it
// differs.
func (t *Tree) checkRead(ctx context.Context, key string, r io.Reader, want []byte) error {
	h := sha256.New()
	_, err := io.Copy(h, r)
	if err == nil {
		if err = checkSum(h.Sum(nil), want); err == nil {
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	_, rmErr := t.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &t.bucket, Key: &key})
	if rmErr != nil {
		rmErr = t.fail(rmErr, key, "cannot remove the object put")
	}
	return errors.Join(fault.Wrap(fault.Internal, t.url(key), err, "the store did not check the object put, which differs from what was expected"), rmErr)
}

// target checks a put's path, size and expected SHA-256 (hex, or "" for none) and returns the
// object's key and the digest's bytes (nil for none).
func (t *Tree) target(path string, size int64, sha256hex string) (string, []byte, error) {
	key, err := t.key(path)
	if err != nil {
		return "", nil, err
	}
	if size < 0 {
		return "", nil, fault.New(fault.Internal, t.url(key), "negative size %d", size)
	}
	want, err := t.expected(key, sha256hex)
	return key, want, err
}

// put is Put, with the SHA-256 (hex) of each part of partSizeFor(size) bytes when the caller
// took them, for a multipart upload to send as its checksums (see PutFile).
func (t *Tree) put(ctx context.Context, path string, r io.Reader, size int64, sha256hex string, partSHA256 []string) error {
	key, want, err := t.target(path, size, sha256hex)
	if err != nil {
		return err
	}
	var metadata map[string]string
	if want != nil {
		metadata = map[string]string{sha256Metadata: hex.EncodeToString(want)}
	}
	partSize := t.partSizeFor(size)
	var checksum string
	if size <= partSize {
		checksum, err = t.putObject(ctx, key, r, size, want, metadata)
	} else {
		in := sending{want: want}
		if partSHA256 != nil {
			if in.given, err = partSums(partSHA256, size, partSize); err != nil {
				return fault.Wrap(fault.Internal, t.url(key), err, "refusing to put")
			}
		}
		var s sent
		s, err = t.putMultipart(ctx, key, r, size, partSize, in, metadata)
		checksum = s.checksum
	}
	if err != nil {
		return err
	}
	return t.checkStored(ctx, key, size, checksum)
}

// expected decodes the SHA-256 a caller expects of the object at key ("": none, nil).
func (t *Tree) expected(key, sha256hex string) ([]byte, error) {
	if sha256hex == "" {
		return nil, nil
	}
	want, err := hex.DecodeString(sha256hex)
	if err != nil || len(want) != sha256.Size {
		return nil, fault.New(fault.Internal, t.url(key), "expected SHA-256 %q is not 64 hex digits", sha256hex)
	}
	return want, nil
}

// partSums decodes the hex SHA-256 digests of the parts of size bytes split at partSize.
func partSums(hexSums []string, size, partSize int64) ([][]byte, error) {
	if want := max(1, (size+partSize-1)/partSize); int64(len(hexSums)) != want {
		return nil, fmt.Errorf("%d part digests for %d bytes in parts of %d, not %d", len(hexSums), size, partSize, want)
	}
	sums := make([][]byte, len(hexSums))
	for i, h := range hexSums {
		var err error
		if sums[i], err = hex.DecodeString(h); err != nil || len(sums[i]) != sha256.Size {
			return nil, fmt.Errorf("SHA-256 of part %d %q is not 64 hex digits", i+1, h)
		}
	}
	return sums, nil
}

// sending says how the bytes sent are checked: against want, the expected SHA-256 of the
// whole (nil: none), after hashing them here; or, when given is set, by the store alone,
// against given, the caller's SHA-256 of each part.
type sending struct {
	want  []byte
	given [][]byte
}

// partSum returns the SHA-256 of part i, data: the caller's, or its own.
func (in sending) partSum(i int, data []byte) []byte {
	if in.given != nil {
		return in.given[i]
	}
	sum := sha256.Sum256(data)
	return sum[:]
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
	if _, err := t.sendObject(ctx, key, bytes.NewReader(buf), size, checksum, metadata); err != nil {
		return "", err
	}
	return checksum, nil
}

// sendObject puts body, size bytes whose SHA-256 is checksum (base64), at key in one request.
func (t *Tree) sendObject(ctx context.Context, key string, body io.Reader, size int64, checksum string, metadata map[string]string) (*s3.PutObjectOutput, error) {
	out, err := t.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:         &t.bucket,
		Key:            &key,
		Body:           body,
		ContentLength:  &size,
		ChecksumSHA256: &checksum,
		Metadata:       metadata,
	}, unsignedPayload)
	if err != nil {
		return nil, t.fail(err, key, "cannot put")
	}
	return out, nil
}

// unsignedPayload makes a request's SigV4 payload hash UNSIGNED-PAYLOAD, for the requests
// that carry x-amz-checksum-sha256: that header is signed and the store checks the body
// against it, so the body is as bound to the signature as by SigV4's own payload hash, which
// would be another SHA-256 of every byte on each side (the SDK's, and the store's check).
func unsignedPayload(o *s3.Options) {
	o.APIOptions = append(o.APIOptions, v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)
}

// confirmed requires a store's answer to echo the checksum sent, the sign that it checked the
// bytes against it: a store that ignores x-amz-checksum-sha256 echoes none.
func confirmed(sent string, got *string) error {
	if g := aws.ToString(got); g != sent {
		return fmt.Errorf("the store confirmed SHA-256 checksum %q, not the %s sent", g, sent)
	}
	return nil
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
func (t *Tree) putMultipart(ctx context.Context, key string, r io.Reader, size, partSize int64, in sending, metadata map[string]string) (sent, error) {
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
	s, err := up.sendParts(ctx, r, size, partSize, in)
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

// sendParts reads r a part at a time into one of t.concurrency buffers, hashing every byte
// unless the parts' digests are given, and sends each part while the next is read. size < 0
// means unknown: parts are read until r ends (an empty r is one empty part), at most maxParts
// of them. It returns the parts for completion, the composite checksum and what was read: its
// length and, when it hashed it, its SHA-256.
func (u upload) sendParts(ctx context.Context, r io.Reader, size, partSize int64, in sending) (sent, error) {
	t := u.tree
	type part struct {
		done types.CompletedPart
		sum  []byte
	}
	var parts []*part
	free := make(chan []byte, t.concurrency)
	for range t.concurrency {
		free <- nil // taken on first use, so a small upload holds few buffers
	}
	defer func() {
		for range t.concurrency {
			t.releaseBuffer(<-free)
		}
	}()
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
				buf = t.buffer(partSize)
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
			if in.given == nil {
				whole.Write(data)
			}
			p := &part{}
			parts = append(parts, p)
			number := int32(i + 1)
			// Each part is hashed again by its sender, so that the two hashes run on two cores.
			g.Go(func() error {
				defer func() { free <- buf }()
				p.sum = in.partSum(i, data)
				var err error
				// ctx, not gctx: a sibling's failure stops the reading but lets the parts in
				// flight end, so that the abort that follows comes after every request the
				// store is still handling, none of which can then bring the upload back.
				p.done, err = u.sendPart(ctx, number, data, p.sum, in.given != nil)
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
	s := sent{size: read}
	if in.given == nil {
		s.sha256 = whole.Sum(nil)
		if err := checkSum(s.sha256, in.want); err != nil {
			return sent{}, fault.Wrap(fault.Internal, t.url(u.key), err, "refusing to complete the multipart upload")
		}
	}
	composite := sha256.New()
	for _, p := range parts {
		composite.Write(p.sum)
		s.parts = append(s.parts, p.done)
	}
	s.checksum = fmt.Sprintf("%s-%d", base64.StdEncoding.EncodeToString(composite.Sum(nil)), len(parts))
	return s, nil
}

// buffer returns a part buffer of size bytes: one an earlier upload released when it has the
// configured part size (most uploads), so that its pages are not faulted in and zeroed again.
func (t *Tree) buffer(size int64) []byte {
	if size == t.partSize {
		if b, ok := t.buffers.Get().(*[]byte); ok {
			return *b
		}
	}
	return make([]byte, size)
}

// releaseBuffer keeps a part buffer of the configured size (nil: none) for the next upload.
func (t *Tree) releaseBuffer(b []byte) {
	if int64(len(b)) == t.partSize {
		t.buffers.Put(&b)
	}
}

// sent is what a multipart upload sent: its parts, the object's composite checksum (the
// SHA-256 of the parts' SHA-256s, then "-" and their count), and the bytes read (their
// SHA-256 nil when the parts' digests were given).
type sent struct {
	parts    []types.CompletedPart
	checksum string
	size     int64
	sha256   []byte
}

// sendPart uploads one part with its checksum, which the store checks (and must confirm in
// its answer when confirm is set), and returns what completing the upload needs to name it.
func (u upload) sendPart(ctx context.Context, number int32, part, sum []byte, confirm bool) (types.CompletedPart, error) {
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
	}, unsignedPayload)
	if err == nil && confirm {
		err = confirmed(*checksum, out.ChecksumSHA256)
	}
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

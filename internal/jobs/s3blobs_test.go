package jobs_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/google/uuid"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/testkit"
)

// s3Fixture is a versitygw bucket, the configuration of a service keeping its jobs' files
// there under jobs/, and a client of the bucket acting as anyone else.
type s3Fixture struct {
	cfg    jobs.Config
	srv    *testkit.S3Server
	client *s3.Client
	bucket string
}

func newS3Fixture(t *testing.T, conv jobs.Converter) *s3Fixture {
	t.Helper()
	srv := testkit.StartS3(t)
	bucket := srv.Bucket(t)
	return &s3Fixture{
		cfg: jobs.Config{Dir: t.TempDir(), Converter: conv, Store: "s3://" + bucket + "/jobs",
			StoreConfig: s3store.Config{Endpoint: srv.Endpoint, Credentials: srv.Credentials(), PartSize: s3store.MinPartSize, Concurrency: 1}},
		srv: srv, client: srv.Client(), bucket: bucket,
	}
}

func (f *s3Fixture) keys(t *testing.T) []string { return f.srv.Keys(t, f.bucket) }

func (f *s3Fixture) uploads(t *testing.T) int { return len(f.srv.Uploads(t, f.bucket)) }

// brokenBody yields n bytes, then fails as a dropped connection does, or cancels a context.
type brokenBody struct {
	n      int
	cancel context.CancelFunc
}

var errDropped = errors.New("connection reset by peer")

func (b *brokenBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		if b.cancel != nil {
			b.cancel()
			return 0, context.Canceled
		}
		return 0, errDropped
	}
	n := min(len(p), b.n)
	clear(p[:n])
	b.n -= n
	return n, nil
}

// TestS3UploadThatFailsLeavesNothing: an upload whose body breaks, or whose request is
// canceled, after a part was sent leaves no object and no multipart upload.
func TestS3UploadThatFailsLeavesNothing(t *testing.T) {
	f := newS3Fixture(t, succeeding)
	s := openConfig(t, f.cfg)
	if _, err := s.Stage(t.Context(), &brokenBody{n: s3store.MinPartSize + 10}, -1); !errors.Is(err, errDropped) {
		t.Errorf("Stage of a dropped body = %v; want its error", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if _, err := s.Stage(ctx, &brokenBody{n: s3store.MinPartSize + 10, cancel: cancel}, 3*s3store.MinPartSize); err == nil {
		t.Error("Stage of a canceled upload succeeded")
	}
	if keys, n := f.keys(t), f.uploads(t); len(keys) != 0 || n != 0 {
		t.Errorf("after failed uploads: objects %q and %d multipart uploads; want none", keys, n)
	}
	// A staged upload that does not become a job is removed too.
	up, err := s.Stage(t.Context(), strings.NewReader("checkpoint"), -1)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Discard(); err != nil {
		t.Fatal(err)
	}
	if keys := f.keys(t); len(keys) != 0 {
		t.Errorf("after Discard: objects %q; want none", keys)
	}
}

// TestS3SweepRemovesStrays: at start, multipart uploads and objects no job owns are removed
// once older than the grace period, and kept before; the jobs' own objects stay.
func TestS3SweepRemovesStrays(t *testing.T) {
	f := newS3Fixture(t, succeeding)
	f.cfg.StoreGrace = time.Hour
	s := openConfig(t, f.cfg)
	j := submit(t, s, "checkpoint")
	waitFor(t, s, j.ID, "succeeded", func(j jobs.Job, err error) bool { return err == nil && j.State == jobs.StateSucceeded })
	stop(t, s)

	// An object under a job id no job has, and an input its succeeded job no longer owns.
	for _, key := range []string{"jobs/" + uuid.NewString() + "/input", "jobs/" + j.ID + "/input"} {
		if _, err := f.client.PutObject(t.Context(), &s3.PutObjectInput{Bucket: aws.String(f.bucket), Key: aws.String(key), Body: bytes.NewReader([]byte("x"))}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.client.CreateMultipartUpload(t.Context(), &s3.CreateMultipartUploadInput{Bucket: aws.String(f.bucket), Key: aws.String("jobs/" + uuid.NewString() + "/input")}); err != nil {
		t.Fatal(err)
	}
	want := []string{"jobs/" + j.ID + "/manifest.json", "jobs/" + j.ID + "/output.safetensors"}

	stop(t, openConfig(t, f.cfg)) // within the grace period: nothing is touched
	if keys, n := f.keys(t), f.uploads(t); len(keys) != 4 || n != 1 {
		t.Errorf("young strays: objects %q and %d uploads; want both strays kept and one upload", keys, n)
	}

	f.cfg.StoreGrace = time.Nanosecond
	s = openConfig(t, f.cfg)
	if keys, n := f.keys(t), f.uploads(t); !slices.Equal(keys, want) || n != 0 {
		t.Errorf("old strays: objects %q and %d uploads; want %q and none", keys, n, want)
	}
	_, a, err := s.OpenOutput(t.Context(), "t", j.ID)
	if err != nil {
		t.Fatalf("OpenOutput after the sweep: %v", err)
	}
	defer a.Close()
	if got, _ := io.ReadAll(a); string(got) != "converted" {
		t.Errorf("output = %q; want the converter's", got)
	}
}

func stop(t *testing.T, s *jobs.Service) {
	t.Helper()
	if err := s.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestS3RetentionRemovesObjects: an expired job's objects go with it.
func TestS3RetentionRemovesObjects(t *testing.T) {
	f := newS3Fixture(t, succeeding)
	f.cfg.Retention = time.Second
	s := openConfig(t, f.cfg)
	id := submit(t, s, "x").ID
	waitFor(t, s, id, "expired", func(_ jobs.Job, err error) bool { return errors.Is(err, jobs.ErrNotFound) })
	if keys := f.keys(t); len(keys) != 0 {
		t.Errorf("objects after expiry = %q; want none", keys)
	}
}

// TestS3OutputReadsAtOffsets: an output larger than a part is stored, verified and read
// from any offset, as http.ServeContent seeks for ranges.
func TestS3OutputReadsAtOffsets(t *testing.T) {
	data := make([]byte, 2*s3store.MinPartSize+1000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	f := newS3Fixture(t, converterFunc(func(_ context.Context, _, dst string, _ convert.Options) (*convert.Manifest, error) {
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			return nil, err
		}
		sum := sha256.Sum256(data)
		return &convert.Manifest{Output: &convert.Output{Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}}, nil
	}))
	s := openConfig(t, f.cfg)
	j := submit(t, s, "checkpoint")
	waitFor(t, s, j.ID, "succeeded", func(j jobs.Job, err error) bool { return err == nil && j.State == jobs.StateSucceeded })
	_, a, err := s.OpenOutput(t.Context(), "t", j.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Size() != int64(len(data)) || a.Location() != "" {
		t.Errorf("artifact size %d, location %q; want %d and none", a.Size(), a.Location(), len(data))
	}
	for _, off := range []int64{s3store.MinPartSize - 3, 10, int64(len(data)) - 5} {
		if _, err := a.Seek(off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(a, buf); err != nil || !bytes.Equal(buf, data[off:off+5]) {
			t.Errorf("5 bytes at %d = %x, %v; want %x", off, buf, err, data[off:off+5])
		}
	}
	if end, err := a.Seek(0, io.SeekEnd); err != nil || end != int64(len(data)) {
		t.Errorf("Seek to the end = %d, %v; want %d", end, err, len(data))
	}
	if n, err := a.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("Read at the end = %d, %v; want io.EOF", n, err)
	}
}

// recording converts in process and keeps the options of its last conversion; with flip, it
// then flips the output's last byte, as a failing disk or another writer could: the staging
// copy no longer holds the bytes the conversion hashed.
type recording struct {
	flip bool
	mu   sync.Mutex
	opts convert.Options
}

func (c *recording) Convert(ctx context.Context, src, dst string, opts convert.Options) (*convert.Manifest, error) {
	c.mu.Lock()
	c.opts = opts
	c.mu.Unlock()
	m, err := convert.InProcess{}.Convert(ctx, src, dst, opts)
	if err != nil || !c.flip {
		return m, err
	}
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, m.Output.Size-1); err != nil {
		return nil, err
	}
	b[0] ^= 0xff
	_, err = f.WriteAt(b, m.Output.Size-1)
	return m, err
}

func (c *recording) Scan(ctx context.Context, src string, opts convert.Options) (*convert.Manifest, error) {
	return convert.InProcess{}.Scan(ctx, src, opts)
}

func (c *recording) last() convert.Options {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opts
}

// torchFixture returns the bytes of a real torch checkpoint from testdata/torch.
func torchFixture(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../../testdata/torch/dtypes.pt")
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestOutputIsStagedOnS3: a job whose files live in S3 converts into a staging copy (not
// synced, not read back), put with the conversion's digests; a local job's output is its
// durable file, as before. Either way the output served is the one the job recorded.
func TestOutputIsStagedOnS3(t *testing.T) {
	for _, tc := range []struct {
		name    string
		s3      bool
		staging bool
	}{
		{"local", false, false},
		{"s3", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conv := &recording{}
			cfg := jobs.Config{Dir: t.TempDir(), Converter: conv}
			if tc.s3 {
				f := newS3Fixture(t, conv)
				cfg = f.cfg
			}
			s := openConfig(t, cfg)
			j := submit(t, s, torchFixture(t))
			j = waitFor(t, s, j.ID, "finished", terminal)
			if j.State != jobs.StateSucceeded {
				t.Fatalf("job %s %+v; want succeeded", j.State, j.Error)
			}
			if got := conv.last().Staging; got != tc.staging {
				t.Errorf("conversion with Staging %v; want %v", got, tc.staging)
			}
			_, a, err := s.OpenOutput(t.Context(), "t", j.ID)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			h := sha256.New()
			if _, err := io.Copy(h, a); err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(h.Sum(nil)); got != j.OutputSHA256 {
				t.Errorf("output served has sha-256 %s; want the job's %s", got, j.OutputSHA256)
			}
		})
	}
}

// TestS3CorruptStagingCopyFails: a staging copy that differs from what the conversion wrote
// is refused by the store, on every attempt: the job fails and no output object appears.
func TestS3CorruptStagingCopyFails(t *testing.T) {
	f := newS3Fixture(t, &recording{flip: true})
	f.cfg.MaxAttempts = 2
	s := openConfig(t, f.cfg)
	j := submit(t, s, torchFixture(t))
	j = waitFor(t, s, j.ID, "finished", terminal)
	if j.State != jobs.StateFailed || j.Error == nil || j.Error.Type != fault.Internal || j.Attempts != 2 {
		t.Errorf("job %s %+v after %d attempts; want failed internal after 2", j.State, j.Error, j.Attempts)
	}
	if keys, n := f.keys(t), f.uploads(t); len(keys) != 0 || n != 0 {
		t.Errorf("objects %q and %d multipart uploads; want none", keys, n)
	}
}

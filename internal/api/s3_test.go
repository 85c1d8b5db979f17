package api_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/testkit"
)

// s3Env is a server whose jobs' files live on a real S3-compatible store (versitygw), with a
// client of that store acting as anyone else who can write to the bucket.
type s3Env struct {
	*env
	srv    *testkit.S3Server
	client *s3.Client
	bucket string
}

// newS3Env starts a server with o on a fresh bucket, its jobs' files under jobs/.
func newS3Env(t *testing.T, o envOpts) *s3Env {
	t.Helper()
	srv := testkit.StartS3(t)
	bucket := srv.Bucket(t)
	o.store = "s3://" + bucket + "/jobs"
	o.storeConfig = s3store.Config{Endpoint: srv.Endpoint, Credentials: srv.Credentials()}
	return &s3Env{env: newEnv(t, o), srv: srv, client: srv.Client(), bucket: bucket}
}

func (e *s3Env) keys(t *testing.T) []string { return e.srv.Keys(t, e.bucket) }

func (e *s3Env) uploads(t *testing.T) int { return len(e.srv.Uploads(t, e.bucket)) }

// TestS3StoreConvertDownload: through a server on an S3 store, an upload is converted and
// downloaded, whole and by ranges, byte for byte as from the default local store; the job's
// objects are its output and manifest under PREFIX/ID/, and no scratch file is left.
func TestS3StoreConvertDownload(t *testing.T) {
	local := newEnv(t, envOpts{})
	remote := newS3Env(t, envOpts{})
	data := fixture(t, "mymodel.pt")
	want := local.wait("", local.submit("", "pytorch_model.bin", data, nil).ID)
	_, wantOut := local.do("GET", "/v1/jobs/"+want.ID+"/output", "", nil, nil)

	j := remote.wait("", remote.submit("", "pytorch_model.bin", data, nil).ID)
	if j.State != "succeeded" || j.Output == nil || j.Output.SHA256 != want.Output.SHA256 {
		t.Fatalf("job on S3 = %+v; want succeeded with the local store's output %s", j, want.Output.SHA256)
	}
	resp, out := remote.do("GET", "/v1/jobs/"+j.ID+"/output", "", nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(out, wantOut) {
		t.Errorf("GET output = %d, %d bytes; want 200 and the local store's %d bytes", resp.StatusCode, len(out), len(wantOut))
	}
	for _, tc := range []struct {
		spec string
		want []byte
	}{
		{"bytes=10-99", wantOut[10:100]},
		{"bytes=-16", wantOut[len(wantOut)-16:]},
	} {
		resp, part := remote.do("GET", "/v1/jobs/"+j.ID+"/output", "", nil, map[string]string{"Range": tc.spec})
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, tc.want) {
			t.Errorf("Range %s = %d, %x; want 206 %x", tc.spec, resp.StatusCode, part, tc.want)
		}
	}
	// Two ranges are served as multipart/byteranges, each read from its own offset.
	resp, multi := remote.do("GET", "/v1/jobs/"+j.ID+"/output", "", nil, map[string]string{"Range": "bytes=0-7,100-115"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Contains(multi, wantOut[:8]) || !bytes.Contains(multi, wantOut[100:116]) {
		t.Errorf("two ranges = %d; want 206 holding both", resp.StatusCode)
	}
	_, wantManifest := local.do("GET", "/v1/jobs/"+want.ID+"/manifest", "", nil, nil)
	if _, m := remote.do("GET", "/v1/jobs/"+j.ID+"/manifest", "", nil, nil); !bytes.Equal(m, wantManifest) {
		t.Errorf("manifest on S3:\n%s\nwant the local store's:\n%s", m, wantManifest)
	}
	keys := remote.keys(t)
	if wantKeys := []string{"jobs/" + j.ID + "/manifest.json", "jobs/" + j.ID + "/output.safetensors"}; !slices.Equal(keys, wantKeys) {
		t.Errorf("objects = %q; want %q (the input removed once converted)", keys, wantKeys)
	}
	if scratch, _ := os.ReadDir(filepath.Join(remote.dir, "jobs")); len(scratch) != 0 {
		t.Errorf("scratch holds %d entries after the job; want none", len(scratch))
	}

	resp, _ = remote.do("DELETE", "/v1/jobs/"+j.ID, "", nil, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE = %d", resp.StatusCode)
	}
	if keys := remote.keys(t); len(keys) != 0 {
		t.Errorf("objects after DELETE = %q; want none", keys)
	}
}

// TestS3StoreRefusesReplacedOutput: an output object replaced by another client with a byte
// flipped, without the digest the job recorded, or with it (and the store's checksum of the
// bytes it got), is never served: 500 output-lost, and the job is failed.
func TestS3StoreRefusesReplacedOutput(t *testing.T) {
	e := newS3Env(t, envOpts{})
	data := fixture(t, "mymodel.pt")
	for _, keepMetadata := range []bool{false, true} {
		j := e.wait("", e.submit("", "model.pt", data, nil).ID)
		_, out := e.do("GET", "/v1/jobs/"+j.ID+"/output", "", nil, nil)
		out[len(out)-1] ^= 1
		in := &s3.PutObjectInput{Bucket: aws.String(e.bucket), Key: aws.String("jobs/" + j.ID + "/output.safetensors"), Body: bytes.NewReader(out)}
		if keepMetadata {
			sum := sha256.Sum256(out)
			in.Metadata = map[string]string{"sha256": j.Output.SHA256}
			in.ChecksumSHA256 = aws.String(base64.StdEncoding.EncodeToString(sum[:]))
		}
		if _, err := e.client.PutObject(t.Context(), in); err != nil {
			t.Fatal(err)
		}
		resp, body := e.do("GET", "/v1/jobs/"+j.ID+"/output", "", nil, nil)
		if resp.StatusCode != http.StatusInternalServerError || !bytes.Contains(body, []byte("output-lost")) {
			t.Errorf("GET of a replaced output (metadata kept: %v) = %d %s; want 500 output-lost", keepMetadata, resp.StatusCode, body)
		}
		if j := e.wait("", j.ID); j.State != "failed" {
			t.Errorf("job after its output was lost = %s; want failed", j.State)
		}
	}
}

// TestS3StorePresign: with presigning, the output download is a 307 to a short-lived URL
// that serves the verified bytes without the server.
func TestS3StorePresign(t *testing.T) {
	e := newS3Env(t, envOpts{presign: time.Minute})
	data := fixture(t, "mymodel.pt")
	j := e.wait("", e.submit("", "model.pt", data, nil).ID)
	c := *e.env.client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	e.env.client = &c
	resp, _ := e.do("GET", "/v1/jobs/"+j.ID+"/output", "", nil, nil)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || loc == "" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("GET output = %d, Location %q, Cache-Control %q; want 307 to a presigned URL, no-store", resp.StatusCode, loc, resp.Header.Get("Cache-Control"))
	}
	got, err := http.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Body.Close()
	out, err := io.ReadAll(got.Body)
	if got.StatusCode != http.StatusOK || err != nil || sha256Hex(out) != j.Output.SHA256 {
		t.Errorf("GET %s = %d, %d bytes, %v; want 200 and the output of sha-256 %s", loc, got.StatusCode, len(out), err, j.Output.SHA256)
	}
}

// TestS3StoreUploadTooLarge: an upload cut off at the size limit while it streams to S3 is a
// 413, and leaves no object and no multipart upload.
func TestS3StoreUploadTooLarge(t *testing.T) {
	e := newS3Env(t, envOpts{maxUpload: 1000})
	big := struct{ *bytes.Reader }{bytes.NewReader(bytes.Repeat([]byte{'x'}, 5000))} // no length: chunked
	resp, b := e.do("POST", "/v1/jobs", "", big, map[string]string{"Content-Type": "application/octet-stream"})
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("streamed oversize = %d, want 413\n%s", resp.StatusCode, b)
	}
	if keys, n := e.keys(t), e.uploads(t); len(keys) != 0 || n != 0 {
		t.Errorf("after a 413: objects %q and %d multipart uploads; want none", keys, n)
	}
}

// TestS3StoreCanceledUpload: a client that gives up mid-upload leaves no object and no
// multipart upload once the server is done with the request.
func TestS3StoreCanceledUpload(t *testing.T) {
	e := newS3Env(t, envOpts{})
	h := e.holdUpload("")
	if n := e.uploads(t); n != 1 {
		t.Errorf("%d multipart uploads while the body arrives; want 1", n)
	}
	h.body.CloseWithError(errors.New("the client gave up"))
	<-h.status
	for range 3000 { // until the server has finished with the request, however long it takes
		if e.gauge("converter_uploads_in_progress") == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if keys, n := e.keys(t), e.uploads(t); len(keys) != 0 || n != 0 {
		t.Errorf("after a canceled upload: objects %q and %d multipart uploads; want none", keys, n)
	}
}

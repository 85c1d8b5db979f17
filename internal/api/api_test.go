package api_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/ptsafe/converter/internal/api"
)

// The router and the contract must list the same operations, in both directions.
func TestRoutesMatchSpec(t *testing.T) {
	e := newEnv(t, envOpts{})
	var got []string
	err := chi.Walk(e.handler.(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		got = append(got, method+" "+route)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for path, item := range loadSpec(t).Paths.Map() {
		for method := range item.Operations() {
			want = append(want, method+" "+path)
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("router routes = %v\nspec operations = %v", got, want)
	}
}

func reprDigest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha-256=:" + base64.StdEncoding.EncodeToString(s[:]) + ":"
}

// A raw upload is converted; the download matches the job's digests, supports Range and
// conditional requests, and carries the Hugging Face output name.
func TestRawUploadConvertDownload(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := fixture(t, "mymodel.pt")
	j := e.submit("", "pytorch_model-00001-of-00002.bin", data, map[string]string{"Repr-Digest": reprDigest(data)})
	if j.State != "queued" && j.State != "running" {
		t.Errorf("new job state = %q, want queued or running", j.State)
	}
	if got, want := j.Input.SHA256, sha256Hex(data); got != want {
		t.Errorf("input.sha256 = %s, want %s", got, want)
	}
	if j.Input.Size != int64(len(data)) || j.Input.Filename != "pytorch_model-00001-of-00002.bin" {
		t.Errorf("input = %+v", j.Input)
	}
	j = e.wait("", j.ID)
	if j.State != "succeeded" || j.Output == nil {
		t.Fatalf("job = %+v, want succeeded with output", j)
	}

	resp, out := e.do("GET", "/v1/jobs/"+j.ID+"/output", "", nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET output = %d", resp.StatusCode)
	}
	if got := sha256Hex(out); got != j.Output.SHA256 || int64(len(out)) != j.Output.Size {
		t.Errorf("downloaded sha256 %s size %d, job says %s size %d", got, len(out), j.Output.SHA256, j.Output.Size)
	}
	etag := `"sha256:` + j.Output.SHA256 + `"`
	checks := map[string]string{
		"ETag":                etag,
		"Repr-Digest":         reprDigest(out),
		"Content-Disposition": `attachment; filename=model-00001-of-00002.safetensors`,
	}
	for h, want := range checks {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	if !bytes.HasPrefix(out[8:], []byte("{")) {
		t.Errorf("output does not look like safetensors: %q", out[:16])
	}

	resp, part := e.do("GET", "/v1/jobs/"+j.ID+"/output", "", nil, map[string]string{"Range": "bytes=0-7"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, out[:8]) {
		t.Errorf("Range bytes=0-7: status %d body %x, want 206 %x", resp.StatusCode, part, out[:8])
	}
	if got := resp.Header.Get("Repr-Digest"); got != reprDigest(out) {
		t.Errorf("206 Repr-Digest = %q, want the whole file's", got)
	}
	resp, _ = e.do("GET", "/v1/jobs/"+j.ID+"/output", "", nil, map[string]string{"If-None-Match": etag})
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: status %d, want 304", resp.StatusCode)
	}

	resp, mb := e.do("GET", "/v1/jobs/"+j.ID+"/manifest", "", nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest = %d", resp.StatusCode)
	}
	var m struct {
		Source struct {
			SHA256 string `json:"sha256"`
		} `json:"source"`
		Output struct {
			SHA256 string `json:"sha256"`
		} `json:"output"`
		Tensors []struct {
			SHA256 string `json:"sha256"`
		} `json:"tensors"`
	}
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatal(err)
	}
	if m.Output.SHA256 != j.Output.SHA256 || m.Source.SHA256 != sha256Hex(data) || len(m.Tensors) == 0 || m.Tensors[0].SHA256 == "" {
		t.Errorf("manifest = %s", mb)
	}
	if strings.Contains(string(mb), e.dir) {
		t.Errorf("manifest reveals the server's data directory: %s", mb)
	}
}

// A download asks for at most four ranges once overlapping and adjacent ones are merged; more
// get the whole file, so that many small ranges cannot make the answer larger than the file.
func TestOutputRanges(t *testing.T) {
	e := newEnv(t, envOpts{})
	j := e.wait("", e.submit("", "m.pt", fixture(t, "mymodel.pt"), nil).ID)
	if j.State != "succeeded" {
		t.Fatalf("job = %+v, want succeeded", j)
	}
	path := "/v1/jobs/" + j.ID + "/output"
	_, out := e.do("GET", path, "", nil, nil)
	ranges := func(n, step int) string {
		var s []string
		for i := range n {
			s = append(s, fmt.Sprintf("%d-%d", i*step, i*step))
		}
		return "bytes=" + strings.Join(s, ",")
	}
	if len(out) < 192 {
		t.Fatalf("output is %d bytes; the test needs 192", len(out))
	}

	resp, b := e.do("GET", path, "", nil, map[string]string{"Range": ranges(96, 2)})
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, out) {
		t.Errorf("96 disjoint one-byte ranges: %d with %d bytes, want 200 with the whole file (%d bytes)", resp.StatusCode, len(b), len(out))
	}
	resp, b = e.do("GET", path, "", nil, map[string]string{"Range": ranges(96, 1)})
	if want := fmt.Sprintf("bytes 0-95/%d", len(out)); resp.StatusCode != http.StatusPartialContent ||
		resp.Header.Get("Content-Range") != want || !bytes.Equal(b, out[:96]) {
		t.Errorf("96 adjacent one-byte ranges: %d, Content-Range %q, %d bytes; want 206, %q, the first 96 bytes",
			resp.StatusCode, resp.Header.Get("Content-Range"), len(b), want)
	}
	resp, b = e.do("GET", path, "", nil, map[string]string{"Range": "bytes=150-151,0-1,100-101,50-51"})
	if mt := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusPartialContent || !strings.HasPrefix(mt, "multipart/byteranges") {
		t.Errorf("four ranges: %d %s, want 206 multipart/byteranges", resp.StatusCode, mt)
	}
	if len(b) > 4*8+4*200 {
		t.Errorf("four two-byte ranges took %d bytes", len(b))
	}
	resp, _ = e.do("GET", path, "", nil, map[string]string{"Range": fmt.Sprintf("bytes=%d-", len(out))})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("range past the end: %d, want 416", resp.StatusCode)
	}
}

// curl -F file=@pytorch_model.bin sends multipart/form-data; the part's filename names the job.
func TestMultipartUpload(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := fixture(t, "module_state_dict.pt")
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	if err := mw.WriteField("note", "ignored"); err != nil {
		t.Fatal(err)
	}
	fw, err := mw.CreateFormFile("file", "pytorch_model.bin")
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(data)
	mw.Close()
	resp, b := e.do("POST", "/v1/jobs", "", &body, map[string]string{"Content-Type": mw.FormDataContentType()})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("multipart POST = %d\n%s", resp.StatusCode, b)
	}
	j := decode[jobResp](t, b)
	if j.Input.Filename != "pytorch_model.bin" || j.Input.SHA256 != sha256Hex(data) || j.Input.Size != int64(len(data)) {
		t.Errorf("input = %+v, want pytorch_model.bin with the file part's digest", j.Input)
	}
	j = e.wait("", j.ID)
	if j.State != "succeeded" || j.Output.Filename != "model.safetensors" {
		t.Fatalf("job = %+v", j)
	}
	_, out := e.do("GET", "/v1/jobs/"+j.ID+"/output", "", nil, nil)
	if sha256Hex(out) != j.Output.SHA256 {
		t.Errorf("downloaded output digest differs from job's")
	}
}

// A pickle that calls os.system fails at once as unsafe and is never retried.
func TestMaliciousUploadFailsUnsafe(t *testing.T) {
	e := newEnv(t, envOpts{})
	evil := []byte("cos\nsystem\n(S'touch /tmp/pwned-by-converter-test'\ntR.")
	j := e.wait("", e.submit("", "evil.pt", evil, nil).ID)
	if j.State != "failed" || j.Error == nil || j.Error.Type != "unsafe" {
		t.Fatalf("job = %+v, want failed unsafe", j)
	}
	if j.Attempts != 1 {
		t.Errorf("attempts = %d, want 1 (unsafe is not retried)", j.Attempts)
	}
	if !strings.Contains(j.Error.Detail, "os.system") {
		t.Errorf("detail = %q, want it to name os.system", j.Error.Detail)
	}
	resp, b := e.do("GET", "/v1/jobs/"+j.ID+"/output", "", nil, nil)
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("output of failed job = %d, want 409\n%s", resp.StatusCode, b)
	}
}

func TestIdempotentRetry(t *testing.T) {
	e := newEnv(t, envOpts{converter: blockingConverter{started: make(chan string, 16)}})
	data := []byte("not really a checkpoint, never converted here")
	key := map[string]string{"Idempotency-Key": "4f8e2a1c-retry"}
	first := e.submit("", "a.pt", data, key)
	resp, b := e.do("POST", "/v1/jobs?filename=a.pt", "", bytes.NewReader(data),
		map[string]string{"Content-Type": "application/octet-stream", "Idempotency-Key": "4f8e2a1c-retry"})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("retry = %d\n%s", resp.StatusCode, b)
	}
	if again := decode[jobResp](t, b); again.ID != first.ID {
		t.Errorf("retry returned job %s, want %s", again.ID, first.ID)
	}
	if resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("retry lacks Idempotent-Replayed: true")
	}
	resp, b = e.do("POST", "/v1/jobs?filename=a.pt", "", strings.NewReader("different body"),
		map[string]string{"Content-Type": "application/octet-stream", "Idempotency-Key": "4f8e2a1c-retry"})
	if resp.StatusCode != http.StatusUnprocessableEntity {
		t.Errorf("same key, other body = %d, want 422\n%s", resp.StatusCode, b)
	}
	_, b = e.do("GET", "/v1/jobs", "", nil, nil)
	if n := len(decode[struct{ Jobs []jobResp }](t, b).Jobs); n != 1 {
		t.Errorf("jobs after retries = %d, want 1", n)
	}
}

func TestUploadTooLarge(t *testing.T) {
	e := newEnv(t, envOpts{maxUpload: 1000})
	big := bytes.Repeat([]byte{'x'}, 5000)
	// Declared Content-Length over the limit: refused before reading.
	resp, b := e.do("POST", "/v1/jobs", "", bytes.NewReader(big), map[string]string{"Content-Type": "application/octet-stream"})
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("declared oversize = %d, want 413\n%s", resp.StatusCode, b)
	}
	if p := decode[problemResp](t, b); !strings.HasSuffix(p.Type, "/upload-too-large") {
		t.Errorf("problem type = %q", p.Type)
	}
	// Unknown length (chunked): cut off while streaming.
	resp, b = e.do("POST", "/v1/jobs", "", struct{ *bytes.Reader }{bytes.NewReader(big)}, map[string]string{"Content-Type": "application/octet-stream"})
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("streamed oversize = %d, want 413\n%s", resp.StatusCode, b)
	}
	e.nothingKept("413")
}

// gauge reads the value of an unlabelled gauge from the server's registry (0 when absent).
func (e *env) gauge(name string) float64 {
	e.t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return 0
}

// nothingKept checks that refused uploads left no job and no file behind.
func (e *env) nothingKept(after string) {
	e.t.Helper()
	_, b := e.do("GET", "/v1/jobs", "", nil, nil)
	if n := len(decode[struct{ Jobs []jobResp }](e.t, b).Jobs); n != 0 {
		e.t.Errorf("jobs after %s = %d, want 0", after, n)
	}
	for _, sub := range []string{"tmp", "jobs"} {
		entries, err := os.ReadDir(filepath.Join(e.dir, sub))
		if err != nil || len(entries) != 0 {
			e.t.Errorf("%s after %s holds %d entries (err %v), want none", sub, after, len(entries), err)
		}
	}
}

// TestInsufficientStorage asks for more free space than any disk has: every upload, with a
// declared length or streamed, is refused with 507 and nothing is kept.
func TestInsufficientStorage(t *testing.T) {
	e := newEnv(t, envOpts{minFree: 1 << 62})
	data := fixture(t, "mymodel.pt")
	for _, body := range []io.Reader{bytes.NewReader(data), struct{ *bytes.Reader }{bytes.NewReader(data)}} {
		resp, b := e.do("POST", "/v1/jobs?filename=m.pt", "", body, map[string]string{"Content-Type": "application/octet-stream"})
		if resp.StatusCode != http.StatusInsufficientStorage {
			t.Errorf("upload with no room = %d, want 507\n%s", resp.StatusCode, b)
		}
		if p := decode[problemResp](t, b); !strings.HasSuffix(p.Type, "/insufficient-storage") {
			t.Errorf("problem type = %q", p.Type)
		}
	}
	e.nothingKept("507")
}

// TestTooManyUploads holds both upload slots of an open server (its one tenant may take them
// all) with bodies that have not finished arriving: a third upload gets 429 with Retry-After,
// and the first two still complete.
func TestTooManyUploads(t *testing.T) {
	e := newEnv(t, envOpts{maxUploads: 2, converter: blockingConverter{started: make(chan string, 16)}})
	first, second := e.holdUpload(""), e.holdUpload("")
	if got := e.gauge("converter_uploads_in_progress"); got != 2 {
		t.Errorf("uploads in progress = %v, want 2", got)
	}
	resp, b := e.do("POST", "/v1/jobs?filename=n.pt", "", strings.NewReader("third"), map[string]string{"Content-Type": "application/octet-stream"})
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("third upload = %d (Retry-After %q), want 429 with Retry-After\n%s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	if p := decode[problemResp](t, b); !strings.HasSuffix(p.Type, "/too-many-uploads") {
		t.Errorf("problem type = %q", p.Type)
	}
	for _, h := range []*heldUpload{first, second} {
		if code := h.finish(); code != http.StatusAccepted {
			t.Errorf("held upload = %d, want 202", code)
		}
	}
}

// With tokens, one tenant may hold at most half the upload slots (rounded up): a greedy tenant
// leaves room to the others, and the total still bounds them all.
func TestUploadSlotsPerTenant(t *testing.T) {
	e := newEnv(t, envOpts{maxUploads: 2, tokens: "alice alice-token\nbob bob-token\ncarol carol-token\n",
		converter: blockingConverter{started: make(chan string, 16)}})
	upload := func(token string) (int, string) {
		resp, b := e.do("POST", "/v1/jobs?filename=m.pt", token, strings.NewReader(token), map[string]string{"Content-Type": "application/octet-stream"})
		if resp.StatusCode == http.StatusTooManyRequests {
			return resp.StatusCode, decode[problemResp](t, b).Detail
		}
		return resp.StatusCode, ""
	}
	alice := e.holdUpload("alice-token")
	if code, detail := upload("alice-token"); code != http.StatusTooManyRequests || !strings.Contains(detail, "your uploads") {
		t.Errorf("alice's second upload = %d %q, want 429 for her share", code, detail)
	}
	bob := e.holdUpload("bob-token") // alice has not taken bob's slot
	if code, detail := upload("carol-token"); code != http.StatusTooManyRequests || !strings.Contains(detail, "2 uploads") {
		t.Errorf("carol's upload with every slot taken = %d %q, want 429 for the total", code, detail)
	}
	if code := alice.finish(); code != http.StatusAccepted {
		t.Errorf("alice's held upload = %d, want 202", code)
	}
	if code, _ := upload("carol-token"); code != http.StatusAccepted {
		t.Errorf("carol's upload once alice's ended = %d, want 202", code)
	}
	if code := bob.finish(); code != http.StatusAccepted {
		t.Errorf("bob's held upload = %d, want 202", code)
	}
}

func TestBadUploads(t *testing.T) {
	e := newEnv(t, envOpts{})
	cases := []struct {
		name   string
		body   string
		header map[string]string
		status int
		kind   string
	}{
		{"digest mismatch", "some bytes", map[string]string{"Repr-Digest": reprDigest([]byte("other"))}, 400, "digest-mismatch"},
		{"digest malformed", "some bytes", map[string]string{"Repr-Digest": "sha-256=abc"}, 400, "bad-request"},
		{"empty body", "", nil, 400, "bad-request"},
		{"json body", "{}", map[string]string{"Content-Type": "application/json"}, 415, "unsupported-media-type"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := map[string]string{"Content-Type": "application/octet-stream"}
			for k, v := range c.header {
				h[k] = v
			}
			resp, b := e.doInvalid("POST", "/v1/jobs", "", strings.NewReader(c.body), h)
			if resp.StatusCode != c.status {
				t.Fatalf("status = %d, want %d\n%s", resp.StatusCode, c.status, b)
			}
			if p := decode[problemResp](t, b); p.Type != "/problems/"+c.kind {
				t.Errorf("problem type = %q, want .../%s", p.Type, c.kind)
			}
		})
	}
}

// File names reach the job record, Content-Disposition and pages: they are kept in NFC, and
// names that are not UTF-8 or hold control, bidi-control or line-separator characters are
// refused, given as ?filename= or as the multipart part's filename.
func TestFilenames(t *testing.T) {
	e := newEnv(t, envOpts{converter: blockingConverter{started: make(chan string, 16)}})
	multipartBody := func(name string) (io.Reader, string) {
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		fw, err := mw.CreateFormFile("file", name)
		if err != nil {
			t.Fatal(err)
		}
		fw.Write([]byte("checkpoint"))
		mw.Close()
		return &body, mw.FormDataContentType()
	}
	for _, c := range []struct{ name, give, want string }{
		{"NFD becomes NFC", "mode\u0301l.pt", "mod\u00e9l.pt"},
		{"Persian with a zero-width non-joiner", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.pt", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.pt"},
		{"emoji", "\U0001F525model.pt", "\U0001F525model.pt"},
		{"invalid UTF-8", "\xffmodel.pt", ""},
		{"right-to-left override", "evil\u202Egnp.pt", ""},
		{"left-to-right isolate", "a\u2066b.pt", ""},
		{"right-to-left mark", "\u200Fx.pt", ""},
		{"Arabic letter mark", "\u061Cx.pt", ""},
		{"C1 control (NEL)", "x\u0085.pt", ""},
		{"line separator", "x\u2028.pt", ""},
		{"C0 control", "x\ty.pt", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			body, ct := multipartBody(c.give)
			for _, try := range []struct {
				how    string
				path   string
				body   io.Reader
				header map[string]string
			}{
				{"query", "/v1/jobs?filename=" + url.QueryEscape(c.give), strings.NewReader("checkpoint"), map[string]string{"Content-Type": "application/octet-stream"}},
				{"multipart", "/v1/jobs", body, map[string]string{"Content-Type": ct}},
			} {
				resp, b := e.do("POST", try.path, "", try.body, try.header)
				if c.want == "" {
					if resp.StatusCode != http.StatusBadRequest {
						t.Errorf("%s: %q accepted (%d), want 400\n%s", try.how, c.give, resp.StatusCode, b)
					}
					continue
				}
				if resp.StatusCode != http.StatusAccepted {
					t.Errorf("%s: %q refused (%d), want 202\n%s", try.how, c.give, resp.StatusCode, b)
					continue
				}
				if got := decode[jobResp](t, b).Input.Filename; got != c.want {
					t.Errorf("%s: filename %q recorded as %q, want %q", try.how, c.give, got, c.want)
				}
			}
		})
	}
}

func TestCancelAndDelete(t *testing.T) {
	conv := blockingConverter{started: make(chan string, 16)}
	e := newEnv(t, envOpts{converter: conv})
	running := e.submit("", "a.pt", []byte("first"), nil)
	<-conv.started
	queued := e.submit("", "b.pt", []byte("second"), nil)

	for _, id := range []string{running.ID, queued.ID} {
		resp, b := e.do("POST", "/v1/jobs/"+id+"/cancel", "", nil, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("cancel = %d\n%s", resp.StatusCode, b)
		}
		j := e.wait("", id)
		if j.State != "canceled" || j.Error == nil || j.Error.Type != "canceled" {
			t.Errorf("after cancel: %+v, want canceled", j)
		}
		// Canceling again is harmless.
		if resp, _ := e.do("POST", "/v1/jobs/"+id+"/cancel", "", nil, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("second cancel = %d, want 200", resp.StatusCode)
		}
	}
	resp, _ := e.do("DELETE", "/v1/jobs/"+running.ID, "", nil, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE = %d, want 204", resp.StatusCode)
	}
	if resp, _ := e.do("GET", "/v1/jobs/"+running.ID, "", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET deleted job = %d, want 404", resp.StatusCode)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "jobs", running.ID)); !os.IsNotExist(err) {
		t.Errorf("deleted job's files remain: %v", err)
	}
}

const tokensFile = `# tenant token
alice alice-secret-token
bob sha256:` // completed in TestAuth with the digest of bob's token

func TestAuth(t *testing.T) {
	bobSum := sha256.Sum256([]byte("bob-secret-token"))
	e := newEnv(t, envOpts{
		converter: blockingConverter{started: make(chan string, 16)},
		tokens:    tokensFile + fmt.Sprintf("%x\n", bobSum),
	})
	for _, c := range []struct{ name, auth string }{
		{"no header", ""},
		{"wrong token", "Bearer nope"},
		{"basic scheme", "Basic YWxpY2U6YWxpY2Utc2VjcmV0LXRva2Vu"},
		{"hash instead of token", fmt.Sprintf("Bearer sha256:%x", bobSum)},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, b := e.do("GET", "/v1/jobs", "", nil, map[string]string{"Authorization": c.auth})
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("status = %d, want 401\n%s", resp.StatusCode, b)
			}
			if resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 lacks WWW-Authenticate")
			}
		})
	}
	aliceJob := e.submit("alice-secret-token", "a.pt", []byte("alice's"), nil)
	bobJob := e.submit("bob-secret-token", "b.pt", []byte("bob's"), nil)

	for _, path := range []string{"", "/output", "/manifest"} {
		resp, b := e.do("GET", "/v1/jobs/"+aliceJob.ID+path, "bob-secret-token", nil, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("bob GET alice's job%s = %d, want 404\n%s", path, resp.StatusCode, b)
		}
	}
	if resp, _ := e.do("POST", "/v1/jobs/"+aliceJob.ID+"/cancel", "bob-secret-token", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("bob cancel alice's job = %d, want 404", resp.StatusCode)
	}
	if resp, _ := e.do("DELETE", "/v1/jobs/"+aliceJob.ID, "bob-secret-token", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("bob delete alice's job = %d, want 404", resp.StatusCode)
	}
	missing, missingBody := e.do("GET", "/v1/jobs/01900000-0000-7000-8000-000000000000", "bob-secret-token", nil, nil)
	_, crossBody := e.do("GET", "/v1/jobs/"+aliceJob.ID, "bob-secret-token", nil, nil)
	pm, pc := decode[problemResp](t, missingBody), decode[problemResp](t, crossBody)
	if missing.StatusCode != 404 || pm.Type != pc.Type || pm.Detail != pc.Detail {
		t.Errorf("missing job answers %+v, another tenant's answers %+v; want the same", pm, pc)
	}
	_, b := e.do("GET", "/v1/jobs", "bob-secret-token", nil, nil)
	list := decode[struct{ Jobs []jobResp }](t, b).Jobs
	if len(list) != 1 || list[0].ID != bobJob.ID {
		t.Errorf("bob's list = %+v, want only his job", list)
	}
	// Open endpoints need no token.
	for _, p := range []string{"/healthz", "/readyz", "/openapi.yaml"} {
		if resp, _ := e.do("GET", p, "", nil, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without token = %d, want 200", p, resp.StatusCode)
		}
	}
}

func TestListPagination(t *testing.T) {
	e := newEnv(t, envOpts{converter: blockingConverter{started: make(chan string, 16)}})
	var ids []string
	for i := range 5 {
		ids = append(ids, e.submit("", "m.pt", []byte{byte(i), 1, 2}, nil).ID)
	}
	if _, b := e.do("POST", "/v1/jobs/"+ids[0]+"/cancel", "", nil, nil); b == nil {
		t.Fatal("cancel gave no body")
	}
	var got []string
	token := ""
	for range 10 {
		_, b := e.do("GET", "/v1/jobs?page_size=2&page_token="+token, "", nil, nil)
		page := decode[struct {
			Jobs          []jobResp
			NextPageToken string `json:"next_page_token"`
		}](t, b)
		if len(page.Jobs) > 2 {
			t.Fatalf("page of %d jobs, want at most 2", len(page.Jobs))
		}
		for _, j := range page.Jobs {
			got = append(got, j.ID)
		}
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	want := slices.Clone(ids)
	slices.Reverse(want)
	if !slices.Equal(got, want) {
		t.Errorf("paged ids = %v, want newest first %v", got, want)
	}
	_, b := e.do("GET", "/v1/jobs?state=canceled", "", nil, nil)
	if list := decode[struct{ Jobs []jobResp }](t, b).Jobs; len(list) != 1 || list[0].ID != ids[0] {
		t.Errorf("state=canceled lists %+v, want only %s", list, ids[0])
	}
	for _, q := range []string{"page_size=0", "page_size=abc", "state=done", "page_token=!!"} {
		if resp, _ := e.doInvalid("GET", "/v1/jobs?"+q, "", nil, nil); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET /v1/jobs?%s = %d, want 400", q, resp.StatusCode)
		}
	}
}

func TestMetricsUseRoutePatterns(t *testing.T) {
	e := newEnv(t, envOpts{converter: blockingConverter{started: make(chan string, 16)}})
	j := e.submit("", "secret-name.pt", []byte("x"), nil)
	e.do("GET", "/v1/jobs/"+j.ID, "", nil, nil)
	_, b := e.do("GET", "/metrics", "", nil, nil)
	text := string(b)
	for _, want := range []string{
		`converter_http_requests_total{code="200",method="GET",route="/v1/jobs/{id}"} 1`,
		`converter_http_requests_total{code="202",method="POST",route="/v1/jobs"} 1`,
		`converter_upload_bytes_total 1`,
		`converter_jobs_queued `,
		`converter_jobs_running `,
		`converter_job_queue_wait_seconds_bucket`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	for _, leak := range []string{j.ID, "secret-name"} {
		if strings.Contains(text, leak) {
			t.Errorf("metrics contain %q", leak)
		}
	}
}

// /metrics describes every tenant's work: with tokens it needs the metrics token, which no
// tenant token replaces; an open server serves it on loopback unless a metrics token is set.
func TestMetricsAccess(t *testing.T) {
	hashed := fmt.Sprintf("sha256:%x", sha256.Sum256([]byte("scrape-secret")))
	for _, c := range []struct {
		name, tokens, metricsToken string
		want                       map[string]int // bearer token -> status
	}{
		{"open", "", "", map[string]int{"": 200}},
		{"open with metrics token", "", "scrape-secret\n", map[string]int{"": 401, "wrong": 401, "scrape-secret": 200}},
		{"tokens", "alice alice-token\n", "", map[string]int{"": 404, "alice-token": 404}},
		{"tokens and metrics token", "alice alice-token\n", "scrape-secret", map[string]int{"": 401, "alice-token": 401, "scrape-secret": 200}},
		{"hashed metrics token", "alice alice-token\n", hashed, map[string]int{hashed: 401, "scrape-secret": 200}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, envOpts{tokens: c.tokens, metricsToken: c.metricsToken})
			for token, want := range c.want {
				resp, b := e.do("GET", "/metrics", token, nil, nil)
				if resp.StatusCode != want {
					t.Errorf("GET /metrics with token %q = %d, want %d\n%.200s", token, resp.StatusCode, want, b)
				}
				if want == 200 && !strings.Contains(string(b), "converter_uploads_in_progress") {
					t.Errorf("GET /metrics with token %q: no metrics in the body", token)
				}
			}
		})
	}
}

func TestParseMetricsToken(t *testing.T) {
	for _, c := range []struct {
		name, file string
		ok         bool
	}{
		{"token and newline", "s3cret\n", true},
		{"hash", "sha256:" + strings.Repeat("ab", 32), true},
		{"two words", "s3 cret\n", false},
		{"empty", " \n", false},
		{"short hash", "sha256:abcd", false},
		{"too long", strings.Repeat("x", 5000), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := api.ParseMetricsToken(strings.NewReader(c.file)); (err == nil) != c.ok {
				t.Errorf("ParseMetricsToken err = %v, want ok=%v", err, c.ok)
			}
		})
	}
}

func TestParseTokens(t *testing.T) {
	for _, c := range []struct {
		name, file string
		ok         bool
	}{
		{"plain and hashed", "a tok\nb sha256:" + strings.Repeat("ab", 32) + "\n", true},
		{"comments and blanks", "# x\n\na tok\n", true},
		{"three fields", "a tok extra\n", false},
		{"short hash", "a sha256:abcd\n", false},
		{"empty", "# nothing\n", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := api.ParseTokens(strings.NewReader(c.file))
			if (err == nil) != c.ok {
				t.Errorf("ParseTokens err = %v, want ok=%v", err, c.ok)
			}
		})
	}
	tok, err := api.ParseTokens(strings.NewReader("a one\nb two\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := tok.Tenant("two"); !ok || got != "b" {
		t.Errorf("Tenant(two) = %q, %v; want b, true", got, ok)
	}
	if _, ok := tok.Tenant("three"); ok {
		t.Errorf("Tenant(three) matched")
	}
}

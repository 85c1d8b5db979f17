package api_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/prometheus/client_golang/prometheus"

	apispec "github.com/ptsafe/converter/api"
	"github.com/ptsafe/converter/internal/api"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/s3store"
)

// fixture returns the bytes of a real torch checkpoint from testdata/torch.
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "torch", name))
	if err != nil {
		t.Fatalf("read fixture: %v", err)
	}
	return b
}

type env struct {
	t       *testing.T
	url     string
	svc     *jobs.Service
	dir     string
	client  *http.Client
	handler http.Handler
	reg     *prometheus.Registry
}

type envOpts struct {
	converter jobs.Converter
	tokens    string // tokens file content; "" runs open
	// metricsToken is the metrics token file's content ("" for none).
	metricsToken string
	maxUpload    int64
	workers      int
	// maxUploads bounds concurrent uploads; minFree is the data directory's free-space reserve.
	maxUploads int
	minFree    int64
	// uploadIdle is the upload body's progress deadline (0 for the default).
	uploadIdle time.Duration
	// allowGlobals is the server's list of globals jobs may ask to admit.
	allowGlobals []string
	// store is the S3 location keeping the jobs' files ("" for the data directory), with its
	// client settings and presigned downloads' lifetime.
	store       string
	storeConfig s3store.Config
	presign     time.Duration
	// database is jobs.Config.Database ("" for SQLite in the data directory); batchRoots the
	// server's --batch-root directories and s3:// prefixes.
	database   string
	batchRoots []string
}

// newEnv starts the real job service on a SQLite file in a temporary directory and serves the
// real handler over loopback HTTP. Its client checks every request and response against
// api/openapi.yaml.
func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	if o.converter == nil {
		// In process, unlike serve: these tests are about HTTP, not confinement.
		o.converter = convert.InProcess{}
	}
	svc, err := jobs.Open(t.Context(), jobs.Config{
		Dir: dir, Workers: max(o.workers, 1), Converter: o.converter, Registerer: reg, MinFreeBytes: o.minFree,
		Store: o.store, StoreConfig: o.storeConfig, Presign: o.presign, Database: o.database,
	})
	if err != nil {
		t.Fatalf("jobs.Open: %v", err)
	}
	if err := svc.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var tokens *api.Tokens
	if o.tokens != "" {
		tokens, err = api.ParseTokens(strings.NewReader(o.tokens))
		if err != nil {
			t.Fatalf("ParseTokens: %v", err)
		}
	}
	var metricsToken *api.Tokens
	if o.metricsToken != "" {
		if metricsToken, err = api.ParseMetricsToken(strings.NewReader(o.metricsToken)); err != nil {
			t.Fatalf("ParseMetricsToken: %v", err)
		}
	}
	roots, err := api.ParseBatchRoots(o.batchRoots)
	if err != nil {
		t.Fatalf("ParseBatchRoots: %v", err)
	}
	h := api.NewServer(api.Deps{Jobs: svc, Tokens: tokens, MetricsToken: metricsToken, Registry: reg, MaxUploadBytes: o.maxUpload,
		MaxConcurrentUploads: o.maxUploads, UploadIdleTimeout: o.uploadIdle, Spec: apispec.OpenAPI,
		AllowGlobals: o.allowGlobals, BatchRoots: roots})
	ts := httptest.NewServer(h)
	t.Cleanup(func() {
		ts.Close()
		// Conversions some tests leave blocked are canceled at once rather than drained.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := svc.Stop(ctx); err != nil && !errors.Is(err, jobs.ErrDrainTimeout) {
			t.Errorf("Stop: %v", err)
		}
		svc.Close()
	})
	return &env{
		t: t, url: ts.URL, svc: svc, dir: dir, handler: h, reg: reg,
		client: &http.Client{Transport: &validating{t: t, router: specRouter(t, ts.URL), next: ts.Client().Transport}},
	}
}

func loadSpec(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(apispec.OpenAPI)
	if err != nil {
		t.Fatalf("load api/openapi.yaml: %v", err)
	}
	if err := doc.Validate(t.Context()); err != nil {
		t.Fatalf("api/openapi.yaml is invalid: %v", err)
	}
	return doc
}

// registerHTMLDecoder lets the contract check read text/html answers (the problem pages) and
// event streams as strings; kin-openapi decodes only JSON, YAML, text/plain and a few others by
// itself.
var registerHTMLDecoder = sync.OnceFunc(func() {
	asString := func(r io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(r)
		return string(b), err
	}
	openapi3filter.RegisterBodyDecoder("text/html", asString)
	openapi3filter.RegisterBodyDecoder("text/event-stream", asString)
})

func specRouter(t *testing.T, serverURL string) routers.Router {
	t.Helper()
	registerHTMLDecoder()
	doc := loadSpec(t)
	doc.Servers = openapi3.Servers{{URL: serverURL}}
	r, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatalf("openapi router: %v", err)
	}
	return r
}

// validating is a RoundTripper that fails the test when a request or its response does not
// match the OpenAPI document, including undocumented status codes and problem bodies.
type validating struct {
	t      *testing.T
	router routers.Router
	next   http.RoundTripper
}

func (v *validating) RoundTrip(req *http.Request) (*http.Response, error) {
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		v.t.Errorf("%s %s: not in api/openapi.yaml: %v", req.Method, req.URL.Path, err)
		return v.next.RoundTrip(req)
	}
	opts := &openapi3filter.Options{
		// Upload bodies are streams; the filter would read them whole.
		ExcludeRequestBody:    true,
		IncludeResponseStatus: true,
		MultiError:            true,
		AuthenticationFunc:    openapi3filter.NoopAuthenticationFunc,
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	if err := openapi3filter.ValidateRequest(req.Context(), in); err != nil && req.Context().Value(invalidRequest{}) == nil {
		v.t.Errorf("%s %s: request does not match api/openapi.yaml: %v", req.Method, req.URL.Path, err)
	}
	resp, err := v.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	v.checkResponse(in, resp, body)
	return resp, nil
}

// checkResponse fails the test unless resp, with body, is an answer the document allows to the
// request in describes.
func (v *validating) checkResponse(in *openapi3filter.RequestValidationInput, resp *http.Response, body []byte) {
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(body)), Options: in.Options,
	}
	if err := openapi3filter.ValidateResponse(in.Request.Context(), out); err != nil {
		v.t.Errorf("%s %s -> %d: response does not match api/openapi.yaml: %v\nbody: %.500s", in.Request.Method, in.Request.URL.Path, resp.StatusCode, err, body)
	}
}

// checkRaw checks an answer to a request sent outside e.client (over a raw connection)
// against the document.
func (e *env) checkRaw(req *http.Request, resp *http.Response, body []byte) {
	e.t.Helper()
	v := e.client.Transport.(*validating)
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		e.t.Fatalf("%s %s: not in api/openapi.yaml: %v", req.Method, req.URL.Path, err)
	}
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}
	v.checkResponse(&openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}, resp, body)
}

// invalidRequest marks a request context whose request is deliberately outside the contract;
// its response is still validated.
type invalidRequest struct{}

// jobResp is the Job schema as a test reads it.
type jobResp struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Input struct {
		Filename string `json:"filename"`
		Size     int64  `json:"size"`
		SHA256   string `json:"sha256"`
	} `json:"input"`
	Output *struct {
		Filename string `json:"filename"`
		Size     int64  `json:"size"`
		SHA256   string `json:"sha256"`
	} `json:"output"`
	Error *struct {
		Type   string `json:"type"`
		Detail string `json:"detail"`
	} `json:"error"`
	Attempts     int               `json:"attempts"`
	Mode         string            `json:"mode"`
	AllowGlobals []string          `json:"allow_globals"`
	Progress     *convert.Progress `json:"progress"`
	Links        struct {
		Self   string `json:"self"`
		Output string `json:"output"`
		Report string `json:"report"`
	} `json:"links"`
}

type problemResp struct {
	Type   string `json:"type"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

func (e *env) do(method, path, token string, body io.Reader, header map[string]string) (*http.Response, []byte) {
	e.t.Helper()
	return e.doCtx(e.t.Context(), method, path, token, body, header)
}

// doInvalid sends a request that breaks the contract on purpose.
func (e *env) doInvalid(method, path, token string, body io.Reader, header map[string]string) (*http.Response, []byte) {
	e.t.Helper()
	return e.doCtx(context.WithValue(e.t.Context(), invalidRequest{}, true), method, path, token, body, header)
}

func (e *env) doCtx(ctx context.Context, method, path, token string, body io.Reader, header map[string]string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, e.url+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v // the client sends req.Host, not a Host header field
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, b
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %T: %v\n%s", v, err, b)
	}
	return v
}

// submit uploads data raw and returns the accepted job.
func (e *env) submit(token, filename string, data []byte, header map[string]string) jobResp {
	e.t.Helper()
	h := map[string]string{"Content-Type": "application/octet-stream"}
	for k, v := range header {
		h[k] = v
	}
	resp, b := e.do("POST", "/v1/jobs?filename="+filename, token, bytes.NewReader(data), h)
	return accepted(e, resp, b, "/v1/jobs", func(j jobResp) string { return j.ID })
}

// accepted checks that a POST to collection was answered 202 with the Location of what it
// created, and returns that.
func accepted[T any](e *env, resp *http.Response, b []byte, collection string, id func(T) string) T {
	e.t.Helper()
	if resp.StatusCode != http.StatusAccepted {
		e.t.Fatalf("POST %s = %d, want 202\n%s", collection, resp.StatusCode, b)
	}
	v := decode[T](e.t, b)
	if got, want := resp.Header.Get("Location"), collection+"/"+id(v); got != want {
		e.t.Errorf("Location = %q, want %q", got, want)
	}
	return v
}

// wait polls a job until it is finished, a bounded number of times.
func (e *env) wait(token, id string) jobResp {
	e.t.Helper()
	return waitFinished(e, "/v1/jobs/"+id, token, 600, func(j jobResp) string { return j.State })
}

// waitFinished polls path, at most tries times, until the state of what it answers is
// terminal, and returns that.
func waitFinished[T any](e *env, path, token string, tries int, state func(T) string) T {
	e.t.Helper()
	for range tries {
		resp, b := e.do("GET", path, token, nil, nil)
		if resp.StatusCode != http.StatusOK {
			e.t.Fatalf("GET %s = %d\n%s", path, resp.StatusCode, b)
		}
		v := decode[T](e.t, b)
		switch state(v) {
		case "succeeded", "failed", "canceled":
			return v
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("%s did not finish", path)
	var zero T
	return zero
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// blockingConverter never finishes a conversion until its context is canceled; started
// receives each job's source path when its conversion begins.
type blockingConverter struct{ started chan string }

func (c blockingConverter) Convert(ctx context.Context, src, _ string, opts convert.Options) (*convert.Manifest, error) {
	return c.Scan(ctx, src, opts)
}

// Scan reports progress, as a sandbox child would, before it blocks (a batch asks for none).
func (c blockingConverter) Scan(ctx context.Context, src string, opts convert.Options) (*convert.Manifest, error) {
	if opts.Progress != nil {
		opts.Progress(convert.Progress{Phase: convert.PhaseWriting, BytesDone: 1, BytesTotal: 2, TensorsDone: 3, TensorsTotal: 4})
	}
	c.started <- src
	<-ctx.Done()
	return nil, errors.Join(errors.New("conversion stopped"), ctx.Err())
}

// heldUpload is a raw upload the server is receiving, so it holds an upload slot, whose body
// does not end until the test says so.
type heldUpload struct {
	body   *io.PipeWriter
	status chan int
}

// holdUpload starts an upload and returns once the server holds its slot. The request asks for
// 100-continue, so its client reads the body (here, the first write to the pipe) only after the
// server has taken a slot and started to read: no polling, no timing.
func (e *env) holdUpload(token string) *heldUpload {
	e.t.Helper()
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(e.t.Context(), "POST", e.url+"/v1/jobs?filename=held.pt", pr)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Expect", "100-continue")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	// Not e.client: its contract check reads a request body whole before sending it. The
	// transport waits for 100 Continue however long the server takes.
	tr := &http.Transport{ExpectContinueTimeout: time.Hour}
	e.t.Cleanup(tr.CloseIdleConnections)
	h := &heldUpload{body: pw, status: make(chan int, 1)}
	go func() {
		resp, err := (&http.Client{Transport: tr}).Do(req)
		pr.CloseWithError(errors.New("answered before the body was read"))
		if err != nil {
			h.status <- 0
			return
		}
		resp.Body.Close()
		h.status <- resp.StatusCode
	}()
	if _, err := pw.Write([]byte("held upload")); err != nil {
		e.t.Fatalf("the upload was answered %d before the server read its body", <-h.status)
	}
	return h
}

// finish ends the upload's body and returns the server's answer.
func (h *heldUpload) finish() int {
	h.body.Close()
	return <-h.status
}

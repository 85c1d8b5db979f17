package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"golang.org/x/text/unicode/norm"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/jobs"
)

// jobJSON is a job as the API shows it (schema Job in api/openapi.yaml).
type jobJSON struct {
	ID         string     `json:"id"`
	State      jobs.State `json:"state"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	Attempts   int        `json:"attempts"`
	Mode       jobs.Mode  `json:"mode"`
	Select     string     `json:"select,omitempty"`
	// AllowGlobals are the globals the job admits as inert records (allow_global).
	AllowGlobals []string          `json:"allow_globals,omitempty"`
	Input        inputJSON         `json:"input"`
	Output       *outputJSON       `json:"output,omitempty"`
	Error        *errorJSON        `json:"error,omitempty"`
	Progress     *convert.Progress `json:"progress,omitempty"`
	Links        linksJSON         `json:"links"`
}

// linksJSON are the URLs of a job's resources, each present once the resource exists, so that
// clients follow links rather than build paths.
type linksJSON struct {
	Self   string `json:"self"`
	Output string `json:"output,omitempty"`
	Report string `json:"report,omitempty"`
}

type inputJSON struct {
	Filename string `json:"filename"`
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`
}

type outputJSON struct {
	Filename string `json:"filename"`
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`
}

type errorJSON struct {
	Type   fault.Kind `json:"type"`
	Detail string     `json:"detail"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func toJSON(j jobs.Job) jobJSON {
	out := jobJSON{
		ID: j.ID, State: j.State, CreatedAt: j.CreatedAt, UpdatedAt: j.UpdatedAt,
		StartedAt: timePtr(j.StartedAt), FinishedAt: timePtr(j.FinishedAt), ExpiresAt: timePtr(j.ExpiresAt),
		Attempts: j.Attempts, Mode: j.Mode, Select: j.Select, AllowGlobals: j.AllowGlobals,
		Input:    inputJSON{Filename: j.Filename, Size: j.InputSize, SHA256: j.InputSHA256},
		Progress: j.Progress,
		Links:    linksJSON{Self: "/v1/jobs/" + j.ID},
	}
	if j.State == jobs.StateSucceeded && j.Mode == jobs.ModeConvert {
		out.Output = &outputJSON{Filename: convert.OutputName(j.Filename), Size: j.OutputSize, SHA256: j.OutputSHA256}
		out.Links.Output = out.Links.Self + "/output"
	}
	if j.HasReport {
		out.Links.Report = out.Links.Self + "/report"
	}
	if j.Error != nil {
		out.Error = &errorJSON{Type: j.Error.Type, Detail: j.Error.Detail}
	}
	return out
}

// jobError answers an error from the job service.
func jobError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, jobs.ErrNotFound):
		problem(w, r, http.StatusNotFound, probNotFound, "no such job")
	case errors.Is(err, jobs.ErrConflict):
		problem(w, r, http.StatusConflict, probConflict, err.Error())
	case errors.Is(err, jobs.ErrStopping):
		w.Header().Set("Retry-After", "5")
		problem(w, r, http.StatusServiceUnavailable, probUnavailable, "the server is shutting down")
	case errors.Is(err, jobs.ErrInsufficientStorage):
		problem(w, r, http.StatusInsufficientStorage, probInsufficientStorage, "the service has no room for this now; retry later")
	case errors.Is(err, jobs.ErrOutputLost):
		problem(w, r, http.StatusInternalServerError, probOutputLost,
			"the job's stored output is missing or corrupt; the job is now failed and nothing was sent")
	default:
		problem(w, r, http.StatusInternalServerError, probInternal, "internal error")
	}
}

// jobID returns the {id} path parameter if it can name a job; anything else is answered 404
// exactly like a missing job.
func jobID(w http.ResponseWriter, r *http.Request) (string, bool) { return resourceID(w, r, "job") }

// resourceID returns the {id} path parameter if it can name a job or batch (what); anything
// else is answered 404 exactly like a missing one.
func resourceID(w http.ResponseWriter, r *http.Request, what string) (string, bool) {
	id := chi.URLParam(r, "id")
	if _, err := uuid.Parse(id); err != nil || len(id) != 36 {
		problem(w, r, http.StatusNotFound, probNotFound, "no such "+what)
		return "", false
	}
	return strings.ToLower(id), true
}

const (
	maxFilenameBytes = 255
	maxKeyBytes      = 255
	defaultFilename  = "checkpoint.pt"
)

// cleanFilename keeps the last path element of a client-supplied name in Unicode NFC, or
// reports it unusable. The name reaches the job record, Content-Disposition and pages, so it is
// refused, not repaired, when it is not UTF-8 or holds a control character (C0, C1), a bidi
// control (which can make "evil\u202Efdp.pt" display as "evil" + "tp.pdf") or a line separator,
// or a quote: the client can rename its file, while a silently rewritten name could make two
// uploads look alike.
func cleanFilename(name string) (string, error) {
	if name == "" {
		return defaultFilename, nil
	}
	if !utf8.ValidString(name) {
		return "", errors.New("filename is not valid UTF-8")
	}
	name = path.Base(strings.ReplaceAll(norm.NFC.String(name), `\`, "/"))
	if name == "." || name == "/" || name == ".." || len(name) > maxFilenameBytes {
		return "", fmt.Errorf("filename %q is not usable", name)
	}
	if i := strings.IndexFunc(name, refusedInFilename); i >= 0 {
		r, _ := utf8.DecodeRuneInString(name[i:])
		return "", fmt.Errorf("filename contains %U: control characters, bidi controls, line separators and quotes are refused", r)
	}
	return name, nil
}

// refusedInFilename reports the characters cleanFilename refuses.
func refusedInFilename(r rune) bool {
	switch {
	case unicode.IsControl(r), r == '"':
		return true
	case r == '\u061C', r == '\u200E', r == '\u200F', // ALM, LRM, RLM
		r >= '\u202A' && r <= '\u202E', // LRE, RLE, PDF, LRO, RLO
		r >= '\u2066' && r <= '\u2069', // LRI, RLI, FSI, PDI
		r == '\u2028', r == '\u2029':   // line and paragraph separators
		return true
	}
	return false
}

// parseReprDigest returns the sha-256 member of an RFC 9530 Repr-Digest header ("" when absent).
func parseReprDigest(h string) ([]byte, error) {
	if h == "" {
		return nil, nil
	}
	for _, member := range strings.Split(h, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(member), "=")
		if !ok || strings.TrimSpace(k) != "sha-256" {
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) < 2 || v[0] != ':' || v[len(v)-1] != ':' {
			return nil, errors.New("Repr-Digest sha-256 value must be a byte sequence (:BASE64: form)")
		}
		b, err := base64.StdEncoding.DecodeString(v[1 : len(v)-1])
		if err != nil || len(b) != 32 {
			return nil, errors.New("Repr-Digest sha-256 value is not 32 base64-encoded bytes")
		}
		return b, nil
	}
	return nil, errors.New("Repr-Digest has no sha-256 member")
}

func reprDigest(hexSHA string) string {
	b, _ := hex.DecodeString(hexSHA)
	return "sha-256=:" + base64.StdEncoding.EncodeToString(b) + ":"
}

// uploadLimits bound what POST /v1/jobs receives: the size of one body, and how many bodies
// are received at once, in all and per tenant.
type uploadLimits struct {
	maxBytes int64
	// idle is how long a body may make no progress before the upload ends with 408.
	idle  time.Duration
	slots *uploadSlots
}

// idleReader extends the connection's read deadline by idle before each read, so that a body
// ends with os.ErrDeadlineExceeded only when no byte arrived for that long: a minimum rate that
// any live client meets, while one that stops sending loses its upload slot.
type idleReader struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
}

func (ir idleReader) Read(p []byte) (int, error) {
	if err := ir.rc.SetReadDeadline(time.Now().Add(ir.idle)); err != nil {
		return 0, fmt.Errorf("set upload read deadline: %w", err)
	}
	return ir.r.Read(p)
}

// handleSubmit receives a checkpoint (raw body or the "file" part of a multipart form),
// streaming it to storage while hashing it, and creates a job for it.
func handleSubmit(svc JobService, lim uploadLimits, allowed map[string]bool, m *metrics) http.HandlerFunc {
	maxBytes := lim.maxBytes
	return func(w http.ResponseWriter, r *http.Request) {
		tenant := tenantOf(r.Context())
		release, err := lim.slots.acquire(tenant)
		if err != nil {
			m.reject("too_many_uploads")
			w.Header().Set("Retry-After", "5")
			problem(w, r, http.StatusTooManyRequests, probTooManyUploads, err.Error())
			return
		}
		m.uploading.Inc()
		defer func() {
			release()
			m.uploading.Dec()
		}()
		if r.ContentLength > maxBytes {
			m.reject("too_large")
			problem(w, r, http.StatusRequestEntityTooLarge, probTooLarge, fmt.Sprintf("uploads are limited to %d bytes", maxBytes))
			return
		}
		want, err := parseReprDigest(r.Header.Get("Repr-Digest"))
		if err != nil {
			m.reject("bad_request")
			problem(w, r, http.StatusBadRequest, probBadRequest, err.Error())
			return
		}
		key := r.Header.Get("Idempotency-Key")
		if len(key) > maxKeyBytes {
			m.reject("bad_request")
			problem(w, r, http.StatusBadRequest, probBadRequest, "Idempotency-Key is longer than 255 bytes")
			return
		}
		if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
			m.reject("unsupported_media_type")
			problem(w, r, http.StatusUnsupportedMediaType, probUnsupportedMedia,
				"Content-Encoding "+ce+" is not accepted: send the checkpoint bytes as they are")
			return
		}
		q := r.URL.Query()
		sel := q.Get("select")
		mode, allow, err := jobOptions(q, allowed)
		if err != nil {
			m.reject("bad_request")
			problem(w, r, http.StatusBadRequest, probBadRequest, err.Error())
			return
		}

		rc := http.NewResponseController(w)
		defer rc.SetReadDeadline(time.Time{})
		body := http.MaxBytesReader(w, io.NopCloser(idleReader{r: r.Body, rc: rc, idle: lim.idle}), maxBytes)
		var (
			src      io.Reader = body
			filename           = q.Get("filename")
		)
		mediaType, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		switch mediaType {
		case "", "application/octet-stream":
		case "multipart/form-data":
			part, err := filePart(multipart.NewReader(body, params["boundary"]))
			if err != nil {
				if rejectBodyError(w, r, err, maxBytes, m) {
					return
				}
				m.reject("bad_request")
				problem(w, r, http.StatusBadRequest, probBadRequest, err.Error())
				return
			}
			src = part
			if filename == "" {
				filename = part.FileName()
			}
		default:
			m.reject("unsupported_media_type")
			problem(w, r, http.StatusUnsupportedMediaType, probUnsupportedMedia,
				"send the checkpoint as application/octet-stream or as the \"file\" part of multipart/form-data")
			return
		}
		filename, err = cleanFilename(filename)
		if err != nil {
			m.reject("bad_request")
			problem(w, r, http.StatusBadRequest, probBadRequest, err.Error())
			return
		}

		up, err := svc.Stage(r.Context(), src, r.ContentLength)
		if err != nil {
			if rejectBodyError(w, r, err, maxBytes, m) {
				return
			}
			if errors.Is(err, jobs.ErrInsufficientStorage) {
				m.reject("insufficient_storage")
				jobError(w, r, err)
				return
			}
			m.reject("upload_failed")
			problem(w, r, http.StatusBadRequest, probBadRequest, "the upload could not be received")
			return
		}
		m.uploaded.Add(float64(up.Size))
		if up.Size == 0 {
			_ = up.Discard()
			m.reject("bad_request")
			problem(w, r, http.StatusBadRequest, probBadRequest, "the upload is empty")
			return
		}
		if want != nil {
			got, _ := hex.DecodeString(up.SHA256)
			if !bytes.Equal(got, want) {
				_ = up.Discard()
				m.reject("digest_mismatch")
				problem(w, r, http.StatusBadRequest, probDigestMismatch,
					"the received bytes have sha-256 "+up.SHA256+", not the one in Repr-Digest")
				return
			}
		}
		job, created, err := svc.Submit(r.Context(), jobs.SubmitParams{
			Tenant: tenant, Filename: filename, Select: sel, Mode: mode, AllowGlobals: allow,
			IdempotencyKey: key, Upload: up,
		})
		if errors.Is(err, jobs.ErrIdempotencyMismatch) {
			m.reject("idempotency_mismatch")
			problem(w, r, http.StatusUnprocessableEntity, probIdempotencyMismatch, err.Error())
			return
		}
		if errors.Is(err, jobs.ErrInsufficientStorage) {
			m.reject("insufficient_storage")
		}
		if err != nil {
			jobError(w, r, err)
			return
		}
		if !created {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		w.Header().Set("Location", "/v1/jobs/"+job.ID)
		w.Header().Set("Retry-After", "1")
		encode(w, http.StatusAccepted, toJSON(job))
	}
}

// jobOptions reads a submission's mode and allowed globals from its query: mode is convert
// (the default) or scan, and each allow_global must be one the server allows (serve
// --allow-global) and, whatever the server's list, not known-dangerous. The globals are sorted
// and deduplicated, so that an Idempotency-Key replay does not depend on their order.
func jobOptions(q url.Values, allowed map[string]bool) (jobs.Mode, []string, error) {
	mode := jobs.Mode(q.Get("mode"))
	if mode == "" {
		mode = jobs.ModeConvert
	}
	if !mode.Valid() {
		return "", nil, errors.New("mode must be convert or scan")
	}
	allow, err := checkAllowed(q["allow_global"], allowed)
	if err != nil {
		return "", nil, err
	}
	return mode, allow, nil
}

// checkAllowed checks the globals a request asks to admit against the server's list and
// returns them sorted, without repeats (nil for none).
func checkAllowed(allow []string, allowed map[string]bool) ([]string, error) {
	for _, g := range allow {
		if !allowed[g] {
			return nil, fmt.Errorf("allow_global %q is not one this server allows (serve --allow-global)", g)
		}
	}
	if err := (convert.Options{AllowGlobals: allow}).Validate(); err != nil {
		return nil, err
	}
	if len(allow) == 0 {
		return nil, nil
	}
	allow = slices.Clone(allow)
	slices.Sort(allow)
	return slices.Compact(allow), nil
}

// filePart advances a multipart body to its "file" part.
func filePart(mr *multipart.Reader) (*multipart.Part, error) {
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return nil, errors.New(`multipart body has no "file" part`)
		}
		if err != nil {
			return nil, fmt.Errorf("read multipart body: %w", err)
		}
		if p.FormName() == "file" {
			return p, nil
		}
	}
}

// rejectBodyError answers 413 when err says the body exceeded the upload limit, and 408 when
// the body stopped arriving (the connection is closed after: its read deadline has passed).
func rejectBodyError(w http.ResponseWriter, r *http.Request, err error, maxBytes int64, m *metrics) bool {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		m.reject("too_large")
		problem(w, r, http.StatusRequestEntityTooLarge, probTooLarge, fmt.Sprintf("uploads are limited to %d bytes", maxBytes))
	case errors.Is(err, os.ErrDeadlineExceeded):
		m.reject("upload_idle")
		w.Header().Set("Connection", "close")
		problem(w, r, http.StatusRequestTimeout, probUploadTimeout, "the upload made no progress for too long")
	default:
		return false
	}
	return true
}

func handleGet(svc JobService) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := jobID(w, r)
		if !ok {
			return
		}
		j, err := svc.Get(r.Context(), tenantOf(r.Context()), id)
		if err != nil {
			jobError(w, r, err)
			return
		}
		if !j.State.Terminal() {
			w.Header().Set("Retry-After", "1")
		}
		encode(w, http.StatusOK, toJSON(j))
	}
}

const (
	defaultPageSize = 50
	maxPageSize     = 1000
)

var pageTokenRE = regexp.MustCompile(`^[0-9a-f-]{36}$`)

func handleList(svc JobService) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := listParams(w, r)
		if !ok {
			return
		}
		list, more, err := svc.List(r.Context(), p)
		if err != nil {
			jobError(w, r, err)
			return
		}
		encodePage(w, "jobs", list, toJSON, more, func(j jobs.Job) string { return j.ID })
	}
}

// encodePage answers a page of a list under key, each item as show gives it, with the token
// of the next page (the last item's key) when more follow.
func encodePage[T, J any](w http.ResponseWriter, key string, list []T, show func(T) J, more bool, last func(T) string) {
	items := make([]J, 0, len(list))
	for _, it := range list {
		items = append(items, show(it))
	}
	resp := map[string]any{key: items}
	if more {
		resp["next_page_token"] = encodeToken(last(list[len(list)-1]))
	}
	encode(w, http.StatusOK, resp)
}

// listParams reads the query of a list of jobs or batches: a page of the caller's, perhaps in
// one state.
func listParams(w http.ResponseWriter, r *http.Request) (jobs.ListParams, bool) {
	size, after, ok := pageParams(w, r, pageTokenRE.MatchString)
	if !ok {
		return jobs.ListParams{}, false
	}
	p := jobs.ListParams{Tenant: tenantOf(r.Context()), PageSize: size, After: after}
	if s := r.URL.Query().Get("state"); s != "" {
		if !jobs.State(s).Valid() {
			problem(w, r, http.StatusBadRequest, probBadRequest, "state must be queued, running, succeeded, failed or canceled")
			return jobs.ListParams{}, false
		}
		p.State = jobs.State(s)
	}
	return p, true
}

func handleCancel(svc JobService) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := jobID(w, r)
		if !ok {
			return
		}
		j, err := svc.Cancel(r.Context(), tenantOf(r.Context()), id)
		if errors.Is(err, jobs.ErrConflict) {
			problem(w, r, http.StatusConflict, probConflict, "the job already "+string(j.State))
			return
		}
		if err != nil {
			jobError(w, r, err)
			return
		}
		encode(w, http.StatusOK, toJSON(j))
	}
}

func handleDelete(svc JobService) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := jobID(w, r)
		if !ok {
			return
		}
		if err := svc.Delete(r.Context(), tenantOf(r.Context()), id); err != nil {
			jobError(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// openArtifact opens one verified file of a succeeded job (what names it in messages). When it
// cannot, it has answered the request itself and returns ok false.
func openArtifact(w http.ResponseWriter, r *http.Request, what string,
	open func(ctx context.Context, tenant, id string) (jobs.Job, *jobs.Artifact, error)) (a *jobs.Artifact, j jobs.Job, ok bool) {
	id, ok := jobID(w, r)
	if !ok {
		return nil, j, false
	}
	j, a, err := open(r.Context(), tenantOf(r.Context()), id)
	if errors.Is(err, jobs.ErrConflict) {
		problem(w, r, http.StatusConflict, probConflict, "the job is "+string(j.State)+"; only a succeeded job has "+what)
		return nil, j, false
	}
	if err != nil {
		jobError(w, r, err)
		return nil, j, false
	}
	return a, j, true
}

// handleOutput streams the verified safetensors file with its digest as a strong ETag and as
// Repr-Digest; http.ServeContent answers HEAD, Range (at most maxRanges, see limitRanges),
// If-Range, If-Match and If-None-Match. An output the store lets clients fetch directly (serve
// --presign) is answered 307 to its short-lived URL, after the same verification.
func handleOutput(svc JobService) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a, j, ok := openArtifact(w, r, "an output", svc.OpenOutput)
		if !ok {
			return
		}
		defer a.Close()
		if loc := a.Location(); loc != "" {
			// The URL expires, so no cache may keep the redirect; and it has no body to describe.
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("Location", loc)
			w.WriteHeader(http.StatusTemporaryRedirect)
			return
		}
		if spec := r.Header.Get("Range"); spec != "" {
			r = r.Clone(r.Context())
			if spec = limitRanges(spec, a.Size()); spec != "" {
				r.Header.Set("Range", spec)
			} else {
				r.Header.Del("Range")
			}
		}
		name := convert.OutputName(j.Filename)
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("ETag", `"sha256:`+j.OutputSHA256+`"`)
		h.Set("Repr-Digest", reprDigest(j.OutputSHA256))
		h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
		h.Set("Cache-Control", "private, immutable")
		http.ServeContent(w, r, name, j.FinishedAt, a)
	}
}

func handleManifest(svc JobService) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a, _, ok := openArtifact(w, r, "a manifest", svc.OpenManifest)
		if ok {
			serveJSONFile(w, a)
		}
	}
}

// handleReport serves a finished job's scan report: a succeeded job's manifest, or the report
// of a failed job's refused file (verdict, every global with its class and offset, tensors).
func handleReport(svc JobService) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := jobID(w, r)
		if !ok {
			return
		}
		j, a, err := svc.OpenReport(r.Context(), tenantOf(r.Context()), id)
		if errors.Is(err, jobs.ErrNoReport) {
			problem(w, r, http.StatusConflict, probConflict, "the job is "+string(j.State)+" and has no scan report: only a job whose file was judged has one")
			return
		}
		if err != nil {
			jobError(w, r, err)
			return
		}
		serveJSONFile(w, a)
	}
}

// serveJSONFile sends a stored JSON file and closes it.
func serveJSONFile(w http.ResponseWriter, a *jobs.Artifact) {
	defer a.Close()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "private")
	_, _ = io.Copy(w, a)
}

func handleHealthz() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		encode(w, http.StatusOK, map[string]string{"status": "ok"})
	}
}

// readier reports whether a node accepts work.
type readier interface {
	Ready(ctx context.Context) error
}

func handleReadyz(svc readier) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := svc.Ready(r.Context()); err != nil {
			w.Header().Set("Retry-After", "5")
			problem(w, r, http.StatusServiceUnavailable, probUnavailable, "not ready: "+err.Error())
			return
		}
		encode(w, http.StatusOK, map[string]string{"status": "ready"})
	}
}

func handleSpec(spec []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(spec)
	}
}

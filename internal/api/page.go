package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/unpickler"
)

// webFS holds the page: html/template files under web/templates and the assets under
// web/static, served as they are (plain CSS and JavaScript, no build step).
//
//go:embed web
var webFS embed.FS

// pageCSP is the Content-Security-Policy of every page and asset: nothing but the server's own
// files, no inline script or style, no plugins, no framing, forms posting only to this origin,
// and Trusted Types required so that the script cannot hand a string to an HTML sink: it
// builds its DOM with textContent.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; " +
	"require-trusted-types-for 'script'; trusted-types 'none'"

// pages renders the web page and serves its assets.
type pages struct {
	tmpl *template.Template
	// assets maps a content-addressed name ("app.1f2e3d4c5b6a.js") to the asset; paths maps the
	// plain name ("app.js") to its URL. A new binary changes the URL of a changed file, so an
	// asset can be cached forever and a page never runs a stale script.
	assets map[string]asset
	paths  map[string]string
	// open is true when the server runs without tokens: the page then needs no token, and the
	// plain form (no JavaScript, so no Authorization header) can upload.
	open bool
	log  *slog.Logger
}

// assetTypes are the content types of the assets, by extension: fixed here, since
// mime.TypeByExtension also reads the system's tables, which differ between machines.
var assetTypes = map[string]string{
	".css": "text/css; charset=utf-8",
	".js":  "text/javascript; charset=utf-8",
}

type asset struct {
	body        []byte
	contentType string
}

// newPages loads the embedded templates and assets. They are part of the binary, so a failure
// is a build defect, not an input error: it panics, and every test that builds a server sees it.
func newPages(open bool, log *slog.Logger) *pages {
	p := &pages{assets: map[string]asset{}, paths: map[string]string{}, open: open, log: log}
	entries, err := fs.ReadDir(webFS, "web/static")
	if err != nil {
		panic(err)
	}
	for _, e := range entries {
		body, err := fs.ReadFile(webFS, "web/static/"+e.Name())
		if err != nil {
			panic(err)
		}
		sum := sha256.Sum256(body)
		ext := path.Ext(e.Name())
		hashed := strings.TrimSuffix(e.Name(), ext) + "." + hex.EncodeToString(sum[:6]) + ext
		ct, ok := assetTypes[ext]
		if !ok {
			panic("web/static/" + e.Name() + ": no content type for " + ext)
		}
		p.assets[hashed] = asset{body: body, contentType: ct}
		p.paths[e.Name()] = "/static/" + hashed
	}
	p.tmpl = template.Must(template.New("").Funcs(template.FuncMap{
		"asset": func(name string) (string, error) {
			if u, ok := p.paths[name]; ok {
				return u, nil
			}
			return "", fmt.Errorf("no asset %q", name)
		},
		"bytes": formatBytes,
	}).ParseFS(webFS, "web/templates/*.html"))
	return p
}

// setPageHeaders sets the security headers every page and asset carries.
func setPageHeaders(h http.Header) {
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

// render writes template name with data. The page is rendered into a buffer first so that a
// template failure is a clean 500, not half a page.
func (p *pages) render(w http.ResponseWriter, status int, name string, data any) {
	var buf bytes.Buffer
	if err := p.tmpl.ExecuteTemplate(&buf, name, data); err != nil {
		p.log.Error("render page", "template", name, "err", err)
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString("internal error: the page could not be rendered\n")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
	}
	setPageHeaders(w.Header())
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// handleIndex serves the page at /.
func (p *pages) handleIndex() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p.render(w, http.StatusOK, "index.html", struct{ Open bool }{p.open})
	}
}

// handleStatic serves a content-addressed asset, cacheable for a year: its name changes with
// its content.
func (p *pages) handleStatic() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a, ok := p.assets[chi.URLParam(r, "asset")]
		if !ok {
			problem(w, r, http.StatusNotFound, probNotFound, "no such asset")
			return
		}
		setPageHeaders(w.Header())
		w.Header().Set("Content-Type", a.contentType)
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		w.Header().Set("Content-Length", strconv.Itoa(len(a.body)))
		_, _ = w.Write(a.body)
	}
}

// handleJobPage serves /jobs/{id}, the job as a page: where the plain form's upload lands, so
// that the page works without JavaScript. It refreshes itself (a meta refresh, not a script)
// until the job is finished. Failures are answered as problems, which browserPages renders.
func (p *pages) handleJobPage(svc JobService) http.HandlerFunc {
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
		var report *reportSummary
		if j.HasReport {
			report = p.summarizeReport(r.Context(), svc, j)
		}
		p.render(w, http.StatusOK, "job.html", struct {
			Job      jobJSON
			Finished bool
			Report   *reportSummary
		}{toJSON(j), j.State.Terminal(), report})
	}
}

// reportSummary is what the job page shows of a scan report: the verdict, and the globals that
// decided it.
type reportSummary struct {
	Verdict string
	// Offenders are the dangerous and unknown globals, the first maxOffendersShown of them.
	Offenders []convert.GlobalRef
	// More counts the offenders beyond those.
	More int
}

// maxOffendersShown bounds the globals the job page lists; the report has them all.
const maxOffendersShown = 100

// summarizeReport reads the summary of a job's report, or returns nil (and logs why) when it
// cannot: the page then shows the job without it.
func (p *pages) summarizeReport(ctx context.Context, svc JobService, j jobs.Job) *reportSummary {
	_, a, err := svc.OpenReport(ctx, j.Tenant, j.ID)
	if err != nil {
		p.log.Warn("job page: no report summary", "job", j.ID, "err", err)
		return nil
	}
	defer a.Close()
	s, err := readReportSummary(a)
	if err != nil {
		p.log.Warn("job page: no report summary", "job", j.ID, "err", err)
		return nil
	}
	return s
}

// readReportSummary reads a report's verdict and offending globals as a stream of tokens: a
// report also lists every tensor (up to the limit of tensors, tens of megabytes), which is
// skipped, never held.
func readReportSummary(r io.Reader) (*reportSummary, error) {
	dec := json.NewDecoder(r)
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("report: not a JSON object (%v)", err)
	}
	s := &reportSummary{}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("report: %w", err)
		}
		switch key {
		case "verdict":
			err = dec.Decode(&s.Verdict)
		case "globals":
			err = s.readOffenders(dec)
		default:
			err = skipValue(dec)
		}
		if err != nil {
			return nil, fmt.Errorf("report %v: %w", key, err)
		}
	}
	return s, nil
}

// readOffenders reads the globals array (or null), keeping the dangerous and unknown ones.
func (s *reportSummary) readOffenders(dec *json.Decoder) error {
	t, err := dec.Token()
	if err != nil || t == nil {
		return err
	}
	if t != json.Delim('[') {
		return fmt.Errorf("want an array, got %v", t)
	}
	for dec.More() {
		var g convert.GlobalRef
		if err := dec.Decode(&g); err != nil {
			return err
		}
		if g.Class != unpickler.Dangerous && g.Class != unpickler.Unknown {
			continue
		}
		if len(s.Offenders) == maxOffendersShown {
			s.More++
			continue
		}
		s.Offenders = append(s.Offenders, g)
	}
	_, err = dec.Token()
	return err
}

// skipValue reads past the next JSON value, one token at a time.
func skipValue(dec *json.Decoder) error {
	for depth := 0; ; {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		switch t {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

// browserPages makes the two requests a browser navigates to without JavaScript answer in
// HTML: the plain form's POST /v1/jobs, whose 202 becomes 303 See Other to the job's page, and
// GET /jobs/{id}. Their problem answers, from any handler or middleware (401, 403, 413, ...),
// become an HTML page with the same status. Only a request whose Accept prefers text/html to
// application/json is changed: API clients (curl sends */*) get the JSON the contract gives.
func (p *pages) browserPages(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		formPost := r.Method == http.MethodPost && r.URL.Path == "/v1/jobs"
		jobPage := r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/jobs/")
		if !(formPost || jobPage) || !prefersHTML(r.Header.Values("Accept")) {
			next.ServeHTTP(w, r)
			return
		}
		bw := &browserWriter{ResponseWriter: w}
		next.ServeHTTP(bw, r)
		if bw.problem != nil {
			p.renderProblem(w, bw.status, bw.problem.Bytes())
		}
	})
}

// maxProblemBytes bounds the problem body browserWriter keeps; problems are a few hundred bytes.
const maxProblemBytes = 64 << 10

// browserWriter rewrites a 202 with Location /v1/jobs/ID into 303 See Other to /jobs/ID, and
// holds back a problem+json answer for browserPages to render. Anything else passes through.
type browserWriter struct {
	http.ResponseWriter
	status int
	// problem collects a problem body; discard drops the JSON body of a rewritten 202.
	problem *bytes.Buffer
	discard bool
}

func (w *browserWriter) WriteHeader(status int) {
	h := w.Header()
	switch {
	case w.status != 0:
		return
	case status == http.StatusAccepted && strings.HasPrefix(h.Get("Location"), "/v1/jobs/"):
		h.Set("Location", "/jobs/"+strings.TrimPrefix(h.Get("Location"), "/v1/jobs/"))
		h.Del("Content-Type")
		h.Del("Retry-After")
		w.discard = true
		status = http.StatusSeeOther
		w.ResponseWriter.WriteHeader(status)
	case h.Get("Content-Type") == "application/problem+json":
		w.problem = &bytes.Buffer{}
	default:
		w.ResponseWriter.WriteHeader(status)
	}
	w.status = status
}

func (w *browserWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	switch {
	case w.discard:
		return len(b), nil
	case w.problem != nil:
		if w.problem.Len()+len(b) <= maxProblemBytes {
			w.problem.Write(b)
		}
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (the upload handler sets read
// deadlines through it).
func (w *browserWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// renderProblem answers with the HTML form of a problem body.
func (p *pages) renderProblem(w http.ResponseWriter, status int, body []byte) {
	var prob Problem
	if err := json.Unmarshal(body, &prob); err != nil || prob.Title == "" {
		prob = Problem{Title: http.StatusText(status), Status: status}
	}
	w.Header().Del("Content-Length")
	p.render(w, status, "problem.html", prob)
}

// prefersHTML reports whether an Accept header ranks text/html above application/json, each
// weighed by its most specific matching range (RFC 9110, section 12.5.1). No Accept, or */*,
// ranks them equally: JSON, the API's answer, wins.
func prefersHTML(accept []string) bool {
	return acceptQ(accept, "text", "html") > acceptQ(accept, "application", "json")
}

// acceptQ returns the weight Accept gives to type/subtype: that of its most specific matching
// range, 0 when none matches, and 1 when there is no Accept at all.
func acceptQ(accept []string, typ, sub string) float64 {
	if len(accept) == 0 {
		return 1
	}
	q, specificity := 0.0, -1
	for _, field := range accept {
		for _, r := range strings.Split(field, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(r))
			if err != nil {
				continue
			}
			t, s, _ := strings.Cut(mt, "/")
			var spec int
			switch {
			case t == typ && s == sub:
				spec = 2
			case t == typ && s == "*":
				spec = 1
			case t == "*" && s == "*":
				spec = 0
			default:
				continue
			}
			if spec <= specificity {
				continue
			}
			specificity, q = spec, 1
			if v, ok := params["q"]; ok {
				if f, err := strconv.ParseFloat(v, 64); err == nil && f >= 0 && f <= 1 {
					q = f
				}
			}
		}
	}
	return q
}

// formatBytes writes a size for people: 1536 -> "1.5 KiB".
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return strconv.FormatFloat(float64(n)/float64(div), 'f', 1, 64) + " " + "KMGTPE"[exp:exp+1] + "iB"
}

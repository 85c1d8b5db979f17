package api

import (
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// routes is the whole URL space of the service; api/openapi.yaml documents exactly these.
func routes(d Deps, m *metrics) *chi.Mux {
	r := chi.NewRouter()
	page := newPages(d.Tokens == nil, d.Logger)
	r.Use(m.instrument, middleware.Recoverer, page.browserPages)
	if d.Tokens == nil {
		r.Use(requireLoopbackHost(m))
	}
	r.Use(sameOrigin(m))

	getHead(r, "/healthz", handleHealthz())
	getHead(r, "/readyz", handleReadyz(d.Jobs))
	r.Method("GET", "/metrics", metricsHandler(d, m))
	r.Get("/openapi.yaml", handleSpec(d.Spec))
	r.Get(problemBase+"{type}", handleProblemPage())

	r.Group(func(r chi.Router) {
		r.Use(authenticate(d.Tokens, m))
		allowed := allowSet(d.AllowGlobals)
		r.Post("/v1/jobs", handleSubmit(d.Jobs, uploadLimits{
			maxBytes: d.MaxUploadBytes, idle: d.UploadIdleTimeout,
			slots: newUploadSlots(d.MaxConcurrentUploads, d.MaxConcurrentUploadsPerTenant),
		}, allowed, m))
		r.Get("/v1/jobs", handleList(d.Jobs))
		getHead(r, "/v1/jobs/{id}", handleGet(d.Jobs))
		r.Delete("/v1/jobs/{id}", handleDelete(d.Jobs))
		r.Post("/v1/jobs/{id}/cancel", handleCancel(d.Jobs))
		getHead(r, "/v1/jobs/{id}/output", handleOutput(d.Jobs))
		r.Get("/v1/jobs/{id}/manifest", handleManifest(d.Jobs))
		r.Get("/v1/jobs/{id}/report", handleReport(d.Jobs))
		r.Get("/v1/jobs/{id}/events", handleEvents(d.Jobs, d.Stop))
		r.Post("/v1/batches", handleSubmitBatch(d.Jobs, d.BatchRoots, allowed))
		r.Get("/v1/batches", handleListBatches(d.Jobs))
		r.Get("/v1/batches/{id}", handleGetBatch(d.Jobs))
		r.Delete("/v1/batches/{id}", handleDeleteBatch(d.Jobs))
		r.Post("/v1/batches/{id}/cancel", handleCancelBatch(d.Jobs))
	})

	// The web page's routes (page.go): GET / is public, since the page holds no data (what it
	// shows comes from the API, with the user's token); /jobs/{id} is a job as a page, where
	// the plain form's upload lands.
	r.Get("/", page.handleIndex())
	r.Get("/static/{asset}", page.handleStatic())
	r.With(authenticate(d.Tokens, m)).Get("/jobs/{id}", page.handleJobPage(d.Jobs))
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		problem(w, r, http.StatusNotFound, probNotFound, "no such resource")
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		allowed := allowedMethods(r, req.URL.Path)
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		problem(w, req, http.StatusMethodNotAllowed, probMethodNotAllowed,
			req.Method+" is not allowed here; use "+strings.Join(allowed, " or "))
	})
	return r
}

// allowSet is the set of the server's allowed globals.
func allowSet(globals []string) map[string]bool {
	set := make(map[string]bool, len(globals))
	for _, g := range globals {
		set[g] = true
	}
	return set
}

// getHead routes GET and HEAD of pattern to h: download tools and curl -I ask HEAD first, and
// net/http sends a HEAD answer's headers without its body.
func getHead(r chi.Router, pattern string, h http.HandlerFunc) {
	r.Get(pattern, h)
	r.Head(pattern, h)
}

// allowedMethods lists the methods mux routes for path, for the Allow header of a 405.
func allowedMethods(mux *chi.Mux, path string) []string {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodDelete} {
		if mux.Match(chi.NewRouteContext(), m, path) {
			allowed = append(allowed, m)
		}
	}
	return allowed
}

// metricsHandler serves the registry to whom Deps.MetricsToken says.
func metricsHandler(d Deps, m *metrics) http.Handler {
	h := promhttp.HandlerFor(d.Registry, promhttp.HandlerOpts{})
	switch {
	case d.MetricsToken != nil:
		return authenticate(d.MetricsToken, m)(h)
	case d.Tokens == nil:
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		problem(w, r, http.StatusNotFound, probNotFound, "a server with tokens serves /metrics only with --metrics-token")
	})
}

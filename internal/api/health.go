package api

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
)

// NewHealthServer is the whole HTTP surface of a worker node (converter worker), which serves no
// job API: /healthz, /readyz (ready says whether the node works jobs) and /metrics from reg.
// With metricsToken, /metrics requires it as a bearer token; without it everything is open
// and, as on an open server, only answered to a loopback Host.
func NewHealthServer(ready func(context.Context) error, reg *prometheus.Registry, metricsToken *Tokens) http.Handler {
	m := newMetrics(reg)
	r := chi.NewRouter()
	r.Use(m.instrument, middleware.Recoverer)
	if metricsToken == nil {
		r.Use(requireLoopbackHost(m))
	}
	getHead(r, "/healthz", handleHealthz())
	getHead(r, "/readyz", handleReadyz(readyFunc(ready)))
	r.Method("GET", "/metrics", metricsHandler(Deps{Registry: reg, MetricsToken: metricsToken}, m))
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		problem(w, r, http.StatusNotFound, probNotFound, "a worker node serves only /healthz, /readyz and /metrics")
	})
	return r
}

// readyFunc is a function as a readier.
type readyFunc func(context.Context) error

func (f readyFunc) Ready(ctx context.Context) error { return f(ctx) }

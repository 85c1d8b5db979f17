package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the HTTP layer's collectors. The route label is chi's route pattern, never the
// raw path, so job ids never become label values.
type metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	rejections *prometheus.CounterVec
	uploaded   prometheus.Counter
	uploading  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "converter_http_requests_total",
			Help: "HTTP requests by method, route pattern and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "converter_http_request_duration_seconds",
			Help:    "HTTP request duration by method and route pattern.",
			Buckets: prometheus.DefBuckets,
		}, []string{"method", "route"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "converter_rejections_total",
			Help: "Requests refused before a job was created, by reason.",
		}, []string{"reason"}),
		uploaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "converter_upload_bytes_total",
			Help: "Bytes of uploads received and stored.",
		}),
		uploading: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "converter_uploads_in_progress",
			Help: "Uploads being received now.",
		}),
	}
	reg.MustRegister(m.requests, m.duration, m.rejections, m.uploaded, m.uploading)
	return m
}

func (m *metrics) reject(reason string) { m.rejections.WithLabelValues(reason).Inc() }

// instrument counts each request under the route pattern chi matched, read after the handler
// ran because the pattern is only complete once routing is done.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		method := methodLabel(r.Method)
		m.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
		m.duration.WithLabelValues(method, route).Observe(time.Since(start).Seconds())
	})
}

func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "OTHER"
}

// Package api is the HTTP face of the job service: routes, bearer-token auth, Host and Origin
// checks, streaming uploads and downloads, RFC 9457 problem responses and request metrics. The
// contract is api/openapi.yaml; tests check every response against it.
//
// It never parses checkpoints and never holds an upload or an output in memory: bodies stream
// to and from files owned by the jobs package.
package api

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/jobs"
)

// JobService is what the handlers need from the job lifecycle (*jobs.Service provides it).
type JobService interface {
	Stage(ctx context.Context, body io.Reader, size int64) (*jobs.Upload, error)
	Submit(ctx context.Context, p jobs.SubmitParams) (jobs.Job, bool, error)
	Get(ctx context.Context, tenant, id string) (jobs.Job, error)
	List(ctx context.Context, p jobs.ListParams) ([]jobs.Job, bool, error)
	Cancel(ctx context.Context, tenant, id string) (jobs.Job, error)
	Delete(ctx context.Context, tenant, id string) error
	OpenOutput(ctx context.Context, tenant, id string) (jobs.Job, *jobs.Artifact, error)
	OpenManifest(ctx context.Context, tenant, id string) (jobs.Job, *jobs.Artifact, error)
	OpenReport(ctx context.Context, tenant, id string) (jobs.Job, *jobs.Artifact, error)
	Ready(ctx context.Context) error

	SubmitBatch(ctx context.Context, p jobs.BatchParams) (jobs.Batch, error)
	GetBatch(ctx context.Context, tenant, id string) (jobs.Batch, error)
	BatchFiles(ctx context.Context, tenant, id, after string, pageSize int) ([]batch.File, bool, error)
	ListBatches(ctx context.Context, p jobs.ListParams) ([]jobs.Batch, bool, error)
	CancelBatch(ctx context.Context, tenant, id string) (jobs.Batch, error)
	DeleteBatch(ctx context.Context, tenant, id string) error
}

var _ JobService = (*jobs.Service)(nil)

// Deps are the server's collaborators.
type Deps struct {
	Jobs JobService
	// Tokens authenticates requests; nil runs the server open, as tenant "local" (the caller
	// must make sure it listens on loopback only), answering only requests whose Host is a
	// loopback name.
	Tokens *Tokens
	// Registry receives the HTTP metrics and is served at /metrics.
	Registry *prometheus.Registry
	// MetricsToken, when set, is the bearer token /metrics requires (see ParseMetricsToken).
	// Without it /metrics is open on an open server and not served (404) on one with Tokens:
	// tenant tokens do not grant it, since metrics describe every tenant's work.
	MetricsToken *Tokens
	Logger       *slog.Logger
	// MaxUploadBytes bounds a request body; larger uploads get 413 and nothing is kept.
	MaxUploadBytes int64
	// MaxConcurrentUploads bounds the uploads received at once; one more gets 429 with
	// Retry-After (default DefaultMaxConcurrentUploads).
	MaxConcurrentUploads int
	// MaxConcurrentUploadsPerTenant bounds the uploads one tenant sends at once; one more gets
	// 429 with Retry-After. The default is half of MaxConcurrentUploads, rounded up, when Tokens
	// are set (so that one tenant always leaves slots to the others), and all of them when the
	// server is open (its one tenant).
	MaxConcurrentUploadsPerTenant int
	// UploadIdleTimeout ends an upload whose body makes no progress for this long with 408,
	// freeing its slot, so that clients that stop sending cannot hold slots (default
	// DefaultUploadIdleTimeout).
	UploadIdleTimeout time.Duration
	// Spec is the OpenAPI document served at /openapi.yaml.
	Spec []byte
	// AllowGlobals are the "module.name" globals a job may ask to admit as inert records
	// (query parameter allow_global); the caller has checked them with
	// convert.Options.Validate, which refuses known-dangerous ones.
	AllowGlobals []string
	// BatchRoots are the directories and S3 prefixes within which a batch's source and
	// destination must lie (serve --batch-root); the zero value refuses every batch.
	BatchRoots BatchRoots
	// Stop is closed when the server begins to shut down: event streams end then, so that they
	// do not hold the drain (nil: they end only with their job or client).
	Stop <-chan struct{}
}

// DefaultUploadIdleTimeout is Deps.UploadIdleTimeout's default.
const DefaultUploadIdleTimeout = time.Minute

// DefaultMaxUploadBytes bounds uploads when Deps.MaxUploadBytes is zero.
const DefaultMaxUploadBytes = 64 << 30

// DefaultMaxConcurrentUploads bounds concurrent uploads when Deps.MaxConcurrentUploads is zero.
const DefaultMaxConcurrentUploads = 8

// NewServer returns the service's HTTP handler.
func NewServer(d Deps) http.Handler {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Registry == nil {
		d.Registry = prometheus.NewRegistry()
	}
	if d.MaxUploadBytes <= 0 {
		d.MaxUploadBytes = DefaultMaxUploadBytes
	}
	if d.MaxConcurrentUploads <= 0 {
		d.MaxConcurrentUploads = DefaultMaxConcurrentUploads
	}
	if d.UploadIdleTimeout <= 0 {
		d.UploadIdleTimeout = DefaultUploadIdleTimeout
	}
	if d.MaxConcurrentUploadsPerTenant <= 0 {
		d.MaxConcurrentUploadsPerTenant = d.MaxConcurrentUploads
		if d.Tokens != nil {
			d.MaxConcurrentUploadsPerTenant = (d.MaxConcurrentUploads + 1) / 2
		}
	}
	return routes(d, newMetrics(d.Registry))
}

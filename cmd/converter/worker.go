package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ptsafe/converter/internal/api"
	"github.com/ptsafe/converter/internal/envflag"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/sandbox"
)

// nodeConfig is what serve and worker share: where jobs and their files are kept, and how
// conversions run.
type nodeConfig struct {
	dataDir string
	// database is jobs.Config.Database: "" for SQLite in dataDir, or a postgres:// URL.
	database     string
	rescueDelay  time.Duration
	store        string // "" for the data directory, else s3://bucket/prefix
	workers      int
	retention    time.Duration
	minFreeBytes int64
	metricsToken string
	drainTimeout time.Duration
	// maxBatchFiles bounds the files of a batch's SOURCE (jobs.Config.MaxBatchFiles).
	maxBatchFiles int
	// limits bound each conversion, exactly as the CLI's --limit-* flags do.
	limits limits.Limits
}

// register defines the shared flags on fs, each with its CONVERTER_* fallback, and returns
// the check to run after fs.Parse (with the environment's parse errors).
func (c *nodeConfig) register(fs *flag.FlagSet, getenv func(string) string) func() error {
	var workers int64
	fs.StringVar(&c.dataDir, "data", "./data", "data directory (one process at a time): the SQLite job store unless --db is given, and the jobs' files unless --store names S3 (then scratch space for running conversions only)")
	fs.StringVar(&c.database, "db", "", "job database shared by several nodes: a `postgres://` URL (put the password in PGPASSWORD or ~/.pgpass, not in the URL, which help shows); empty for SQLite in --data")
	fs.DurationVar(&c.rescueDelay, "rescue-delay", jobs.DefaultRescueDelay, "with --db, how often a node looks for jobs whose node died and queues them again")
	fs.StringVar(&c.store, "store", "", "`s3://BUCKET/PREFIX` keeping every job's files under PREFIX/JOB_ID/ (endpoint and credentials: AWS_ENDPOINT_URL and the AWS SDK's standard variables and config); empty: the data directory")
	fs.Int64Var(&workers, "workers", 1, "concurrent conversions on this node; serve --workers 0 is an API-only node, which works none (with --db postgres://... and --store s3://..., beside nodes that do)")
	fs.DurationVar(&c.retention, "retention", jobs.DefaultRetention, "how long finished jobs and their files are kept")
	fs.Int64Var(&c.minFreeBytes, "min-free-bytes", jobs.DefaultMinFreeBytes, "free space the data directory keeps: an upload (507) or a conversion that would leave less is refused")
	fs.StringVar(&c.metricsToken, "metrics-token", "", "file holding the bearer token /metrics requires (or sha256:HEX); serve with --tokens, and a worker beyond loopback, serve /metrics only with it")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM or SIGINT, how long in-flight uploads and running conversions may take to finish; what is left is canceled and resumes later")
	fs.IntVar(&c.maxBatchFiles, "max-batch-files", jobs.DefaultMaxBatchFiles, "most files a batch's SOURCE may hold: planning one with more fails it as over a limit, its listing stopped there (set it alike on every node, since any node may plan a batch)")
	errs := []error{envflag.Bind(fs, getenv, "data", "db", "rescue-delay", "store", "workers", "retention", "min-free-bytes", "metrics-token", "drain-timeout", "max-batch-files")}
	c.limits = limits.Default()
	errs = append(errs, c.limits.RegisterFlags(fs, getenv))
	return func() error {
		if err := errors.Join(errs...); err != nil {
			return err
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("unexpected arguments: %v", fs.Args())
		}
		if workers < 0 || workers > 1024 {
			return fmt.Errorf("--workers must be 0..1024, got %d", workers)
		}
		c.workers = int(workers)
		if c.database != "" && !jobs.IsPostgres(c.database) {
			return errors.New("--db must be a postgres:// URL, or empty for SQLite in --data")
		}
		if c.rescueDelay <= 0 {
			return fmt.Errorf("--rescue-delay must be positive, got %s", c.rescueDelay)
		}
		if c.store != "" && !strings.HasPrefix(c.store, "s3://") {
			return fmt.Errorf("--store must be s3://BUCKET/PREFIX (or empty for the data directory), got %q", c.store)
		}
		if c.retention <= 0 {
			return fmt.Errorf("--retention must be positive, got %s", c.retention)
		}
		if c.drainTimeout <= 0 {
			return fmt.Errorf("--drain-timeout must be positive, got %s", c.drainTimeout)
		}
		if c.minFreeBytes <= 0 {
			return fmt.Errorf("--min-free-bytes must be positive, got %d", c.minFreeBytes)
		}
		if c.maxBatchFiles <= 0 {
			return fmt.Errorf("--max-batch-files must be positive, got %d", c.maxBatchFiles)
		}
		return nil
	}
}

// open probes the sandbox and opens the job service the configuration describes, whose
// conversions always run in the sandbox child, so that no input (a stack overflow is fatal to
// a Go process) can take the node down with every job in flight.
func (c *nodeConfig) open(ctx context.Context, logger *slog.Logger, reg prometheus.Registerer, presign time.Duration) (*jobs.Service, error) {
	runner := &sandbox.Runner{Config: sandbox.Config{Logger: logger}}
	status, err := runner.Probe(ctx)
	if err != nil {
		return nil, fmt.Errorf("sandbox probe: %w", err)
	}
	logger.Info("sandbox", slog.Bool("rlimits", status.Rlimits), slog.String("seccomp", status.Seccomp), slog.Bool("tsync", status.TSync), slog.String("landlock", status.Landlock))
	svc, err := jobs.Open(ctx, jobs.Config{
		Dir:           c.dataDir,
		Database:      c.database,
		RescueDelay:   c.rescueDelay,
		Store:         c.store,
		Presign:       presign,
		Workers:       c.workers,
		APIOnly:       c.workers == 0,
		Retention:     c.retention,
		MinFreeBytes:  c.minFreeBytes,
		MaxBatchFiles: c.maxBatchFiles,
		Limits:        c.limits,
		Logger:        logger,
		Registerer:    reg,
		Converter:     runner,
	})
	if errors.Is(err, jobs.ErrAPIOnlyAlone) {
		return nil, fmt.Errorf("--workers 0 without --db postgres://... and --store s3://...: %w", err)
	}
	return svc, err
}

// newRegistry is a node's metrics registry, with the Go runtime's and the process's.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// workerConfig is the validated configuration of `converter worker`.
type workerConfig struct {
	nodeConfig
	healthAddr string
}

// defaultHealthAddr is where a worker serves its health and metrics unless told otherwise.
const defaultHealthAddr = "127.0.0.1:8081"

func parseWorkerFlags(args []string, getenv func(string) string, stderr io.Writer) (workerConfig, error) {
	fs := flag.NewFlagSet("converter worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c workerConfig
	check := c.register(fs, getenv)
	fs.StringVar(&c.healthAddr, "health-addr", defaultHealthAddr, "address serving /healthz, /readyz and /metrics (nothing else); beyond loopback only with --metrics-token")
	bindErr := envflag.Bind(fs, getenv, "health-addr")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: converter worker [flags]

Runs a node that only works jobs (no job API): it takes queued conversions from the job store
and runs them in the sandbox child, like serve does, and serves /healthz, /readyz and /metrics
on --health-addr. Jobs come from serve processes sharing its job database (--db) and store
(--store). With the default SQLite job store the data directory is locked by the process
using it, so a worker on the data directory of a running serve is refused: run worker pools
on --db postgres://... and --store s3://..., each node with its own --data scratch directory.
Every flag falls back to the environment variable named with it.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if err := errors.Join(bindErr, check()); err != nil {
		return c, err
	}
	if c.workers == 0 {
		return c, errors.New("--workers must be 1..1024: a worker node that works no job has nothing to do")
	}
	return c, nil
}

// runWorker works jobs until ctx is canceled, then stops within one --drain-timeout: running
// conversions continue until then, and what still runs is put back in the queue.
func runWorker(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseWorkerFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	metricsToken, err := readMetricsToken(cfg.metricsToken)
	if err != nil {
		return err
	}
	if metricsToken == nil {
		if err := requireLoopback(cfg.healthAddr); err != nil {
			return fmt.Errorf("--health-addr: %w", err)
		}
	}
	logger := slog.New(slog.NewJSONHandler(stderr, nil))
	reg := newRegistry()
	svc, err := cfg.open(ctx, logger, reg, 0)
	if err != nil {
		return err
	}
	defer svc.Close()
	ln, srv, err := listenHTTP(cfg.healthAddr, api.NewHealthServer(svc.Ready, reg, metricsToken))
	if err != nil {
		return err
	}
	if err := svc.Start(ctx); err != nil {
		ln.Close()
		return err
	}
	logger.Info("working", slog.String("health_addr", ln.Addr().String()), slog.String("data", cfg.dataDir),
		slog.String("store", cfg.store), slog.Int("workers", cfg.workers))
	fmt.Fprintf(stdout, "converter worker: health on http://%s\n", ln.Addr())
	// Readiness turns false first (Stop), then the health listener closes.
	return serveUntilDone(ctx, srv, ln, svc, cfg.drainTimeout, logger, "serve health", func(drainCtx context.Context) error {
		return errors.Join(svc.Stop(drainCtx), srv.Shutdown(drainCtx))
	})
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	apispec "github.com/ptsafe/converter/api"
	"github.com/ptsafe/converter/internal/api"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/envflag"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/sandbox"
)

// serveConfig is the validated configuration of `converter serve`.
type serveConfig struct {
	addr    string
	dataDir string
	// database is jobs.Config.Database: "" for SQLite in dataDir, or a postgres:// URL.
	database       string
	rescueDelay    time.Duration
	workers        int
	retention      time.Duration
	maxUploadBytes int64
	maxUploads     int
	// maxTenantUploads is 0 for api.Deps's default.
	maxTenantUploads int
	minFreeBytes     int64
	tokensFile       string
	metricsToken     string
	drainTimeout     time.Duration
	uploadIdle       time.Duration
	// limits bound each conversion, exactly as the CLI's --limit-* flags do.
	limits limits.Limits
	// allowGlobals are the globals a job may ask to admit as inert records.
	allowGlobals []string
}

// defaultAddr is where serve listens, and healthcheck asks, unless told otherwise.
const defaultAddr = "127.0.0.1:8080"

// globalsFlag is serve's repeatable --allow-global. A value may also list several globals
// separated by commas, so that CONVERTER_ALLOW_GLOBAL can hold the whole list; values given on
// the command line replace the environment's, as every flag's do.
type globalsFlag struct {
	list    []string
	fromEnv bool
}

func (g *globalsFlag) String() string { return strings.Join(g.list, ",") }

func (g *globalsFlag) Set(v string) error {
	if g.fromEnv {
		g.list, g.fromEnv = nil, false
	}
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			g.list = append(g.list, s)
		}
	}
	return nil
}

// parseServeFlags reads flags, taking each default from its CONVERTER_* environment variable
// when set.
func parseServeFlags(args []string, getenv func(string) string, stderr io.Writer) (serveConfig, error) {
	fs := flag.NewFlagSet("converter serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c serveConfig
	var workers, maxUploads, maxTenantUploads int64
	fs.StringVar(&c.addr, "addr", defaultAddr, "listen address")
	fs.StringVar(&c.dataDir, "data", "./data", "data directory: blobs, and the SQLite job store unless --db is given")
	fs.StringVar(&c.database, "db", "", "job database shared by several nodes: a `postgres://` URL (put the password in PGPASSWORD or ~/.pgpass, not in the URL, which help shows); empty for SQLite in --data")
	fs.DurationVar(&c.rescueDelay, "rescue-delay", jobs.DefaultRescueDelay, "with --db, how often a node looks for jobs whose node died and queues them again")
	fs.Int64Var(&workers, "workers", 1, "concurrent conversions")
	fs.DurationVar(&c.retention, "retention", jobs.DefaultRetention, "how long finished jobs and their files are kept")
	fs.Int64Var(&c.maxUploadBytes, "max-upload-bytes", api.DefaultMaxUploadBytes, "largest accepted upload, in bytes")
	fs.Int64Var(&maxUploads, "max-uploads", api.DefaultMaxConcurrentUploads, "uploads received at once; one more gets 429")
	fs.Int64Var(&maxTenantUploads, "max-uploads-per-tenant", 0, "uploads one tenant sends at once; one more gets 429 (0: half of --max-uploads with --tokens, all without)")
	fs.Int64Var(&c.minFreeBytes, "min-free-bytes", jobs.DefaultMinFreeBytes, "free space the data directory keeps; an upload that would leave less gets 507")
	fs.StringVar(&c.tokensFile, "tokens", "", "file of \"TENANT TOKEN\" lines (TOKEN may be sha256:HEX); without it the server is open and loopback-only")
	fs.StringVar(&c.metricsToken, "metrics-token", "", "file holding the bearer token /metrics requires (or sha256:HEX); with --tokens, /metrics is not served without it")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM or SIGINT, how long in-flight uploads and running conversions may take to finish; what is left is canceled and resumes on the next start")
	fs.DurationVar(&c.uploadIdle, "upload-idle-timeout", api.DefaultUploadIdleTimeout, "an upload whose body makes no progress for this long gets 408 and frees its slot")
	var allow globalsFlag
	fs.Var(&allow, "allow-global", "a `MODULE.NAME` jobs may ask to admit as an inert record with ?allow_global= (repeatable, or comma-separated); known-dangerous globals are refused")
	errs := []error{envflag.Bind(fs, getenv, "addr", "data", "db", "rescue-delay", "workers", "retention", "max-upload-bytes", "max-uploads",
		"max-uploads-per-tenant", "min-free-bytes", "tokens", "metrics-token", "drain-timeout", "upload-idle-timeout", "allow-global")}
	allow.fromEnv = len(allow.list) > 0
	c.limits = limits.Default()
	errs = append(errs, c.limits.RegisterFlags(fs, getenv))
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: converter serve [flags]\n\nRuns the HTTP job service; conversions always run in the sandbox child.\nEvery flag falls back to the environment variable named with it.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.database != "" && !jobs.IsPostgres(c.database) {
		return c, errors.New("--db must be a postgres:// URL, or empty for SQLite in --data")
	}
	if c.rescueDelay <= 0 {
		return c, fmt.Errorf("--rescue-delay must be positive, got %s", c.rescueDelay)
	}
	if workers < 1 || workers > 1024 {
		return c, fmt.Errorf("--workers must be 1..1024, got %d", workers)
	}
	c.workers = int(workers)
	if c.retention <= 0 {
		return c, fmt.Errorf("--retention must be positive, got %s", c.retention)
	}
	if c.maxUploadBytes <= 0 {
		return c, fmt.Errorf("--max-upload-bytes must be positive, got %d", c.maxUploadBytes)
	}
	if maxUploads < 1 || maxUploads > 1<<16 {
		return c, fmt.Errorf("--max-uploads must be 1..65536, got %d", maxUploads)
	}
	c.maxUploads = int(maxUploads)
	if maxTenantUploads < 0 || maxTenantUploads > maxUploads {
		return c, fmt.Errorf("--max-uploads-per-tenant must be 0..--max-uploads (%d), got %d", maxUploads, maxTenantUploads)
	}
	c.maxTenantUploads = int(maxTenantUploads)
	if c.drainTimeout <= 0 || c.uploadIdle <= 0 {
		return c, fmt.Errorf("--drain-timeout and --upload-idle-timeout must be positive, got %s and %s", c.drainTimeout, c.uploadIdle)
	}
	if c.minFreeBytes <= 0 {
		return c, fmt.Errorf("--min-free-bytes must be positive, got %d", c.minFreeBytes)
	}
	if err := (convert.Options{AllowGlobals: allow.list}).Validate(); err != nil {
		return c, err
	}
	c.allowGlobals = allow.list
	return c, nil
}

// Limits of the HTTP server on every connection, documented in the README's Service section: a
// client gets headerTimeout to send its request headers (slow-loris clients do not hold
// connections), at most maxHeaderBytes of them (431 beyond), and an idle keep-alive connection
// is closed after idleTimeout. Bodies have their own progress deadline (--upload-idle-timeout).
const (
	headerTimeout  = 10 * time.Second
	maxHeaderBytes = 64 << 10
	idleTimeout    = 2 * time.Minute
)

// runServe starts the HTTP job service and runs until ctx is canceled, then shuts down
// gracefully within one --drain-timeout: readiness turns false and the listener closes,
// uploads being received finish and get their 202, running conversions continue, and when the
// deadline comes, whatever still runs is canceled and put back in the queue (its attempt not
// counted) for the next start. It returns nil when everything drained in time.
func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseServeFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewJSONHandler(stderr, nil))

	var tokens, metricsToken *api.Tokens
	if cfg.tokensFile != "" {
		if tokens, err = readTokens(cfg.tokensFile, api.ParseTokens); err != nil {
			return err
		}
	} else if err := requireLoopback(cfg.addr); err != nil {
		return err
	}
	if cfg.metricsToken != "" {
		if metricsToken, err = readTokens(cfg.metricsToken, api.ParseMetricsToken); err != nil {
			return err
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// Conversions always run in the sandbox child, so that no input (a stack overflow is fatal
	// to a Go process) can take the server down with every upload in flight.
	runner := &sandbox.Runner{Config: sandbox.Config{Logger: logger}}
	status, err := runner.Probe(ctx)
	if err != nil {
		return fmt.Errorf("sandbox probe: %w", err)
	}
	logger.Info("sandbox", slog.Bool("rlimits", status.Rlimits), slog.String("seccomp", status.Seccomp), slog.Bool("tsync", status.TSync), slog.String("landlock", status.Landlock))
	svc, err := jobs.Open(ctx, jobs.Config{
		Dir:          cfg.dataDir,
		Database:     cfg.database,
		RescueDelay:  cfg.rescueDelay,
		Workers:      cfg.workers,
		Retention:    cfg.retention,
		MinFreeBytes: cfg.minFreeBytes,
		Limits:       cfg.limits,
		Logger:       logger,
		Registerer:   reg,
		Converter:    runner,
	})
	if err != nil {
		return err
	}
	defer svc.Close()

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler: api.NewServer(api.Deps{
			Jobs: svc, Tokens: tokens, MetricsToken: metricsToken, Registry: reg, Logger: logger,
			MaxUploadBytes: cfg.maxUploadBytes, MaxConcurrentUploads: cfg.maxUploads,
			MaxConcurrentUploadsPerTenant: cfg.maxTenantUploads, UploadIdleTimeout: cfg.uploadIdle, Spec: apispec.OpenAPI,
			AllowGlobals: cfg.allowGlobals, Stop: ctx.Done(),
		}),
		ReadHeaderTimeout: headerTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		IdleTimeout:       idleTimeout,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	if err := svc.Start(ctx); err != nil {
		ln.Close()
		return err
	}
	mode := "tokens"
	if tokens == nil {
		mode = "open (loopback only)"
	}
	logger.Info("serving", slog.String("addr", ln.Addr().String()), slog.String("data", cfg.dataDir),
		slog.Int("workers", cfg.workers), slog.String("auth", mode), slog.Any("allow_globals", cfg.allowGlobals))
	fmt.Fprintf(stdout, "converter serve: listening on http://%s\n", ln.Addr())

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.drainTimeout)
		defer cancel()
		return errors.Join(fmt.Errorf("serve: %w", err), svc.Stop(stopCtx))
	case <-ctx.Done():
	}
	logger.Info("shutting down", slog.Duration("drain_timeout", cfg.drainTimeout))
	// One deadline for everything: first in-flight requests finish (an upload being received
	// still gets its 202) while conversions keep running, then the job queue stops claiming jobs
	// and waits for the running ones until the same deadline.
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.drainTimeout)
	defer cancel()
	var shutdownErr error
	if err := srv.Shutdown(drainCtx); err != nil {
		shutdownErr = fmt.Errorf("shut down http server: %w", err)
	}
	err = errors.Join(shutdownErr, svc.Stop(drainCtx))
	if err == nil {
		logger.Info("stopped", slog.Bool("drained", true))
	}
	return err
}

// readTokens parses the tokens file at path with parse.
func readTokens(path string, parse func(io.Reader) (*api.Tokens, error)) (*api.Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open tokens file: %w", err)
	}
	defer f.Close()
	t, err := parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// requireLoopback refuses an address that is not on a loopback interface: a server without
// tokens lets anyone who can reach it convert files.
func requireLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--addr %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("refusing to listen on %q without --tokens: an open server is for local use only; "+
		"listen on 127.0.0.1 or ::1, or pass --tokens FILE", addr)
}

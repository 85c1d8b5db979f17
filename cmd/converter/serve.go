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
	"path/filepath"
	"strings"
	"time"

	apispec "github.com/ptsafe/converter/api"
	"github.com/ptsafe/converter/internal/api"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/envflag"
)

// serveConfig is the validated configuration of `converter serve`.
type serveConfig struct {
	nodeConfig
	addr           string
	maxUploadBytes int64
	maxUploads     int
	// maxTenantUploads is 0 for api.Deps's default.
	maxTenantUploads int
	tokensFile       string
	uploadIdle       time.Duration
	// allowGlobals are the globals a job may ask to admit as inert records.
	allowGlobals []string
	// batchRoots are the directories and S3 prefixes batches may read and write
	// (api.Deps.BatchRoots).
	batchRoots api.BatchRoots
	// presign, when positive, answers output downloads with a 307 to a presigned URL of the S3
	// store valid this long.
	presign time.Duration
}

// defaultAddr is where serve listens, and healthcheck asks, unless told otherwise.
const defaultAddr = "127.0.0.1:8080"

// listFlag is one of serve's repeatable flags (--allow-global, --batch-root). A value may also
// list several items separated by sep, so that one environment variable (CONVERTER_ALLOW_GLOBAL,
// CONVERTER_BATCH_ROOT) can hold the whole list; values given on the command line replace the
// environment's, as every flag's do.
type listFlag struct {
	list []string
	sep  string
	// split cuts a value into items; nil cuts it at every sep.
	split   func(string) []string
	fromEnv bool
}

func (g *listFlag) String() string { return strings.Join(g.list, g.sep) }

func (g *listFlag) Set(v string) error {
	if g.fromEnv {
		g.list, g.fromEnv = nil, false
	}
	items := strings.Split(v, g.sep)
	if g.split != nil {
		items = g.split(v)
	}
	for _, s := range items {
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
	var maxUploads, maxTenantUploads int64
	check := c.register(fs, getenv)
	fs.StringVar(&c.addr, "addr", defaultAddr, "listen address")
	fs.Int64Var(&c.maxUploadBytes, "max-upload-bytes", api.DefaultMaxUploadBytes, "largest accepted upload, in bytes")
	fs.Int64Var(&maxUploads, "max-uploads", api.DefaultMaxConcurrentUploads, "uploads received at once; one more gets 429")
	fs.Int64Var(&maxTenantUploads, "max-uploads-per-tenant", 0, "uploads one tenant sends at once; one more gets 429 (0: half of --max-uploads with --tokens, all without)")
	fs.StringVar(&c.tokensFile, "tokens", "", "file of \"TENANT TOKEN\" lines (TOKEN may be sha256:HEX); without it the server is open and loopback-only")
	fs.DurationVar(&c.presign, "presign", 0, "with --store s3://, answer output downloads with a 307 to a presigned GET URL of the object valid this `long` (0: stream them through the server)")
	fs.DurationVar(&c.uploadIdle, "upload-idle-timeout", api.DefaultUploadIdleTimeout, "an upload whose body makes no progress for this long gets 408 and frees its slot")
	allow := listFlag{sep: ","}
	fs.Var(&allow, "allow-global", "a `MODULE.NAME` jobs may ask to admit as an inert record with ?allow_global= (repeatable, or comma-separated); known-dangerous globals are refused")
	roots := listFlag{sep: string(filepath.ListSeparator), split: splitRoots}
	fs.Var(&roots, "batch-root", "a `DIR` or s3://BUCKET/PREFIX within which POST /v1/batches may name sources and destinations (repeatable, or a list separated by \""+string(filepath.ListSeparator)+"\"); without any, batches are refused")
	bindErr := envflag.Bind(fs, getenv, "addr", "max-upload-bytes", "max-uploads",
		"max-uploads-per-tenant", "tokens", "presign", "upload-idle-timeout", "allow-global", "batch-root")
	allow.fromEnv = len(allow.list) > 0
	roots.fromEnv = len(roots.list) > 0
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: converter serve [flags]\n\nRuns the HTTP job service, and works its jobs too (unless --workers 0: an API-only node beside\nworker nodes); conversions always run in the sandbox child.\nEvery flag falls back to the environment variable named with it.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if err := errors.Join(bindErr, check()); err != nil {
		return c, err
	}
	if c.presign < 0 || c.presign > 0 && c.store == "" {
		return c, fmt.Errorf("--presign needs --store s3://... and a positive duration, got %s", c.presign)
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
	if c.uploadIdle <= 0 {
		return c, fmt.Errorf("--upload-idle-timeout must be positive, got %s", c.uploadIdle)
	}
	if err := (convert.Options{AllowGlobals: allow.list}).Validate(); err != nil {
		return c, err
	}
	c.allowGlobals = allow.list
	br, err := api.ParseBatchRoots(roots.list)
	if err != nil {
		return c, err
	}
	c.batchRoots = br
	data, err := filepath.Abs(c.dataDir)
	if err != nil {
		return c, fmt.Errorf("--data %s: %w", c.dataDir, err)
	}
	return c, c.batchRoots.Excludes(data, c.store)
}

// splitRoots splits a list of --batch-root values at the system's list separator. On Unix that
// is ":", which s3:// locations hold too: a piece "s3" (never a root, which is absolute) is
// joined again with the "//BUCKET..." after it.
func splitRoots(v string) []string {
	parts := strings.Split(v, string(filepath.ListSeparator))
	var out []string
	for i := 0; i < len(parts); i++ {
		if parts[i] == "s3" && i+1 < len(parts) && strings.HasPrefix(parts[i+1], "//") {
			out = append(out, "s3:"+parts[i+1])
			i++
			continue
		}
		out = append(out, parts[i])
	}
	return out
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

// listenHTTP listens on addr and returns the HTTP server for h with the connection limits
// above, for serve's API and worker's health address alike.
func listenHTTP(addr string, h http.Handler) (net.Listener, *http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen: %w", err)
	}
	return ln, &http.Server{
		Handler:           h,
		ReadHeaderTimeout: headerTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		IdleTimeout:       idleTimeout,
	}, nil
}

// readMetricsToken reads --metrics-token's file, or returns nil when none is given.
func readMetricsToken(path string) (*api.Tokens, error) {
	if path == "" {
		return nil, nil
	}
	return readTokens(path, api.ParseMetricsToken)
}

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

	var tokens *api.Tokens
	if cfg.tokensFile != "" {
		if tokens, err = readTokens(cfg.tokensFile, api.ParseTokens); err != nil {
			return err
		}
	} else if err := requireLoopback(cfg.addr); err != nil {
		return err
	}
	metricsToken, err := readMetricsToken(cfg.metricsToken)
	if err != nil {
		return err
	}

	reg := newRegistry()
	svc, err := cfg.open(ctx, logger, reg, cfg.presign)
	if err != nil {
		return err
	}
	defer svc.Close()

	ln, srv, err := listenHTTP(cfg.addr, api.NewServer(api.Deps{
		Jobs: svc, Tokens: tokens, MetricsToken: metricsToken, Registry: reg, Logger: logger,
		MaxUploadBytes: cfg.maxUploadBytes, MaxConcurrentUploads: cfg.maxUploads,
		MaxConcurrentUploadsPerTenant: cfg.maxTenantUploads, UploadIdleTimeout: cfg.uploadIdle, Spec: apispec.OpenAPI,
		AllowGlobals: cfg.allowGlobals, BatchRoots: cfg.batchRoots, Stop: ctx.Done(),
	}))
	if err != nil {
		return err
	}
	srv.BaseContext = func(net.Listener) context.Context { return context.WithoutCancel(ctx) }
	if err := svc.Start(ctx); err != nil {
		ln.Close()
		return err
	}
	mode := "tokens"
	if tokens == nil {
		mode = "open (loopback only)"
	}
	logger.Info("serving", slog.String("addr", ln.Addr().String()), slog.String("data", cfg.dataDir), slog.String("store", cfg.store),
		slog.Int("workers", cfg.workers), slog.String("auth", mode), slog.Any("allow_globals", cfg.allowGlobals))
	fmt.Fprintf(stdout, "converter serve: listening on http://%s\n", ln.Addr())

	// One deadline for everything: first in-flight requests finish (an upload being received
	// still gets its 202) while conversions keep running, then the job queue stops claiming jobs
	// and waits for the running ones until the same deadline.
	err = serveUntilDone(ctx, srv, ln, svc, cfg.drainTimeout, logger, "serve", func(drainCtx context.Context) error {
		var shutdownErr error
		if err := srv.Shutdown(drainCtx); err != nil {
			shutdownErr = fmt.Errorf("shut down http server: %w", err)
		}
		return errors.Join(shutdownErr, svc.Stop(drainCtx))
	})
	if err == nil {
		logger.Info("stopped", slog.Bool("drained", true))
	}
	return err
}

// serveUntilDone serves srv on ln until ctx ends, then drains: drain runs under one deadline of
// drainTimeout, in the command's own order. If srv fails first, the job service is stopped
// within the same time and the failure returned (what names the server in it).
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener, svc interface{ Stop(context.Context) error }, drainTimeout time.Duration,
	logger *slog.Logger, what string, drain func(context.Context) error) error {
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTimeout)
		defer cancel()
		return errors.Join(fmt.Errorf("%s: %w", what, err), svc.Stop(stopCtx))
	case <-ctx.Done():
	}
	logger.Info("shutting down", slog.Duration("drain_timeout", drainTimeout))
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTimeout)
	defer cancel()
	return drain(drainCtx)
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

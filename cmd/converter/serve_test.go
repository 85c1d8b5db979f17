package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/testkit"
)

func TestServeFlagsFromEnvironment(t *testing.T) {
	env := map[string]string{
		"CONVERTER_ADDR":                   "127.0.0.1:9999",
		"CONVERTER_WORKERS":                "4",
		"CONVERTER_RETENTION":              "2h",
		"CONVERTER_MAX_UPLOAD_BYTES":       "1024",
		"CONVERTER_LIMIT_MAX_OUTPUT_BYTES": "4096",
		"CONVERTER_LIMIT_TIMEOUT":          "1m",
		"CONVERTER_DB":                     "postgres://converter@db.internal/jobs",
		"CONVERTER_RESCUE_DELAY":           "5s",
		"CONVERTER_MAX_BATCH_FILES":        "500",
	}
	c, err := parseServeFlags([]string{"--workers", "3", "--limit-max-tensors", "7", "--limit-timeout", "2m", "--max-uploads-per-tenant", "3"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.addr != "127.0.0.1:9999" || c.workers != 3 || c.retention != 2*time.Hour || c.maxUploadBytes != 1024 || c.dataDir != "./data" || c.maxTenantUploads != 3 ||
		c.database != "postgres://converter@db.internal/jobs" || c.rescueDelay != 5*time.Second || c.maxBatchFiles != 500 {
		t.Errorf("config = %+v; want env values, the --workers flag winning, default data dir", c)
	}
	want := limits.Default()
	want.MaxOutputBytes, want.MaxTensors, want.Timeout = 4096, 7, 2*time.Minute
	if c.limits != want {
		t.Errorf("limits = %+v\nwant %+v (env, flags winning, defaults)", c.limits, want)
	}
	if _, err := parseServeFlags(nil, func(k string) string {
		return map[string]string{"CONVERTER_RETENTION": "a week"}[k]
	}, io.Discard); err == nil {
		t.Error("a bad CONVERTER_RETENTION was accepted")
	}
	if _, err := parseServeFlags([]string{"--db", "mysql://db/jobs"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Error("a --db that is not a postgres:// URL was accepted")
	}
	if _, err := parseServeFlags([]string{"--max-uploads", "4", "--max-uploads-per-tenant", "5"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Error("--max-uploads-per-tenant above --max-uploads was accepted")
	}
	if _, err := parseServeFlags([]string{"--max-batch-files", "0"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Error("--max-batch-files 0 was accepted")
	}
}

func TestServeHelpListsEveryFlagAndVariable(t *testing.T) {
	var out bytes.Buffer
	if err := runServe(t.Context(), []string{"-h"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatalf("serve -h: %v", err)
	}
	for _, want := range []string{"-addr", "CONVERTER_ADDR", "-data", "CONVERTER_DATA", "-db", "CONVERTER_DB", "-rescue-delay", "CONVERTER_RESCUE_DELAY", "-workers", "CONVERTER_WORKERS",
		"-retention", "CONVERTER_RETENTION", "-max-upload-bytes", "CONVERTER_MAX_UPLOAD_BYTES", "-tokens", "CONVERTER_TOKENS",
		"-metrics-token", "CONVERTER_METRICS_TOKEN", "-max-uploads-per-tenant", "CONVERTER_MAX_UPLOADS_PER_TENANT", "-limit-max-output-bytes", "CONVERTER_LIMIT_MAX_OUTPUT_BYTES", "-limit-timeout", "CONVERTER_LIMIT_TIMEOUT", "-upload-idle-timeout", "CONVERTER_UPLOAD_IDLE_TIMEOUT", "-drain-timeout", "CONVERTER_DRAIN_TIMEOUT", "-allow-global", "CONVERTER_ALLOW_GLOBAL",
		"-batch-root", "CONVERTER_BATCH_ROOT", "-max-batch-files", "CONVERTER_MAX_BATCH_FILES"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("serve -h does not mention %s", want)
		}
	}
}

// serve has no in-process mode: a fatal error in a conversion must never take the server down.
func TestServeHasNoSandboxFlag(t *testing.T) {
	if _, err := parseServeFlags([]string{"--sandbox=false"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Error("serve --sandbox=false was accepted")
	}
}

func TestServeRefusesBadMetricsToken(t *testing.T) {
	file := filepath.Join(t.TempDir(), "metrics-token")
	if err := os.WriteFile(file, []byte("two words\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := runServe(t.Context(), []string{"--data", t.TempDir(), "--metrics-token", file}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), file) {
		t.Errorf("serve with a malformed metrics token file: err = %v, want a refusal naming the file", err)
	}
}

func TestServeOpenModeIsLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0"} {
		err := runServe(t.Context(), []string{"--addr", addr, "--data", t.TempDir()}, func(string) string { return "" }, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "without --tokens") {
			t.Errorf("serve --addr %s without tokens: err = %v, want a refusal", addr, err)
		}
	}
}

// server is one `converter serve` process.
type server struct {
	cmd *exec.Cmd
	url string
}

// binDir holds the binary the serve tests run; TestMain removes it.
var binDir = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "converter-bin-") })

// builtConverter is the binary the serve tests run, built once per test binary.
var builtConverter = sync.OnceValues(func() (string, error) {
	dir, err := binDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "converter")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func TestMain(m *testing.M) {
	code := testkit.PostgresMain(m)
	if dir, err := binDir(); err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// buildConverter returns the binary, whose sandbox children serve runs its conversions in.
func buildConverter(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin, err := builtConverter()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func startServer(t *testing.T, bin, data string, flags ...string) *server {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--addr", "127.0.0.1:0", "--data", data}, flags...)...)
	cmd.Stderr = io.Discard
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("server printed no address: %v", err)
	}
	_, url, ok := strings.Cut(strings.TrimSpace(line), "listening on ")
	if !ok {
		t.Fatalf("unexpected first line %q", line)
	}
	return &server{cmd: cmd, url: url}
}

type jobState struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Output *struct {
		SHA256 string `json:"sha256"`
	} `json:"output"`
	Error *struct{ Type, Detail string } `json:"error"`
}

// postFixture uploads a testdata/torch fixture and returns the accepted job.
func postFixture(t *testing.T, srv *server, name string) jobState {
	t.Helper()
	fixture, err := os.ReadFile(filepath.Join("..", "..", "testdata", "torch", name))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(srv.url+"/v1/jobs?filename=pytorch_model.bin", "application/octet-stream", bytes.NewReader(fixture))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var job jobState
	json.NewDecoder(resp.Body).Decode(&job)
	if resp.StatusCode != http.StatusAccepted || job.ID == "" {
		t.Fatalf("POST = %d %+v, want 202", resp.StatusCode, job)
	}
	return job
}

// waitJob polls a job until it is finished, a bounded number of times.
func waitJob(t *testing.T, srv *server, id string) jobState {
	t.Helper()
	var job jobState
	for range 600 {
		getJSON(t, srv.url+"/v1/jobs/"+id, &job)
		if job.State == "succeeded" || job.State == "failed" || job.State == "canceled" {
			return job
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("job %s never finished: %+v", id, job)
	return job
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// A server killed with SIGKILL right after answering 202 loses nothing: restarted on the same
// data directory it runs the job to completion.
func TestServeSIGKILLRestart(t *testing.T) {
	bin := buildConverter(t)
	data := filepath.Join(t.TempDir(), "data")

	srv := startServer(t, bin, data)
	job := postFixture(t, srv, "mymodel.pt")
	if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	srv.cmd.Wait()

	srv = startServer(t, bin, data)
	if job = waitJob(t, srv, job.ID); job.State != "succeeded" || job.Output == nil {
		t.Fatalf("after restart job = %+v, want succeeded", job)
	}

	// Graceful shutdown on SIGTERM exits cleanly.
	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.cmd.Wait() }()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			t.Errorf("serve exited with %v after SIGTERM, want 0", err)
		}
	case <-ctx.Done():
		t.Error("serve did not stop after SIGTERM")
	}
}

// The --limit-* flags reach the conversions serve runs (in its sandbox child): a checkpoint with
// two tensors fails as over the limit under --limit-max-tensors 1.
func TestServeLimitsReachConversions(t *testing.T) {
	srv := startServer(t, buildConverter(t), t.TempDir(), "--limit-max-tensors", "1")
	job := waitJob(t, srv, postFixture(t, srv, "mymodel.pt").ID)
	if job.State != "failed" || job.Error == nil || job.Error.Type != "limit" {
		t.Errorf("job = %+v %+v, want failed with error type limit", job, job.Error)
	}
}

// --allow-global is repeatable and takes comma lists; CONVERTER_ALLOW_GLOBAL stands in for it
// unless the command line gives any; a known-dangerous global stops the server from starting.
func TestServeAllowGlobal(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string { return map[string]string{"CONVERTER_ALLOW_GLOBAL": v}[k] }
	}
	cases := []struct {
		args []string
		env  string
		want []string
	}{
		{[]string{"--allow-global", "mylib.Config", "--allow-global", "a.B,c.D"}, "", []string{"mylib.Config", "a.B", "c.D"}},
		{nil, "mylib.Config, mylib.Schedule", []string{"mylib.Config", "mylib.Schedule"}},
		{[]string{"--allow-global", "a.B"}, "mylib.Config", []string{"a.B"}},
		{nil, "", nil},
	}
	for _, c := range cases {
		cfg, err := parseServeFlags(c.args, env(c.env), io.Discard)
		if err != nil {
			t.Errorf("%q with env %q: %v", c.args, c.env, err)
			continue
		}
		if !slices.Equal(cfg.allowGlobals, c.want) {
			t.Errorf("%q with env %q: allow %q, want %q", c.args, c.env, cfg.allowGlobals, c.want)
		}
	}
	for _, bad := range [][]string{{"--allow-global", "os.system"}, {"--allow-global", "nodot"}} {
		if _, err := parseServeFlags(bad, env(""), io.Discard); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
	if _, err := parseServeFlags(nil, env("builtins.eval"), io.Discard); err == nil {
		t.Error("CONVERTER_ALLOW_GLOBAL=builtins.eval was accepted")
	}
}

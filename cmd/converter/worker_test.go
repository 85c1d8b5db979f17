package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/testkit"
)

func TestWorkerFlags(t *testing.T) {
	var out bytes.Buffer
	if err := runWorker(t.Context(), []string{"-h"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatalf("worker -h: %v", err)
	}
	for _, want := range []string{"-health-addr", "CONVERTER_HEALTH_ADDR", "-store", "CONVERTER_STORE", "-data", "-workers",
		"-limit-timeout", "-metrics-token", "-drain-timeout", "-max-batch-files", "locked"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("worker -h does not mention %s", want)
		}
	}
	env := map[string]string{"CONVERTER_STORE": "s3://models/jobs", "CONVERTER_WORKERS": "3"}
	c, err := parseWorkerFlags([]string{"--limit-max-tensors", "7"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || c.store != "s3://models/jobs" || c.workers != 3 || c.limits.MaxTensors != 7 || c.healthAddr != defaultHealthAddr {
		t.Errorf("worker config = %+v, %v; want the environment's store and workers, the flag's limit", c, err)
	}
	for _, args := range [][]string{{"--store", "/srv/jobs"}, {"--workers", "0"}, {"extra"}} {
		if _, err := parseWorkerFlags(args, func(string) string { return "" }, io.Discard); err == nil {
			t.Errorf("worker %q was accepted", args)
		}
	}
	if _, err := parseServeFlags([]string{"--presign", "5m"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Error("serve --presign without --store was accepted")
	}
	if err := runWorker(t.Context(), []string{"--health-addr", "0.0.0.0:0"}, func(string) string { return "" }, io.Discard, io.Discard); err == nil {
		t.Error("a worker serving /metrics beyond loopback without --metrics-token was started")
	}
}

// node is a serve or worker process started with an environment of its own.
type node struct {
	cmd  *exec.Cmd
	url  string
	logs bytes.Buffer
	done chan struct{} // closed when the process exited, with its status in err
	err  error
}

func startNode(t *testing.T, bin string, env []string, args ...string) *node {
	t.Helper()
	n := &node{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	n.cmd.Env = append(os.Environ(), env...)
	n.cmd.Stderr = &n.logs
	out, err := n.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	go func() {
		n.err = n.cmd.Wait()
		close(n.done)
	}()
	t.Cleanup(func() { n.cmd.Process.Kill(); <-n.done })
	if err != nil {
		<-n.done
		t.Fatalf("%s printed no address: %v\n%s", args[0], err, n.logs.String())
	}
	i := strings.Index(line, "http://")
	if i < 0 {
		t.Fatalf("unexpected first line %q", line)
	}
	n.url = strings.TrimSpace(line[i:])
	return n
}

// queueJob plays another node that queues a job for checkpoint and goes away: the upload is
// in the S3 store of cfg (on s3), the record in its database.
func queueJob(t *testing.T, s3 *s3env, cfg jobs.Config, checkpoint []byte) jobs.Job {
	t.Helper()
	cfg.Converter = convert.InProcess{}
	cfg.StoreConfig = s3store.Config{Endpoint: s3.srv.Endpoint, Credentials: s3.srv.Credentials()}
	svc, err := jobs.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	up, err := svc.Stage(t.Context(), bytes.NewReader(checkpoint), int64(len(checkpoint)))
	if err != nil {
		t.Fatal(err)
	}
	job, _, err := svc.Submit(t.Context(), jobs.SubmitParams{Tenant: "local", Filename: "pytorch_model.bin", Upload: up})
	if err != nil {
		t.Fatal(err)
	}
	return job
}

// TestWorkerWorksJobsOnS3 runs the binary: a job queued on an S3 store is worked by
// `converter worker` (which serves /readyz and nothing of the job API), then `converter
// serve` on the same database and store serves its output, whole and by range, and takes and
// converts an upload of its own. With SQLite the two share the database one after the other:
// a worker on the data directory of a running serve is refused.
func TestWorkerWorksJobsOnS3(t *testing.T) {
	bin := buildConverter(t)
	s3 := startS3(t)
	bucket := s3.srv.Bucket(t)
	store := "s3://" + bucket + "/jobs"
	data := t.TempDir()
	checkpoint, err := os.ReadFile(filepath.Join("..", "..", "testdata", "torch", "mymodel.pt"))
	if err != nil {
		t.Fatal(err)
	}

	// Another node queued a job: its upload is in the store, its record in the database.
	job := queueJob(t, s3, jobs.Config{Dir: data, Store: store}, checkpoint)

	w := startNode(t, bin, s3.srv.Env(), "worker", "--data", data, "--store", store, "--health-addr", "127.0.0.1:0")
	if code := httpStatus(t, w.url+"/readyz"); code != http.StatusOK {
		t.Errorf("worker /readyz = %d; want 200", code)
	}
	if code := httpStatus(t, w.url+"/v1/jobs"); code != http.StatusNotFound {
		t.Errorf("worker /v1/jobs = %d; want 404: a worker serves no job API", code)
	}
	outputs := s3.tree(t, store)
	if !poll(w.done, func() bool { _, err := outputs.Stat(t.Context(), job.ID+"/manifest.json"); return err == nil }) {
		t.Fatalf("the worker never stored the job's manifest\n%s", w.logs.String())
	}
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if <-w.done; w.err != nil {
		t.Fatalf("worker after SIGTERM: %v\n%s", w.err, w.logs.String())
	}
	if entries, err := os.ReadDir(filepath.Join(data, "jobs")); err != nil || len(entries) != 0 {
		t.Errorf("scratch after the job: %d entries, %v; want none", len(entries), err)
	}

	s := startNode(t, bin, s3.srv.Env(), "serve", "--addr", "127.0.0.1:0", "--data", data, "--store", store)
	var got faultJob
	getJSON(t, s.url+"/v1/jobs/"+job.ID, &got)
	if got.State != "succeeded" || got.Output == nil {
		t.Fatalf("job worked by the worker = %s %+v; want succeeded", got.State, got.Error)
	}
	out := httpGet(t, s.url+"/v1/jobs/"+job.ID+"/output", "")
	if sum := sha256.Sum256(out); hex.EncodeToString(sum[:]) != got.Output.SHA256 {
		t.Errorf("downloaded output has sha-256 %x; want the job's %s", sum, got.Output.SHA256)
	}
	if part := httpGet(t, s.url+"/v1/jobs/"+job.ID+"/output", "bytes=8-15"); !bytes.Equal(part, out[8:16]) {
		t.Errorf("Range bytes=8-15 = %x; want %x", part, out[8:16])
	}

	// While serve holds the data directory, a worker on it is refused.
	cmd := exec.Command(bin, "worker", "--data", data, "--store", store, "--health-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), s3.srv.Env()...)
	msg, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(msg), "in use by another process") {
		t.Errorf("worker beside a running serve = %v, %s; want refused: the data directory is in use", err, msg)
	}
}

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func httpGet(t *testing.T, url, rng string) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("GET %s = %d, %v\n%s", url, resp.StatusCode, err, b)
	}
	return b
}

// TestWorkerBesideServeOnPostgres runs `converter serve` and `converter worker` at once on one
// PostgreSQL job database and one S3 store: a job queued by another node is worked by the
// worker (the only node working then) and downloaded through serve; an upload through serve
// is converted by whichever node takes it and downloaded through serve.
func TestWorkerBesideServeOnPostgres(t *testing.T) {
	bin := buildConverter(t)
	db := testkit.StartPostgres(t)
	s3 := startS3(t)
	store := "s3://" + s3.srv.Bucket(t) + "/jobs"
	checkpoint, err := os.ReadFile(filepath.Join("..", "..", "testdata", "torch", "mymodel.pt"))
	if err != nil {
		t.Fatal(err)
	}
	w := startNode(t, bin, s3.srv.Env(), "worker", "--db", db, "--data", t.TempDir(), "--store", store, "--health-addr", "127.0.0.1:0")

	// Another node queues a job and goes away.
	queued := queueJob(t, s3, jobs.Config{Dir: t.TempDir(), Database: db, Store: store}, checkpoint)
	outputs := s3.tree(t, store)
	if !poll(w.done, func() bool { _, err := outputs.Stat(t.Context(), queued.ID+"/manifest.json"); return err == nil }) {
		t.Fatalf("the worker never stored the queued job's manifest\n%s", w.logs.String())
	}

	s := startNode(t, bin, s3.srv.Env(), "serve", "--addr", "127.0.0.1:0", "--db", db, "--data", t.TempDir(), "--store", store)
	var got faultJob
	getJSON(t, s.url+"/v1/jobs/"+queued.ID, &got)
	if got.State != "succeeded" || got.Output == nil {
		t.Fatalf("job worked by the worker = %s %+v; want succeeded", got.State, got.Error)
	}
	out := httpGet(t, s.url+"/v1/jobs/"+queued.ID+"/output", "")
	if sum := sha256.Sum256(out); hex.EncodeToString(sum[:]) != got.Output.SHA256 {
		t.Errorf("job worked by the worker: output sha-256 %x; want %s", sum, got.Output.SHA256)
	}

	postedID := postJob(t, s.url, checkpoint)
	if !poll(w.done, func() bool {
		getJSON(t, s.url+"/v1/jobs/"+postedID, &got)
		return got.State == "succeeded" || got.State == "failed"
	}) {
		t.Fatalf("the worker exited: %v\n%s", w.err, w.logs.String())
	}
	if part := httpGet(t, s.url+"/v1/jobs/"+postedID+"/output", "bytes=0-7"); got.State != "succeeded" || !bytes.Equal(part, out[:8]) {
		t.Errorf("uploaded job: %s, first 8 bytes %x; want succeeded with %x", got.State, part, out[:8])
	}
	if code := httpStatus(t, w.url+"/readyz"); code != http.StatusOK {
		t.Errorf("worker /readyz beside serve = %d; want 200", code)
	}
}

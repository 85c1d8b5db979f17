package main

// Several nodes on one PostgreSQL job database and one S3 store, run as the built binary: an
// API-only node, a serve node and a worker node; a node killed mid-job; a store that stops
// answering. Every wait is for an event (a job state, a request reaching the store), bounded
// only as a waitGuard against a test that would otherwise hang.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/store"
	"github.com/ptsafe/converter/internal/testkit"
)

// waitGuard bounds every wait of these tests: far beyond what any step takes, it only ends a test
// that would otherwise hang.
const waitGuard = 5 * time.Minute

// s3Proxy stands between one node and versitygw. It forwards every request, Host header
// included (the client signed it), except those its hold takes; closing it leaves a port that
// refuses connections, as a store that went down.
type s3Proxy struct {
	name string
	srv  *httptest.Server
	hold *outputHold // nil: forward everything
}

func newS3Proxy(t *testing.T, target *testkit.S3Server, name string, hold *outputHold) *s3Proxy {
	t.Helper()
	to, err := url.Parse(target.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(to)
		r.Out.Host = r.In.Host
	}}
	p := &s3Proxy{name: name, hold: hold}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.hold != nil && p.hold.take(p.name, r) {
			// Read the part, so that the server watches the connection and ends the request
			// when the node dies; it never reaches the store.
			_, _ = io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// env is target's environment with the proxy as the endpoint.
func (p *s3Proxy) env(target *testkit.S3Server) []string {
	return append(target.Env(), "AWS_ENDPOINT_URL="+p.srv.URL)
}

// outputHold holds the output uploads of the first node that sends a large one (a PutObject
// or a part of at least heldSize bytes): that node is then mid-job, whatever the machine's
// speed. Smaller outputs, manifests and inputs pass.
type outputHold struct {
	mu    sync.Mutex
	node  string
	first chan heldUpload // receives the first request held
}

type heldUpload struct{ node, path string }

// heldSize is the smallest output request outputHold holds: the large job's output is 40 MiB,
// the others' 1 MiB.
const heldSize = 8 << 20

func (h *outputHold) take(node string, r *http.Request) bool {
	if r.Method != http.MethodPut || r.ContentLength < heldSize || !strings.HasSuffix(r.URL.Path, "/output.safetensors") {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.node == "" {
		h.node = node
		h.first <- heldUpload{node, r.URL.Path}
	}
	return h.node == node
}

// postJob uploads a checkpoint through the node at base and returns the accepted job's id.
func postJob(t *testing.T, base string, body []byte) string {
	t.Helper()
	code, j, err := post(base, body, false)
	if err != nil || code != http.StatusAccepted || j.ID == "" {
		t.Fatalf("POST %s/v1/jobs = %d %+v, %v; want 202", base, code, j, err)
	}
	return j.ID
}

// waitFinished polls a job through the node at base until it is finished.
func waitFinished(t *testing.T, base, id string) faultJob {
	t.Helper()
	deadline := time.Now().Add(waitGuard)
	var j faultJob
	for time.Now().Before(deadline) {
		getJSON(t, base+"/v1/jobs/"+id, &j)
		if j.State == "succeeded" || j.State == "failed" || j.State == "canceled" {
			return j
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("job %s never finished: %+v", id, j)
	return j
}

// logsOf stops the nodes and returns their logs, for a failure message.
func logsOf(nodes map[string]*node) string {
	var b strings.Builder
	for name, n := range nodes {
		n.cmd.Process.Kill()
		<-n.done
		b.WriteString("--- node " + name + "\n" + n.logs.String())
	}
	return b.String()
}

// sha256Hex is the SHA-256 of b in hex.
func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Three nodes on one database and one store: A takes uploads and works none (--workers 0), B
// serves and works, C only works. Jobs uploaded through A are downloaded through B with the
// bytes a direct conversion gives. The node that takes a large job is killed (SIGKILL) while
// it uploads the output, which the store never receives; the other node finishes the job
// after the rescue delay, with one attempt counted. Then every job ever accepted has
// succeeded with the direct conversion's digest, each job's objects are exactly its output
// and manifest, that output's bytes have the recorded digest, and no multipart upload is left.
func TestThreeNodes(t *testing.T) {
	bin := buildConverter(t)
	db := testkit.StartPostgres(t)
	s3srv := startS3(t)
	bucket := s3srv.srv.Bucket(t)
	storeLoc := "s3://" + bucket + "/jobs"
	small := makeCheckpoints(t, 3, 1<<20)
	// An output the hold takes (see heldSize).
	big := makeCheckpoints(t, 1, 40<<20)[0]

	hold := &outputHold{first: make(chan heldUpload, 1)}
	shared := []string{"--db", db, "--store", storeLoc, "--rescue-delay", "1s"}
	a := startNode(t, bin, s3srv.srv.Env(), append([]string{"serve", "--addr", "127.0.0.1:0", "--data", t.TempDir(), "--workers", "0"}, shared...)...)
	b := startNode(t, bin, newS3Proxy(t, s3srv.srv, "b", hold).env(s3srv.srv), append([]string{"serve", "--addr", "127.0.0.1:0", "--data", t.TempDir()}, shared...)...)
	c := startNode(t, bin, newS3Proxy(t, s3srv.srv, "c", hold).env(s3srv.srv), append([]string{"worker", "--health-addr", "127.0.0.1:0", "--data", t.TempDir()}, shared...)...)
	nodes := map[string]*node{"a": a, "b": b, "c": c}

	want := map[string]string{} // job id -> the output digest of a direct conversion
	for _, cp := range small {
		want[postJob(t, a.url, cp.data)] = cp.outSHA256
	}
	for id, sum := range want {
		if j := waitFinished(t, b.url, id); j.State != "succeeded" {
			t.Fatalf("job %s = %s %+v; want succeeded\n%s", id, j.State, j.Error, logsOf(nodes))
		}
		if got := sha256Hex(httpGet(t, b.url+"/v1/jobs/"+id+"/output", "")); got != sum {
			t.Errorf("output of %s uploaded through A, downloaded through B: sha-256 %s; want %s (a direct conversion's)", id, got, sum)
		}
	}

	bigID := postJob(t, a.url, big.data)
	want[bigID] = big.outSHA256
	var held heldUpload
	select {
	case held = <-hold.first:
	case <-time.After(waitGuard):
		t.Fatalf("no node uploaded the large job's output\n%s", logsOf(nodes))
	}
	if !strings.Contains(held.path, bigID) {
		t.Fatalf("held the output of %s; want the large job %s's", held.path, bigID)
	}
	victim := nodes[held.node]
	victim.cmd.Process.Kill()
	<-victim.done
	killed := time.Now()
	for _, cp := range small[:2] { // taken while a node is dead
		want[postJob(t, a.url, cp.data)] = cp.outSHA256
	}

	for id, sum := range want {
		j := waitFinished(t, a.url, id)
		if j.State != "succeeded" || j.Output == nil || j.Output.SHA256 != sum {
			t.Errorf("job %s = %s %+v; want succeeded with the direct conversion's sha-256 %s\n%s", id, j.State, j.Error, sum, logsOf(nodes))
			return
		}
		if id == bigID {
			t.Logf("node %s killed mid-upload; its job was seen finished by another node %v later (--rescue-delay 1s, then the conversion again)", held.node, time.Since(killed).Round(time.Millisecond))
			if j.Attempts != 1 {
				t.Errorf("the killed node's job took %d attempts; want 1: a node's death is not the job's", j.Attempts)
			}
		}
	}

	// What the store holds: for each job its output and manifest, once.
	tree := s3srv.tree(t, storeLoc)
	objects := map[string][]string{}
	err := tree.Walk(t.Context(), func(o store.Object, err error) error {
		id, name, _ := strings.Cut(o.Path, "/")
		objects[id] = append(objects[id], name)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for id, names := range objects {
		if _, ok := want[id]; !ok || !slices.Equal(names, []string{"manifest.json", "output.safetensors"}) {
			t.Errorf("objects under jobs/%s/: %q; want a job's output and manifest", id, names)
		}
	}
	if len(objects) != len(want) {
		t.Errorf("the store holds the objects of %d jobs; want %d", len(objects), len(want))
	}
	r, err := tree.Open(t.Context(), bigID+"/output.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	_, err = io.Copy(h, r)
	r.Close()
	if got := hex.EncodeToString(h.Sum(nil)); err != nil || got != big.outSHA256 {
		t.Errorf("the large job's stored output has sha-256 %s (%v); want the recorded %s", got, err, big.outSHA256)
	}
	if left := s3srv.srv.Uploads(t, bucket); len(left) != 0 {
		t.Errorf("multipart uploads left in the store: %q", left)
	}
}

// readyz is a node's /readyz answer.
func readyz(t *testing.T, base string) (int, string) {
	t.Helper()
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p struct{ Detail string }
	if resp.StatusCode != http.StatusOK {
		if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
			t.Errorf("/readyz %d as %q; want application/problem+json", resp.StatusCode, ct)
		}
		if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
			t.Errorf("/readyz problem: %v", err)
		}
	}
	return resp.StatusCode, p.Detail
}

// A serve node and a worker node whose S3 store goes down turn unready, saying it is the
// store, and stay alive (/healthz 200); an orchestrator then routes around them rather than
// restart them.
func TestReadyzChecksTheStore(t *testing.T) {
	bin := buildConverter(t)
	db := testkit.StartPostgres(t)
	s3srv := startS3(t)
	storeLoc := "s3://" + s3srv.srv.Bucket(t) + "/jobs"
	proxy := newS3Proxy(t, s3srv.srv, "", nil)
	shared := []string{"--db", db, "--store", storeLoc, "--data"}
	nodes := map[string]*node{
		"serve":  startNode(t, bin, proxy.env(s3srv.srv), append([]string{"serve", "--addr", "127.0.0.1:0"}, append(shared, t.TempDir())...)...),
		"worker": startNode(t, bin, proxy.env(s3srv.srv), append([]string{"worker", "--health-addr", "127.0.0.1:0"}, append(shared, t.TempDir())...)...),
	}
	for name, n := range nodes {
		if code, detail := readyz(t, n.url); code != http.StatusOK {
			t.Fatalf("%s /readyz with the store up = %d %s; want 200", name, code, detail)
		}
	}
	proxy.srv.Close()
	for name, n := range nodes {
		deadline := time.Now().Add(waitGuard)
		code, detail := readyz(t, n.url)
		for code == http.StatusOK && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond) // the answer of the store is cached for a second
			code, detail = readyz(t, n.url)
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(detail, "job store "+storeLoc) {
			t.Errorf("%s /readyz with the store down = %d %q; want 503 naming the job store", name, code, detail)
		}
		if code := httpStatus(t, n.url+"/healthz"); code != http.StatusOK {
			t.Errorf("%s /healthz with the store down = %d; want 200: the process is alive", name, code)
		}
	}
}

// serve --workers 0 is refused at start unless other nodes can work its jobs: on SQLite it is
// the only node, and with its uploads in its data directory no other node can read them.
func TestServeAPIOnlyNeedsSharedStores(t *testing.T) {
	bin := buildConverter(t)
	for _, extra := range [][]string{nil, {"--store", "s3://bucket/jobs"}} {
		ctx, cancel := context.WithTimeout(t.Context(), waitGuard) // a server that started would never end
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"serve", "--addr", "127.0.0.1:0", "--data", t.TempDir(), "--workers", "0"}, extra...)...)
		out, err := cmd.CombinedOutput()
		if err == nil || !bytes.Contains(out, []byte("--workers 0 without --db postgres://... and --store s3://...")) || !bytes.Contains(out, []byte("no one would ever work its jobs")) {
			t.Errorf("serve --workers 0 %q = %v, %s; want refused, saying why", extra, err, out)
		}
	}
}

package main

// Fault injection against the real binary: SIGKILL at random points of a stream of uploads and
// conversions, SIGTERM during a long conversion, a data directory on a full file system, a
// corrupted stored output. Every wait is an event (a log line, a job state) polled with a
// generous bound; nothing asserts on durations.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
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

	"golang.org/x/sys/unix"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/synth"
)

// proc is one `converter serve` process whose JSON log lines the test can wait for.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	url  string
	mu   sync.Mutex
	logs []string
	done chan struct{} // closed when stderr ends (the process exited)
}

func startProc(t *testing.T, bin, data string, flags ...string) *proc {
	t.Helper()
	p := &proc{t: t, done: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"serve", "--addr", "127.0.0.1:0", "--data", data}, flags...)...)
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.logs = append(p.logs, sc.Text())
			p.mu.Unlock()
		}
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		<-p.done
		t.Fatalf("server printed no address: %v\n%s", err, strings.Join(p.lines(), "\n"))
	}
	_, url, ok := strings.Cut(strings.TrimSpace(line), "listening on ")
	if !ok {
		t.Fatalf("unexpected first line %q", line)
	}
	p.url = url
	return p
}

func (p *proc) lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.logs)
}

// logIndex is the index of the first log line containing every part, or -1.
func (p *proc) logIndex(parts ...string) int {
	return slices.IndexFunc(p.lines(), func(l string) bool {
		for _, part := range parts {
			if !strings.Contains(l, part) {
				return false
			}
		}
		return true
	})
}

// waitLog waits, a bounded time, for a log line containing every part.
func (p *proc) waitLog(parts ...string) {
	p.t.Helper()
	for range 2400 {
		if p.logIndex(parts...) >= 0 {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	p.t.Fatalf("no log line with %q\n%s", parts, strings.Join(p.lines(), "\n"))
}

// signal sends sig and waits for the process to exit, returning its exit code.
func (p *proc) signal(sig syscall.Signal) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		<-p.done
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		return 0
	case <-time.After(2 * time.Minute):
		p.t.Fatalf("serve did not exit after %v", sig)
		return -1
	}
}

// faultJob is the Job schema as these tests read it.
type faultJob struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Attempts int    `json:"attempts"`
	Output   *struct {
		SHA256 string `json:"sha256"`
	} `json:"output"`
	Error *struct{ Type, Detail string } `json:"error"`
}

func (p *proc) get(path string, v any) int {
	p.t.Helper()
	resp, err := http.Get(p.url + path)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		json.NewDecoder(resp.Body).Decode(v)
	}
	return resp.StatusCode
}

// post uploads body; chunked sends it without a Content-Length.
func post(url string, body []byte, chunked bool) (int, faultJob, error) {
	var r io.Reader = bytes.NewReader(body)
	if chunked {
		r = struct{ io.Reader }{r}
	}
	resp, err := http.Post(url+"/v1/jobs?filename=pytorch_model.bin", "application/octet-stream", r)
	if err != nil {
		return 0, faultJob{}, err
	}
	defer resp.Body.Close()
	var j faultJob
	json.NewDecoder(resp.Body).Decode(&j)
	return resp.StatusCode, j, nil
}

func (p *proc) wait(id string) faultJob {
	p.t.Helper()
	var j faultJob
	for range 2400 {
		p.get("/v1/jobs/"+id, &j)
		if j.State == "succeeded" || j.State == "failed" || j.State == "canceled" {
			return j
		}
		time.Sleep(25 * time.Millisecond)
	}
	p.t.Fatalf("job %s never finished: %+v", id, j)
	return j
}

// checkpoint is a synthetic checkpoint and the digest the CLI's conversion gives it.
type checkpoint struct {
	data      []byte
	outSHA256 string
}

func makeCheckpoints(t *testing.T, n int, size int64) []checkpoint {
	t.Helper()
	dir := t.TempDir()
	out := make([]checkpoint, n)
	for i := range out {
		src := filepath.Join(dir, fmt.Sprintf("c%d.pt", i))
		if err := synth.WriteFile(src, synth.Spec{Tensors: 4 + i, TotalBytes: size, Seed: uint64(i + 1)}); err != nil {
			t.Fatal(err)
		}
		m, err := convert.File(t.Context(), src, filepath.Join(dir, fmt.Sprintf("c%d.safetensors", i)), convert.Options{})
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = checkpoint{data: data, outSHA256: m.Output.SHA256}
	}
	return out
}

// checkNoStrays fails unless the data directory holds exactly the files of its jobs: no partial
// upload, and for each succeeded job only its output and manifest.
func checkNoStrays(t *testing.T, data string, jobs map[string]faultJob) {
	t.Helper()
	if tmp, _ := os.ReadDir(filepath.Join(data, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp/ holds %d files after the restart", len(tmp))
	}
	dirs, err := os.ReadDir(filepath.Join(data, "jobs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if _, ok := jobs[d.Name()]; !ok {
			t.Errorf("jobs/%s belongs to no job", d.Name())
			continue
		}
		files, _ := os.ReadDir(filepath.Join(data, "jobs", d.Name()))
		var names []string
		for _, f := range files {
			names = append(names, f.Name())
		}
		if want := []string{"manifest.json", "output.safetensors"}; !slices.Equal(names, want) {
			t.Errorf("jobs/%s holds %v, want %v", d.Name(), names, want)
		}
	}
}

// listAll returns every job the open server's tenant has.
func (p *proc) listAll() map[string]faultJob {
	p.t.Helper()
	var page struct {
		Jobs []faultJob `json:"jobs"`
	}
	if code := p.get("/v1/jobs?page_size=1000", &page); code != http.StatusOK {
		p.t.Fatalf("list jobs = %d", code)
	}
	all := map[string]faultJob{}
	for _, j := range page.Jobs {
		all[j.ID] = j
	}
	return all
}

// Ten SIGKILLs at random points of a stream of uploads and conversions lose, duplicate and
// corrupt nothing: after the last restart every job that got a 202 succeeds with the output
// digest the CLI gives its checkpoint, and no file is left that no job owns.
func TestFaultsSIGKILLDuringUploadsAndConversions(t *testing.T) {
	bin := buildConverter(t)
	data := filepath.Join(t.TempDir(), "data")
	cps := makeCheckpoints(t, 4, 6<<20)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("kill points from seed %d", seed)

	accepted := map[string]int{} // job id -> checkpoint index
	var mu sync.Mutex
	for kill := range 10 {
		p := startProc(t, bin, data, "--workers", "2")
		ctx, stop := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		for c := range 2 {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					idx := (kill + c + i) % len(cps)
					code, j, err := post(p.url, cps[idx].data, (i+c)%2 == 0)
					if err != nil {
						return // the server died mid-request: no 202, no promise
					}
					if code == http.StatusAccepted {
						mu.Lock()
						accepted[j.ID] = idx
						mu.Unlock()
					}
				}
			})
		}
		// A random point: some uploads accepted, conversions under way or not.
		if rng.IntN(2) == 0 {
			p.waitLog("conversion started")
		}
		time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
		stop()
		wg.Wait()
	}
	if len(accepted) == 0 {
		t.Fatal("no upload was accepted before the kills")
	}

	p := startProc(t, bin, data, "--workers", "2")
	all := p.listAll()
	for id := range accepted {
		if _, ok := all[id]; !ok {
			t.Errorf("job %s got a 202 but is gone", id)
		}
	}
	for id := range all {
		j := p.wait(id)
		all[id] = j
		if j.State != "succeeded" || j.Output == nil {
			t.Errorf("job %s = %s %+v, want succeeded", id, j.State, j.Error)
			continue
		}
		if idx, ok := accepted[id]; ok && j.Output.SHA256 != cps[idx].outSHA256 {
			t.Errorf("job %s output sha256 %s, want %s (the CLI's)", id, j.Output.SHA256, cps[idx].outSHA256)
		}
		if j.Attempts != 1 {
			t.Errorf("job %s took %d attempts, want 1: crashes of the server are not the job's", id, j.Attempts)
		}
	}
	for id, idx := range accepted {
		resp, err := http.Get(p.url + "/v1/jobs/" + id + "/output")
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		io.Copy(h, resp.Body)
		resp.Body.Close()
		if got := hex.EncodeToString(h.Sum(nil)); resp.StatusCode != http.StatusOK || got != cps[idx].outSHA256 {
			t.Errorf("download of %s = %d sha256 %s, want 200 %s", id, resp.StatusCode, got, cps[idx].outSHA256)
		}
	}
	checkNoStrays(t, data, all)
	t.Logf("%d jobs accepted with 202 across 10 kills, %d jobs in all", len(accepted), len(all))
	if code := p.signal(syscall.SIGTERM); code != 0 {
		t.Errorf("exit status after SIGTERM = %d, want 0", code)
	}
}

// SIGTERM during a conversion lets it finish (--drain-timeout is long) and the process exits 0;
// with a drain timeout too short for it, the conversion is canceled and runs again after the
// restart without losing an attempt.
func TestFaultsSIGTERMDrain(t *testing.T) {
	bin := buildConverter(t)
	cp := makeCheckpoints(t, 1, 96<<20)[0]

	t.Run("drained", func(t *testing.T) {
		p := startProc(t, bin, filepath.Join(t.TempDir(), "data"), "--drain-timeout", "5m")
		_, j, err := post(p.url, cp.data, false)
		if err != nil || j.ID == "" {
			t.Fatalf("upload: %v", err)
		}
		p.waitLog("conversion started", j.ID)
		if code := p.signal(syscall.SIGTERM); code != 0 {
			t.Errorf("exit status = %d, want 0 (everything drained)", code)
		}
		shut, done := p.logIndex("shutting down"), p.logIndex("conversion succeeded", j.ID)
		if done >= 0 && done < shut {
			t.Skip("the conversion finished before the signal arrived; nothing was left to drain")
		}
		if shut < 0 || done < 0 {
			t.Errorf("the conversion did not finish after SIGTERM (shutting down at line %d, succeeded at %d)\n%s", shut, done, strings.Join(p.lines(), "\n"))
		}
	})

	t.Run("timed out", func(t *testing.T) {
		data := filepath.Join(t.TempDir(), "data")
		p := startProc(t, bin, data, "--drain-timeout", "1ns")
		_, j, err := post(p.url, cp.data, false)
		if err != nil || j.ID == "" {
			t.Fatalf("upload: %v", err)
		}
		p.waitLog("conversion started", j.ID)
		if code := p.signal(syscall.SIGTERM); code == 0 && p.logIndex("conversion succeeded", j.ID) < 0 {
			t.Errorf("exit status 0 although a conversion was canceled at the drain deadline")
		}
		p = startProc(t, bin, data)
		if j = p.wait(j.ID); j.State != "succeeded" || j.Output.SHA256 != cp.outSHA256 || j.Attempts != 1 {
			t.Errorf("after restart job = %s after %d attempts %+v, want succeeded after 1 with the CLI's digest", j.State, j.Attempts, j.Error)
		}
	})
}

// A byte flipped in a stored output is caught before any answer claims the file: 500, the job
// failed with an internal error, and no ETag.
func TestFaultsFlippedByteInOutput(t *testing.T) {
	bin := buildConverter(t)
	data := filepath.Join(t.TempDir(), "data")
	cp := makeCheckpoints(t, 1, 1<<20)[0]
	p := startProc(t, bin, data)
	_, j, err := post(p.url, cp.data, false)
	if err != nil {
		t.Fatal(err)
	}
	p.wait(j.ID)
	path := filepath.Join(data, "jobs", j.ID, "output.safetensors")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, 4096)
	f.WriteAt([]byte{b[0] ^ 0x80}, 4096)
	f.Close()
	resp, err := http.Get(p.url + "/v1/jobs/" + j.ID + "/output")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError || resp.Header.Get("ETag") != "" || !bytes.Contains(body, []byte("output-lost")) {
		t.Errorf("download of a corrupted output = %d ETag %q\n%.300s", resp.StatusCode, resp.Header.Get("ETag"), body)
	}
	p.waitLog("job output lost", j.ID)
	if j = p.wait(j.ID); j.State != "failed" || j.Error == nil || j.Error.Type != "internal" {
		t.Errorf("job after corruption = %s %+v, want failed internal", j.State, j.Error)
	}
}

// mountTmpfs mounts a small tmpfs, skipping where mounting is not permitted (CI runs as root
// and must not skip).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		if os.Getuid() == 0 {
			t.Fatalf("mount tmpfs as root: %v", err)
		}
		t.Skipf("mounting a tmpfs is not permitted here (%v); run as root to test a full disk", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// fill writes a file in dir until only leave bytes remain free (0: until ENOSPC).
func fill(t *testing.T, path string, leave int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(filepath.Dir(path), &st); err != nil {
			t.Fatal(err)
		}
		free := int64(st.Bavail) * st.Bsize
		if free <= leave {
			return
		}
		if _, err := f.Write(chunk[:min(int64(len(chunk)), free-leave)]); err != nil {
			if errors.Is(err, unix.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}

// A full data directory: a body that runs into ENOSPC is 507 and leaves nothing; the server
// starts on a full disk, says why it is not ready, serves reads, and deletes a job with no byte
// free; once there is room again it is ready.
func TestFaultsDiskFull(t *testing.T) {
	bin := buildConverter(t)
	mnt := mountTmpfs(t, "48m")
	data := filepath.Join(mnt, "data")
	cp := makeCheckpoints(t, 1, 1<<20)[0]

	p := startProc(t, bin, data, "--min-free-bytes", "4096")
	_, j, err := post(p.url, cp.data, false)
	if err != nil {
		t.Fatal(err)
	}
	if j = p.wait(j.ID); j.State != "succeeded" {
		t.Fatalf("job = %s %+v", j.State, j.Error)
	}
	filler := filepath.Join(mnt, "filler")
	fill(t, filler, 256<<10)
	big := bytes.Repeat([]byte("x"), 4<<20)
	code, _, err := post(p.url, big, true)
	if err != nil || code != http.StatusInsufficientStorage {
		t.Errorf("streamed upload into ENOSPC = %d (%v), want 507", code, err)
	}
	if tmp, _ := os.ReadDir(filepath.Join(data, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp/ holds %d files after the 507", len(tmp))
	}
	if code := p.signal(syscall.SIGTERM); code != 0 {
		t.Errorf("exit status = %d, want 0", code)
	}

	fill(t, filler, 0)
	p = startProc(t, bin, data, "--min-free-bytes", "4096")
	var prob struct{ Detail string }
	if code := p.get("/readyz", &prob); code != http.StatusServiceUnavailable || !strings.Contains(prob.Detail, "free") {
		t.Errorf("/readyz on a full disk = %d %q, want 503 naming the free space", code, prob.Detail)
	}
	if code := p.get("/v1/jobs/"+j.ID, nil); code != http.StatusOK {
		t.Errorf("GET job on a full disk = %d, want 200", code)
	}
	if code, _, _ := post(p.url, cp.data, true); code != http.StatusInsufficientStorage {
		t.Errorf("upload on a full disk = %d, want 507", code)
	}
	req, _ := http.NewRequest("DELETE", p.url+"/v1/jobs/"+j.ID, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("DELETE on a full disk = %d, want 204", resp.StatusCode)
	}
	os.Remove(filler)
	if code := p.get("/readyz", nil); code != http.StatusOK {
		t.Errorf("/readyz with room again = %d, want 200", code)
	}
	if code := p.signal(syscall.SIGTERM); code != 0 {
		t.Errorf("exit status = %d, want 0", code)
	}
}

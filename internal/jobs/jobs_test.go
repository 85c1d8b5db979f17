package jobs_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/limits"
)

// fakeOutput writes a small output file the way a converter would and describes it.
func fakeOutput(dst string) (*convert.Manifest, error) {
	data := []byte("converted")
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	return &convert.Manifest{Output: &convert.Output{Path: dst, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}}, nil
}

// converterFunc is a test's converter written as a function.
type converterFunc func(ctx context.Context, src, dst string, opts convert.Options) (*convert.Manifest, error)

func (f converterFunc) Convert(ctx context.Context, src, dst string, opts convert.Options) (*convert.Manifest, error) {
	return f(ctx, src, dst, opts)
}

// Scan scans in process: the tests' conversions are fakes, their scans real.
func (f converterFunc) Scan(ctx context.Context, src string, opts convert.Options) (*convert.Manifest, error) {
	return convert.Scan(ctx, src, opts)
}

// succeeding is a converter whose every conversion succeeds with fakeOutput.
var succeeding = converterFunc(func(_ context.Context, _, dst string, _ convert.Options) (*convert.Manifest, error) {
	return fakeOutput(dst)
})

func open(t *testing.T, dir string, conv jobs.Converter, retention time.Duration) *jobs.Service {
	t.Helper()
	return openConfig(t, jobs.Config{Dir: dir, Converter: conv, Retention: retention})
}

// openConfig opens and starts a service, stopped and closed when the test ends.
func openConfig(t *testing.T, cfg jobs.Config) *jobs.Service {
	t.Helper()
	s, err := jobs.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Stop(ctx)
		s.Close()
	})
	return s
}

func submit(t *testing.T, s *jobs.Service, body string) jobs.Job {
	t.Helper()
	up, err := s.Stage(t.Context(), strings.NewReader(body), int64(len(body)))
	if err != nil {
		t.Fatalf("Stage: %v", err)
	}
	j, created, err := s.Submit(t.Context(), jobs.SubmitParams{Tenant: "t", Filename: "m.pt", Upload: up})
	if err != nil || !created {
		t.Fatalf("Submit = %v, created %v", err, created)
	}
	return j
}

// waitFor polls a job a bounded number of times until cond holds.
func waitFor(t *testing.T, s *jobs.Service, id string, what string, cond func(jobs.Job, error) bool) jobs.Job {
	t.Helper()
	for range 800 {
		j, err := s.Get(t.Context(), "t", id)
		if cond(j, err) {
			return j
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("job %s: never %s", id, what)
	return jobs.Job{}
}

func terminal(j jobs.Job, err error) bool { return err == nil && j.State.Terminal() }

// Faults about the input fail the job at its first attempt; only internal errors are retried.
func TestFailureClassification(t *testing.T) {
	cases := []struct {
		name     string
		err      error
		wantType fault.Kind
		detail   string
	}{
		{"unsafe global", fault.New(fault.Unsafe, "archive/data.pkl", "global os.system is known-dangerous"), fault.Unsafe, "os.system"},
		{"malformed", fault.At(fault.Malformed, "archive/data.pkl", 12, "truncated"), fault.Malformed, "truncated"},
		{"unsupported", fault.New(fault.Unsupported, "", "TorchScript archives"), fault.Unsupported, "TorchScript"},
		{"limit", fault.New(fault.Limit, "", "more than 5 tensors"), fault.Limit, "5 tensors"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var calls atomic.Int32
			s := open(t, t.TempDir(), converterFunc(func(ctx context.Context, src, dst string, _ convert.Options) (*convert.Manifest, error) {
				calls.Add(1)
				return nil, c.err
			}), 0)
			j := waitFor(t, s, submit(t, s, "x").ID, "finished", terminal)
			if j.State != jobs.StateFailed || j.Error == nil || j.Error.Type != c.wantType || !strings.Contains(j.Error.Detail, c.detail) {
				t.Errorf("job = %+v %+v, want failed %s mentioning %q", j, j.Error, c.wantType, c.detail)
			}
			if n := calls.Load(); n != 1 || j.Attempts != 1 {
				t.Errorf("converter called %d times, attempts %d; want 1", n, j.Attempts)
			}
		})
	}
}

func TestInternalErrorIsRetried(t *testing.T) {
	var calls atomic.Int32
	s := open(t, t.TempDir(), converterFunc(func(ctx context.Context, src, dst string, _ convert.Options) (*convert.Manifest, error) {
		if calls.Add(1) == 1 {
			return nil, errors.New("disk hiccup")
		}
		return fakeOutput(dst)
	}), 0)
	j := waitFor(t, s, submit(t, s, "x").ID, "finished", terminal)
	if j.State != jobs.StateSucceeded || j.Attempts != 2 {
		t.Errorf("job = %s after %d attempts, want succeeded after 2", j.State, j.Attempts)
	}
}

func TestInternalErrorGivesUp(t *testing.T) {
	var calls atomic.Int32
	s := open(t, t.TempDir(), converterFunc(func(ctx context.Context, src, dst string, _ convert.Options) (*convert.Manifest, error) {
		calls.Add(1)
		return nil, errors.New("disk broken")
	}), 0)
	j := waitFor(t, s, submit(t, s, "x").ID, "finished", terminal)
	if j.State != jobs.StateFailed || j.Error.Type != fault.Internal || calls.Load() != 3 {
		t.Errorf("job = %s %+v after %d calls, want failed internal after 3", j.State, j.Error, calls.Load())
	}
}

// TestErrorDetailNamesNoServerPath runs the real in-process converter on a job whose input it
// cannot open and on one it judges malformed: the details name no part of the data directory,
// since the converter's errors carry file names, not paths.
func TestErrorDetailNamesNoServerPath(t *testing.T) {
	cases := map[string]func(src string){
		"input gone": func(src string) { os.Remove(src) },
		"malformed":  func(string) {},
	}
	for name, before := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, converterFunc(func(ctx context.Context, src, dst string, opts convert.Options) (*convert.Manifest, error) {
				before(src)
				return convert.File(ctx, src, dst, opts)
			}), 0)
			j := waitFor(t, s, submit(t, s, "not a checkpoint").ID, "finished", terminal)
			if j.State != jobs.StateFailed || j.Error == nil {
				t.Fatalf("job = %+v, want failed", j)
			}
			for _, part := range strings.Split(dir, string(os.PathSeparator)) {
				if len(part) > 3 && strings.Contains(j.Error.Detail, part) {
					t.Errorf("detail %q names %q, part of the data directory %s", j.Error.Detail, part, dir)
				}
			}
		})
	}
}

func TestRetentionExpiresFinishedJobs(t *testing.T) {
	s := open(t, t.TempDir(), succeeding, time.Second)
	id := submit(t, s, "x").ID
	j := waitFor(t, s, id, "finished", terminal)
	if j.ExpiresAt.IsZero() || !j.ExpiresAt.After(j.FinishedAt) {
		t.Errorf("expires_at = %v, finished_at %v", j.ExpiresAt, j.FinishedAt)
	}
	waitFor(t, s, id, "expired", func(_ jobs.Job, err error) bool { return errors.Is(err, jobs.ErrNotFound) })
}

func TestDataDirIsExclusive(t *testing.T) {
	dir := t.TempDir()
	open(t, dir, succeeding, 0)
	if _, err := jobs.Open(t.Context(), jobs.Config{Dir: dir, Converter: succeeding}); err == nil {
		t.Fatal("second Open of the same data directory succeeded")
	}
}

// There is no default converter: an in-process one would let a fatal error in a conversion
// take the server down, so the caller must choose.
func TestOpenRequiresConverter(t *testing.T) {
	if _, err := jobs.Open(t.Context(), jobs.Config{Dir: t.TempDir()}); err == nil {
		t.Fatal("Open without a converter succeeded")
	}
}

// Each conversion gets the configured limits, the free-space reserve to check before writing,
// and the job's selection and file name.
func TestConverterGetsConfiguredOptions(t *testing.T) {
	got := make(chan convert.Options, 1)
	lim := limits.Limits{MaxTensors: 7, MaxOutputBytes: 1 << 20}
	s := openConfig(t, jobs.Config{Dir: t.TempDir(), Limits: lim, MinFreeBytes: 12345, Converter: converterFunc(
		func(_ context.Context, _, dst string, opts convert.Options) (*convert.Manifest, error) {
			got <- opts
			return fakeOutput(dst)
		})})
	up, err := s.Stage(t.Context(), strings.NewReader("x"), 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Submit(t.Context(), jobs.SubmitParams{Tenant: "t", Filename: "m.pt", Select: "state_dict", Upload: up}); err != nil {
		t.Fatal(err)
	}
	opts := <-got
	if want := lim.OrDefault(); opts.Limits != want {
		t.Errorf("Limits = %+v, want %+v", opts.Limits, want)
	}
	if opts.MinFreeBytes != 12345 || opts.Select != "state_dict" || opts.SourceName != "m.pt" {
		t.Errorf("MinFreeBytes %d, Select %q, SourceName %q; want 12345, state_dict, m.pt", opts.MinFreeBytes, opts.Select, opts.SourceName)
	}
}

// The helper process runs a service whose conversions never end, submits a job (or, with
// JOBS_TEST_HELPER_BATCH, a batch of that directory), reports when a conversion started, and
// waits to be killed.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv("JOBS_TEST_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process for TestSIGKILLMidJob")
	}
	s, err := jobs.Open(context.Background(), jobs.Config{Dir: dir, Database: os.Getenv("JOBS_TEST_HELPER_DB"), Converter: converterFunc(
		func(ctx context.Context, src, dst string, _ convert.Options) (*convert.Manifest, error) {
			fmt.Println("CONVERTING")
			<-ctx.Done()
			return nil, ctx.Err()
		})})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	if err := s.Start(context.Background()); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	if src := os.Getenv("JOBS_TEST_HELPER_BATCH"); src != "" {
		b, err := s.SubmitBatch(context.Background(), jobs.BatchParams{Tenant: "t", Source: src, Destination: src + "-dst"})
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Println("JOB", b.ID)
		select {}
	}
	up, _ := s.Stage(context.Background(), strings.NewReader("checkpoint"), -1)
	j, _, err := s.Submit(context.Background(), jobs.SubmitParams{Tenant: "t", Filename: "m.pt", Upload: up})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("JOB", j.ID)
	select {}
}

// A process killed with SIGKILL while converting loses nothing: on restart the running job is
// queued again at once (not after River's stuck-job timeout) and completes, and the attempt the
// crash interrupted is not counted against the job.
func TestSIGKILLMidJob(t *testing.T) {
	forEachBackend(t, testSIGKILLMidJob)
}

func testSIGKILLMidJob(t *testing.T, database string) {
	dir := t.TempDir()
	helper, id := startHelper(t, dir, database)
	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	helper.Wait()

	// A RescueDelay as short as this only matters on PostgreSQL, where the database may not
	// yet have seen the killed node's connection end when the node starts again.
	s := openConfig(t, jobs.Config{Dir: dir, Database: database, Converter: succeeding, RescueDelay: time.Second})
	j := waitFor(t, s, id, "finished", terminal)
	if j.State != jobs.StateSucceeded {
		t.Fatalf("after restart job = %s %+v, want succeeded", j.State, j.Error)
	}
	if j.Attempts != 1 {
		t.Errorf("attempts = %d, want 1 (the one the crash interrupted does not count)", j.Attempts)
	}
}

// startHelper starts TestHelperProcess on the data directory and database, with the extra
// environment, and returns it once it is converting the job (or batch) whose id it returns.
func startHelper(t *testing.T, dir, database string, env ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), append(env, "JOBS_TEST_HELPER_DIR="+dir, "JOBS_TEST_HELPER_DB="+database)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var id string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if after, ok := strings.CutPrefix(line, "JOB "); ok {
			id = after
		}
		if strings.HasPrefix(line, "ERROR") {
			t.Fatal(line)
		}
		if line == "CONVERTING" && id != "" {
			return cmd, id
		}
	}
	t.Fatal("helper never reported a running job")
	return nil, ""
}

// Stop puts a conversion still running at the drain deadline back in the queue without
// counting the attempt; the next start runs it.
func TestStopRequeuesRunningJob(t *testing.T) {
	dir := t.TempDir()
	started := make(chan struct{}, 1)
	s, err := jobs.Open(t.Context(), jobs.Config{Dir: dir, Converter: converterFunc(
		func(ctx context.Context, src, dst string, _ convert.Options) (*convert.Manifest, error) {
			started <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		})})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	id := submit(t, s, "x").ID
	<-started
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := s.Stop(ctx); !errors.Is(err, jobs.ErrDrainTimeout) {
		t.Fatalf("Stop = %v, want ErrDrainTimeout", err)
	}
	if j, err := s.Get(t.Context(), "t", id); err != nil || j.State != jobs.StateQueued || j.Attempts != 0 {
		t.Errorf("after Stop job = %s attempts %d (err %v), want queued with 0 attempts", j.State, j.Attempts, err)
	}
	if _, _, err := s.Submit(t.Context(), jobs.SubmitParams{Tenant: "t"}); !errors.Is(err, jobs.ErrStopping) {
		t.Errorf("Submit after Stop = %v, want ErrStopping", err)
	}
	s.Close()

	s = open(t, dir, succeeding, 0)
	if j := waitFor(t, s, id, "finished", terminal); j.State != jobs.StateSucceeded || j.Attempts != 1 {
		t.Errorf("after restart job = %s after %d attempts, want succeeded after 1", j.State, j.Attempts)
	}
}

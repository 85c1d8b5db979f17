package jobs_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/testkit"
)

// One PostgreSQL cluster serves every test of the package.
func TestMain(m *testing.M) { os.Exit(testkit.PostgresMain(m)) }

// backends are the job databases the service's lifecycle runs on alike: Config.Database for a
// new, empty one.
var backends = []struct {
	name     string
	database func(t *testing.T) string
}{
	{"sqlite", func(*testing.T) string { return "" }},
	{"postgres", func(t *testing.T) string { return testkit.StartPostgres(t) }},
}

// forEachBackend runs f as a subtest on each backend, with the Config.Database of a new
// database.
func forEachBackend(t *testing.T, f func(t *testing.T, database string)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { f(t, b.database(t)) })
	}
}

// blocking is a converter whose conversions report that they started and run until canceled.
func blocking(started chan<- string) converterFunc {
	return func(ctx context.Context, src, _ string, _ convert.Options) (*convert.Manifest, error) {
		started <- src
		<-ctx.Done()
		return nil, ctx.Err()
	}
}

func TestBackendLifecycle(t *testing.T) {
	forEachBackend(t, func(t *testing.T, database string) {
		s := openConfig(t, jobs.Config{Dir: t.TempDir(), Database: database, Converter: converterFunc(
			func(_ context.Context, src, dst string, _ convert.Options) (*convert.Manifest, error) {
				if b, _ := os.ReadFile(src); string(b) == "unsafe" {
					return nil, fault.New(fault.Unsafe, "data.pkl", "global os.system is known-dangerous")
				}
				return fakeOutput(dst)
			})})
		ok := submit(t, s, "fine")
		bad := submit(t, s, "unsafe")
		if j := waitFor(t, s, ok.ID, "finished", terminal); j.State != jobs.StateSucceeded || j.Attempts != 1 || j.OutputSize != int64(len("converted")) {
			t.Errorf("good job = %s after %d attempts, output %d bytes; want succeeded after 1 with 9 bytes", j.State, j.Attempts, j.OutputSize)
		}
		j := waitFor(t, s, bad.ID, "finished", terminal)
		if j.State != jobs.StateFailed || j.Error == nil || j.Error.Type != fault.Unsafe || j.Attempts != 1 {
			t.Errorf("unsafe job = %s %+v after %d attempts, want failed unsafe after 1", j.State, j.Error, j.Attempts)
		}
	})
}

func TestBackendCancel(t *testing.T) {
	forEachBackend(t, func(t *testing.T, database string) {
		started := make(chan string, 1)
		s := openConfig(t, jobs.Config{Dir: t.TempDir(), Database: database, Converter: blocking(started)})
		id := submit(t, s, "x").ID
		<-started
		j, err := s.Cancel(t.Context(), "t", id)
		if err != nil || j.State != jobs.StateCanceled {
			t.Fatalf("Cancel = %s, %v; want canceled", j.State, err)
		}
		if _, err := s.Cancel(t.Context(), "other", id); !errors.Is(err, jobs.ErrNotFound) {
			t.Errorf("another tenant's Cancel = %v, want ErrNotFound", err)
		}
		if j := waitFor(t, s, id, "settled", terminal); j.State != jobs.StateCanceled {
			t.Errorf("after the conversion stopped: %s, want canceled", j.State)
		}
	})
}

// Pages run newest first, each after the last id of the one before, and a state filter
// applies.
func TestBackendList(t *testing.T) {
	forEachBackend(t, func(t *testing.T, database string) {
		s := openConfig(t, jobs.Config{Dir: t.TempDir(), Database: database, Converter: succeeding})
		var ids []string
		for i := range 5 {
			ids = append(ids, submit(t, s, strings.Repeat("x", i+1)).ID)
		}
		for _, id := range ids {
			waitFor(t, s, id, "finished", terminal)
		}
		var got []string
		after := ""
		for page := 0; ; page++ {
			list, more, err := s.List(t.Context(), jobs.ListParams{Tenant: "t", State: jobs.StateSucceeded, PageSize: 2, After: after})
			if err != nil {
				t.Fatal(err)
			}
			for _, j := range list {
				got = append(got, j.ID)
			}
			if !more {
				break
			}
			after = list[len(list)-1].ID
			if page > 5 {
				t.Fatal("pagination never ends")
			}
		}
		if len(got) != len(ids) {
			t.Fatalf("listed %d jobs, want %d", len(got), len(ids))
		}
		for i, id := range got {
			if want := ids[len(ids)-1-i]; id != want {
				t.Errorf("job %d listed is %s, want %s (newest first)", i, id, want)
			}
		}
		if list, _, err := s.List(t.Context(), jobs.ListParams{Tenant: "t", State: jobs.StateQueued, PageSize: 10}); err != nil || len(list) != 0 {
			t.Errorf("queued jobs: %d (%v), want none", len(list), err)
		}
	})
}

func TestBackendIdempotencyKey(t *testing.T) {
	forEachBackend(t, func(t *testing.T, database string) {
		s := openConfig(t, jobs.Config{Dir: t.TempDir(), Database: database, Converter: succeeding})
		try := func(body string) (jobs.Job, bool, error) {
			up, err := s.Stage(t.Context(), strings.NewReader(body), int64(len(body)))
			if err != nil {
				t.Fatal(err)
			}
			return s.Submit(t.Context(), jobs.SubmitParams{Tenant: "t", Filename: "m.pt", IdempotencyKey: "k1", Upload: up})
		}
		first, created, err := try("x")
		if err != nil || !created {
			t.Fatalf("first Submit = %v, created %v", err, created)
		}
		again, created, err := try("x")
		if err != nil || created || again.ID != first.ID {
			t.Errorf("retried Submit = %s created %v (%v), want job %s again", again.ID, created, err, first.ID)
		}
		if _, _, err := try("y"); !errors.Is(err, jobs.ErrIdempotencyMismatch) {
			t.Errorf("Submit of another body with the key = %v, want ErrIdempotencyMismatch", err)
		}
	})
}

func TestBackendExpiry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, database string) {
		s := openConfig(t, jobs.Config{Dir: t.TempDir(), Database: database, Converter: succeeding, Retention: time.Second})
		id := submit(t, s, "x").ID
		waitFor(t, s, id, "finished", terminal)
		waitFor(t, s, id, "expired", func(_ jobs.Job, err error) bool { return errors.Is(err, jobs.ErrNotFound) })
	})
}

// Three nodes starting at the same moment on one new database all open it: the advisory lock
// lets the first migrate and the others find the schema made, once.
func TestPostgresNodesStartTogether(t *testing.T) {
	url := testkit.StartPostgres(t)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() {
			s, err := jobs.Open(t.Context(), jobs.Config{Dir: t.TempDir(), Database: url, Converter: succeeding})
			if errs[i] = err; err == nil {
				s.Close()
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %d: %v", i, err)
		}
	}
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var versions, riverVersions, riverDistinct int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM converter_schema`).Scan(&versions); err != nil || versions != 1 {
		t.Errorf("converter_schema rows: %d (%v), want 1", versions, err)
	}
	err = conn.QueryRow(t.Context(), `SELECT count(*), count(DISTINCT version) FROM river_migration`).Scan(&riverVersions, &riverDistinct)
	if err != nil || riverVersions == 0 || riverVersions != riverDistinct {
		t.Errorf("river_migration: %d rows, %d versions (%v); want each version once", riverVersions, riverDistinct, err)
	}
}

// A node that starts while another runs a job leaves that job alone: only a node's own
// previous process can have left an orphan behind.
func TestPostgresStartLeavesOtherNodesJobs(t *testing.T) {
	url := testkit.StartPostgres(t)
	started := make(chan string, 1)
	a := openConfig(t, jobs.Config{Dir: t.TempDir(), Database: url, Converter: blocking(started)})
	id := submit(t, a, "x").ID
	<-started
	b, err := jobs.Open(t.Context(), jobs.Config{Dir: t.TempDir(), Database: url, Converter: succeeding})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if j, err := b.Get(t.Context(), "t", id); err != nil || j.State != jobs.StateRunning || j.Attempts != 1 {
		t.Errorf("the other node's job after a start: %s after %d attempts (%v), want running after 1", j.State, j.Attempts, err)
	}
	if _, err := a.Cancel(t.Context(), "t", id); err != nil {
		t.Fatal(err)
	}
}

// A node killed with SIGKILL mid-job loses the job to a live node within the rescue delay: the
// live node finds the dead node's lock free and queues the job again, and runs it. (Each node
// has its own data directory here, so the converter makes the job's directory itself.)
func TestPostgresLiveNodeRescuesDeadNodesJob(t *testing.T) {
	url := testkit.StartPostgres(t)
	helper, id := startHelper(t, t.TempDir(), url)
	live := openConfig(t, jobs.Config{Dir: t.TempDir(), Database: url, RescueDelay: time.Second, Converter: converterFunc(
		func(_ context.Context, _, dst string, _ convert.Options) (*convert.Manifest, error) {
			if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
				return nil, err
			}
			return fakeOutput(dst)
		})})
	if j, err := live.Get(t.Context(), "t", id); err != nil || j.State != jobs.StateRunning {
		t.Fatalf("the job of a live node: %s (%v), want running", j.State, err)
	}
	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	helper.Wait()
	if j := waitFor(t, live, id, "finished", terminal); j.State != jobs.StateSucceeded {
		t.Errorf("the dead node's job = %s %+v, want succeeded on the live node", j.State, j.Error)
	}
}

// Nodes share one job table: a job submitted through one node is read and canceled through
// another, and the node running it stops its conversion (River tells it through PostgreSQL).
func TestPostgresCancelThroughAnotherNode(t *testing.T) {
	url := testkit.StartPostgres(t)
	type run struct {
		node string
		ctx  context.Context
	}
	started := make(chan run, 2)
	nodes := map[string]*jobs.Service{}
	for _, name := range []string{"a", "b"} {
		nodes[name] = openConfig(t, jobs.Config{Dir: t.TempDir(), Database: url, Converter: converterFunc(
			func(ctx context.Context, _, _ string, _ convert.Options) (*convert.Manifest, error) {
				started <- run{name, ctx}
				<-ctx.Done()
				return nil, ctx.Err()
			})})
	}
	id := submit(t, nodes["a"], "x").ID
	r := <-started
	other := nodes[map[string]string{"a": "b", "b": "a"}[r.node]]
	if j, err := other.Get(t.Context(), "t", id); err != nil || j.State != jobs.StateRunning {
		t.Fatalf("the job through the node not running it: %s (%v), want running", j.State, err)
	}
	if _, err := other.Cancel(t.Context(), "t", id); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.ctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the conversion on the node running it was never canceled")
	}
	if j := waitFor(t, nodes[r.node], id, "settled", terminal); j.State != jobs.StateCanceled {
		t.Errorf("job = %s, want canceled", j.State)
	}
}

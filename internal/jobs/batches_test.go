package jobs_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/store"
	"github.com/ptsafe/converter/internal/testkit"
)

// batchTree is testkit.BatchRepo in a fresh directory.
func batchTree(t *testing.T) string { return testkit.BatchRepo(t, filepath.Join(t.TempDir(), "src")) }

// waitBatch polls a batch a bounded number of times until cond holds.
func waitBatch(t *testing.T, s *jobs.Service, id, what string, cond func(jobs.Batch) bool) jobs.Batch {
	t.Helper()
	for range 2400 {
		b, err := s.GetBatch(t.Context(), "t", id)
		if err != nil {
			t.Fatalf("GetBatch: %v", err)
		}
		if cond(b) {
			return b
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("batch %s: never %s", id, what)
	return jobs.Batch{}
}

func batchDone(b jobs.Batch) bool { return b.State.Terminal() }

// batchOutcomes reads every outcome of a batch, two per page.
func batchOutcomes(t *testing.T, s *jobs.Service, id string) map[string]batch.File {
	t.Helper()
	out := map[string]batch.File{}
	after := ""
	for {
		files, more, err := s.BatchFiles(t.Context(), "t", id, after, 2)
		if err != nil {
			t.Fatalf("BatchFiles: %v", err)
		}
		for _, f := range files {
			if _, dup := out[f.Path]; dup || f.Path <= after {
				t.Errorf("%s: listed twice or out of order", f.Path)
			}
			out[f.Path] = f
			after = f.Path
		}
		if !more {
			return out
		}
	}
}

func checkBatchOutcomes(t *testing.T, got map[string]batch.File) {
	t.Helper()
	for p, want := range testkit.BatchRepoOutcomes {
		if got[p].Outcome != want {
			t.Errorf("%s: %q, want %q", p, got[p].Outcome, want)
		}
	}
	if len(got) != len(testkit.BatchRepoOutcomes) {
		t.Errorf("%d outcomes, want %d: %v", len(got), len(testkit.BatchRepoOutcomes), got)
	}
	if f := got["evil/pytorch_model.bin"]; f.Error == nil || f.Error.Type != fault.Unsafe || len(f.Globals) != 1 ||
		f.Globals[0].Qualified() != "posix.system" {
		t.Errorf("malicious file: %+v, want refused as unsafe for posix.system", f)
	}
}

// s3Trees is a versitygw bucket and the service configuration that reaches it.
func s3Trees(t *testing.T) (s3store.Config, string) {
	t.Helper()
	srv := testkit.StartS3(t)
	cfg := s3store.Config{Endpoint: srv.Endpoint, PartSize: s3store.MinPartSize, Concurrency: 1,
		Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, "")}
	return cfg, "s3://" + srv.Bucket(t)
}

// s3Source is s3Trees with the files of the directory dir put under the bucket's src/.
func s3Source(t *testing.T, dir string) (s3store.Config, string) {
	t.Helper()
	cfg, bucket := s3Trees(t)
	src, err := s3store.New(t.Context(), bucket+"/src", cfg)
	if err != nil {
		t.Fatal(err)
	}
	testkit.PutDir(t, src, dir)
	return cfg, bucket
}

// A batch from S3 to S3 on each backend: a mixed tree, every outcome recorded, the state
// settled from them (a refused file fails the batch, as it makes `converter batch` exit 3).
func TestBatchS3ToS3(t *testing.T) {
	forEachBackend(t, func(t *testing.T, database string) {
		s3cfg, bucket := s3Source(t, batchTree(t))
		s := openConfig(t, jobs.Config{Dir: t.TempDir(), Database: database, Converter: convert.InProcess{}, StoreConfig: s3cfg, Workers: 2})
		b, err := s.SubmitBatch(t.Context(), jobs.BatchParams{Tenant: "t", Source: bucket + "/src", Destination: bucket + "/dst"})
		if err != nil || b.State != jobs.StateQueued {
			t.Fatalf("SubmitBatch = %+v, %v", b, err)
		}
		b = waitBatch(t, s, b.ID, "finished", batchDone)
		if b.State != jobs.StateFailed || b.Error == nil || b.Error.Type != fault.Unsafe || b.ExitCode != 3 {
			t.Errorf("batch %s %+v exit %d, want failed unsafe exit 3", b.State, b.Error, b.ExitCode)
		}
		if b.Summary.Converted != 6 || b.Summary.Copied != 6 || b.Summary.Refused != 1 || b.UnitsDone != b.Units || b.Summary.BytesOut == 0 {
			t.Errorf("summary %+v, units %d of %d", b.Summary, b.UnitsDone, b.Units)
		}
		checkBatchOutcomes(t, batchOutcomes(t, s, b.ID))
		dst, err := s3store.New(t.Context(), bucket+"/dst", s3cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"model.safetensors.index.json", "model-00002-of-00003.safetensors", "checkpoints/last.safetensors", "config.json"} {
			if _, err := dst.Stat(t.Context(), p); err != nil {
				t.Errorf("DEST has no %s: %v", p, err)
			}
		}
		if _, err := dst.Stat(t.Context(), "evil/pytorch_model.bin"); err == nil {
			t.Error("the refused file reached DEST")
		}

		// A second batch over the same trees finds the receipts: nothing converted again.
		again, err := s.SubmitBatch(t.Context(), jobs.BatchParams{Tenant: "t", Source: bucket + "/src", Destination: bucket + "/dst"})
		if err != nil {
			t.Fatal(err)
		}
		again = waitBatch(t, s, again.ID, "finished", batchDone)
		if again.Summary.Converted != 0 || again.Summary.Copied != 0 || again.Summary.Skipped != 12 {
			t.Errorf("second batch summary %+v, want 12 skipped, nothing converted or copied", again.Summary)
		}

		list, more, err := s.ListBatches(t.Context(), jobs.ListParams{Tenant: "t", PageSize: 1})
		if err != nil || !more || len(list) != 1 || list[0].ID != again.ID {
			t.Errorf("ListBatches page 1 = %v more %v, %v; want the newest batch and more", list, more, err)
		}
		list, more, err = s.ListBatches(t.Context(), jobs.ListParams{Tenant: "t", PageSize: 1, After: again.ID})
		if err != nil || more || len(list) != 1 || list[0].ID != b.ID {
			t.Errorf("ListBatches page 2 = %v more %v, %v; want the first batch, no more", list, more, err)
		}
		if list, _, _ := s.ListBatches(t.Context(), jobs.ListParams{Tenant: "other", PageSize: 10}); len(list) != 0 {
			t.Errorf("another tenant lists %d batches", len(list))
		}
		if _, err := s.GetBatch(t.Context(), "other", b.ID); err != jobs.ErrNotFound {
			t.Errorf("another tenant's GetBatch: %v, want ErrNotFound", err)
		}
	})
}

// rendezvous holds the first conversion of each of two nodes until both nodes are in one, so
// that both nodes work units of the batch whatever the timing.
type rendezvous struct {
	mu  sync.Mutex
	n   int
	all chan struct{}
}

type meeting struct {
	r    *rendezvous
	once sync.Once
}

func (m *meeting) Convert(ctx context.Context, src, dst string, opts convert.Options) (*convert.Manifest, error) {
	m.once.Do(func() {
		m.r.mu.Lock()
		if m.r.n++; m.r.n == 2 {
			close(m.r.all)
		}
		m.r.mu.Unlock()
		select {
		case <-m.r.all:
		case <-ctx.Done():
		}
	})
	return convert.InProcess{}.Convert(ctx, src, dst, opts)
}

func (m *meeting) Scan(ctx context.Context, src string, opts convert.Options) (*convert.Manifest, error) {
	return convert.InProcess{}.Scan(ctx, src, opts)
}

// Two nodes sharing one PostgreSQL database work one batch: one worker each, and each node's
// first conversion waits for the other's, so both must take units.
func TestBatchAcrossNodes(t *testing.T) {
	database := testkit.StartPostgres(t)
	s3cfg, bucket := s3Source(t, batchTree(t))
	r := &rendezvous{all: make(chan struct{})}
	var nodes []*jobs.Service
	for range 2 {
		nodes = append(nodes, openConfig(t, jobs.Config{Dir: t.TempDir(), Database: database, Converter: &meeting{r: r},
			StoreConfig: s3cfg, Workers: 1}))
	}
	b, err := nodes[0].SubmitBatch(t.Context(), jobs.BatchParams{Tenant: "t", Source: bucket + "/src", Destination: bucket + "/dst"})
	if err != nil {
		t.Fatal(err)
	}
	b = waitBatch(t, nodes[1], b.ID, "finished", batchDone)
	if b.State != jobs.StateFailed || b.Summary.Refused != 1 || b.Summary.Converted != 6 {
		t.Errorf("batch %s, summary %+v; want failed with 1 refused, 6 converted", b.State, b.Summary)
	}
	checkBatchOutcomes(t, batchOutcomes(t, nodes[1], b.ID))
	worked := nodes[0].BatchNodes(t, b.ID)
	total := 0
	for _, n := range worked {
		total += n
	}
	if len(worked) != 2 || total != b.Units {
		t.Errorf("units worked by node: %v, want both nodes and %d units in all", worked, b.Units)
	}
}

// Canceling a batch cancels its running unit and runs none of its queued ones.
func TestBatchCancel(t *testing.T) {
	forEachBackend(t, func(t *testing.T, database string) {
		started := make(chan string, 16)
		s := openConfig(t, jobs.Config{Dir: t.TempDir(), Database: database, Converter: blocking(started), Workers: 1})
		b, err := s.SubmitBatch(t.Context(), jobs.BatchParams{Tenant: "t", Source: batchTree(t), Destination: filepath.Join(t.TempDir(), "dst")})
		if err != nil {
			t.Fatal(err)
		}
		<-started
		b, err = s.CancelBatch(t.Context(), "t", b.ID)
		if err != nil || b.State != jobs.StateCanceled || b.Error == nil || b.Error.Type != fault.Canceled {
			t.Fatalf("CancelBatch = %s %+v, %v; want canceled", b.State, b.Error, err)
		}
		// The canceled unit's conversion ends, and no other unit starts: the service drains
		// with nothing running, and the one worker had no other conversion.
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("Stop after cancel: %v", err)
		}
		if n := len(started); n != 0 {
			t.Errorf("%d more conversions started after the cancel", n)
		}
		if again, err := s.CancelBatch(t.Context(), "t", b.ID); err != nil || again.State != jobs.StateCanceled {
			t.Errorf("second CancelBatch = %s, %v; want canceled, no error", again.State, err)
		}
		if files, _, err := s.BatchFiles(t.Context(), "t", b.ID, "", 100); err != nil || len(files) != 0 {
			t.Errorf("a canceled batch recorded %d outcomes (%v); its plan recorded none", len(files), err)
		}
	})
}

// A node killed with SIGKILL while working a unit loses nothing: on restart its running
// entries are queued again at once (River never rescues them: units have no timeout) and the
// batch completes with every outcome.
func TestBatchSIGKILLMidUnit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, database string) {
		dir := t.TempDir()
		src := batchTree(t)
		helper, id := startHelper(t, dir, database, "JOBS_TEST_HELPER_BATCH="+src)
		if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		helper.Wait()
		s := openConfig(t, jobs.Config{Dir: dir, Database: database, Converter: convert.InProcess{}, RescueDelay: time.Second})
		b := waitBatch(t, s, id, "finished", batchDone)
		if b.State != jobs.StateFailed || b.Summary.Refused != 1 || b.Summary.Converted != 6 || b.UnitsDone != b.Units {
			t.Errorf("after restart batch = %s, summary %+v, units %d of %d; want failed with 1 refused, 6 converted, all units",
				b.State, b.Summary, b.UnitsDone, b.Units)
		}
		checkBatchOutcomes(t, batchOutcomes(t, s, id))
	})
}

// plainTree is a directory of n plain files.
func plainTree(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("notes-%d.txt", i)), []byte("plain"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// A SOURCE holding more files than Config.MaxBatchFiles fails its batch at planning as over a
// limit, naming the bound and the flag that raises it, with no unit, no outcome and nothing at
// DEST; one holding exactly as many is converted. On each backend, a local SOURCE and an S3 one.
func TestBatchMaxFiles(t *testing.T) {
	forEachBackend(t, func(t *testing.T, database string) {
		s3cfg, bucket := s3Source(t, plainTree(t, 5))
		s := openConfig(t, jobs.Config{Dir: t.TempDir(), Database: database, Converter: convert.InProcess{}, StoreConfig: s3cfg, MaxBatchFiles: 4})
		localDst := filepath.Join(t.TempDir(), "dst")
		for _, tc := range []struct{ name, src, dst string }{
			{"local", plainTree(t, 5), localDst},
			{"s3", bucket + "/src", bucket + "/dst"},
		} {
			b, err := s.SubmitBatch(t.Context(), jobs.BatchParams{Tenant: "t", Source: tc.src, Destination: tc.dst})
			if err != nil {
				t.Fatal(err)
			}
			b = waitBatch(t, s, b.ID, "finished", batchDone)
			if b.State != jobs.StateFailed || b.Error == nil || b.Error.Type != fault.Limit || b.ExitCode != 0 || b.Units != 0 ||
				!strings.Contains(b.Error.Detail, "more than 4 files") || !strings.Contains(b.Error.Detail, "--max-batch-files") {
				t.Errorf("%s: batch %s %+v, %d units; want failed over the limit of 4 files, naming --max-batch-files, unplanned", tc.name, b.State, b.Error, b.Units)
			}
			if files, _, err := s.BatchFiles(t.Context(), "t", b.ID, "", 10); err != nil || len(files) != 0 {
				t.Errorf("%s: %d outcomes recorded (%v), want none", tc.name, len(files), err)
			}
		}
		if _, err := os.Stat(localDst); !os.IsNotExist(err) {
			t.Errorf("the refused local batch made its DEST: %v", err)
		}
		dst, err := s3store.New(t.Context(), bucket+"/dst", s3cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := dst.Walk(t.Context(), func(o store.Object, _ error) error { return fmt.Errorf("DEST holds %s", o.Path) }); err != nil {
			t.Errorf("the refused S3 batch wrote to DEST: %v", err)
		}

		b, err := s.SubmitBatch(t.Context(), jobs.BatchParams{Tenant: "t", Source: plainTree(t, 4), Destination: localDst})
		if err != nil {
			t.Fatal(err)
		}
		if b = waitBatch(t, s, b.ID, "finished", batchDone); b.State != jobs.StateSucceeded || b.Summary.Copied != 4 {
			t.Errorf("a SOURCE of exactly 4 files: batch %s %+v, summary %+v; want succeeded, 4 copied", b.State, b.Error, b.Summary)
		}
	})
}

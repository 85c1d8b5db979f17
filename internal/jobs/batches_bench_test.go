package jobs

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/store"
	"github.com/ptsafe/converter/internal/testkit"
)

// benchTree is a SOURCE of n files NAME.ext in directories of 1000, each made by mk.
func benchTree(b *testing.B, n int, ext string, mk func(name string) error) store.Tree {
	b.Helper()
	dir := b.TempDir()
	for i := range n {
		sub := filepath.Join(dir, fmt.Sprintf("d%03d", i/1000))
		if i%1000 == 0 {
			if err := os.Mkdir(sub, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		if err := mk(filepath.Join(sub, fmt.Sprintf("f%05d.%s", i, ext))); err != nil {
			b.Fatal(err)
		}
	}
	t, err := store.NewLocal(dir)
	if err != nil {
		b.Fatal(err)
	}
	return t
}

// BenchmarkRecordPlan measures the planning transaction (recordPlan) of a batch at the default
// DefaultMaxBatchFiles, on each backend: plain files (units of 64), checkpoints (a unit each),
// and files whose outcomes planning decides (a rerun over receipts: a row each, no unit).
// plan-s is batch.Plan's time before it, listing the local SOURCE and reading every file's
// first bytes. Run with -benchtime=1x: each case is seconds.
func BenchmarkRecordPlan(b *testing.B) {
	n := DefaultMaxBatchFiles
	fixture, err := os.ReadFile(filepath.Join(testkit.FixtureDir(), "root_tensor.pt"))
	if err != nil {
		b.Fatal(err)
	}
	trees := []struct {
		name string
		tree func(b *testing.B) store.Tree
	}{
		{"plain", func(b *testing.B) store.Tree {
			return benchTree(b, n, "json", func(name string) error { return os.WriteFile(name, []byte(`{"plain": true}`), 0o644) })
		}},
		{"checkpoints", func(b *testing.B) store.Tree {
			return benchTree(b, n, "pt", func(name string) error { return os.WriteFile(name, fixture, 0o644) })
		}},
	}
	backends := []struct {
		name     string
		database func(testing.TB) string
	}{
		{"sqlite", func(testing.TB) string { return "" }},
		{"postgres", testkit.StartPostgres},
	}
	dst, err := store.NewLocal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	plans := map[string]*batch.Planned{}
	planSeconds := map[string]float64{}
	decided := &batch.Planned{Report: &batch.Report{}}
	for i := range n {
		decided.Report.Files = append(decided.Report.Files, batch.File{Path: fmt.Sprintf("d%03d/f%05d.pt", i/1000, i),
			Outcome: batch.Skipped, Output: fmt.Sprintf("d%03d/f%05d.safetensors", i/1000, i), SourceSHA256: fmt.Sprintf("%064x", i)})
	}
	for _, be := range backends {
		for _, tc := range append(trees, struct {
			name string
			tree func(b *testing.B) store.Tree
		}{"decided", nil}) {
			b.Run(be.name+"/"+tc.name, func(b *testing.B) {
				ctx := b.Context()
				s, err := Open(ctx, Config{Dir: b.TempDir(), Database: be.database(b), Converter: convert.InProcess{}})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				p := decided
				if tc.tree != nil {
					if p = plans[tc.name]; p == nil {
						src := tc.tree(b)
						start := time.Now()
						if p, err = batch.Plan(ctx, src, dst, convert.InProcess{}, s.batchOptions(Batch{})); err != nil {
							b.Fatal(err)
						}
						plans[tc.name], planSeconds[tc.name] = p, time.Since(start).Seconds()
					}
				}
				b.ResetTimer()
				for range b.N {
					b.StopTimer()
					bt, err := s.SubmitBatch(ctx, BatchParams{Tenant: "t", Source: "/src", Destination: "/dst"})
					if err != nil {
						b.Fatal(err)
					}
					if _, err := s.db.exec(ctx, `UPDATE converter_batch SET state = 'running' WHERE id = ?`, bt.ID); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if err := s.recordPlan(ctx, bt.ID, p); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(planSeconds[tc.name], "plan-s")
				b.ReportMetric(float64(len(p.Units)), "units")
			})
		}
	}
}

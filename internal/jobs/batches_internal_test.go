package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/store"
	"github.com/ptsafe/converter/internal/testkit"
)

// Only the last attempt of a batch's entry that failed, and was not canceled, is given up:
// the batch then records the failure, since River tries no more.
func TestGaveUp(t *testing.T) {
	fail := errors.New("database gone")
	for _, tc := range []struct {
		attempt int
		err     error
		want    bool
	}{
		{batchAttempts, fail, true},
		{batchAttempts - 1, fail, false},
		{batchAttempts, nil, false},
		{batchAttempts, river.JobCancel(fail), false},
	} {
		rj := &rivertype.JobRow{Attempt: tc.attempt, MaxAttempts: batchUnitArgs{}.InsertOpts().MaxAttempts}
		if got := gaveUp(rj, tc.err); got != tc.want {
			t.Errorf("attempt %d of %d, error %v: gaveUp = %v, want %v", tc.attempt, rj.MaxAttempts, tc.err, got, tc.want)
		}
	}
}

// countingTree counts the entries its tree's Walk yields.
type countingTree struct {
	store.Tree
	n int
}

func (t *countingTree) Walk(ctx context.Context, fn func(store.Object, error) error) error {
	return t.Tree.Walk(ctx, func(o store.Object, err error) error {
		t.n++
		return fn(o, err)
	})
}

// A bounded SOURCE's listing stops at the first entry past the bound: a bucket of millions is
// refused after max+1 entries, not listed whole. A tree of exactly max entries is listed whole.
func TestBoundedTreeStopsListing(t *testing.T) {
	dir := t.TempDir()
	for i := range 10 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	local, err := store.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		max, seen, listed int
		overLimit         bool
	}{
		{max: 3, seen: 3, listed: 4, overLimit: true},
		{max: 10, seen: 10, listed: 10},
	} {
		ct := &countingTree{Tree: local}
		seen := 0
		err := boundedTree{ct, tc.max}.Walk(t.Context(), func(store.Object, error) error { seen++; return nil })
		if (err != nil) != tc.overLimit || err != nil && fault.KindOf(err) != fault.Limit || seen != tc.seen || ct.n != tc.listed {
			t.Errorf("max %d: %v, %d entries passed on, %d listed; want %d passed on, %d listed", tc.max, err, seen, ct.n, tc.seen, tc.listed)
		}
	}
}

// A plan of more units and outcomes than one statement inserts records every one of them, each
// unit's row naming the queue entry of that unit, on each backend.
func TestRecordPlanInChunks(t *testing.T) {
	for _, backend := range []struct {
		name     string
		database func(testing.TB) string
	}{
		{"sqlite", func(testing.TB) string { return "" }},
		{"postgres", testkit.StartPostgres},
	} {
		t.Run(backend.name, func(t *testing.T) {
			ctx := t.Context()
			database := backend.database(t)
			args := "json(j.args)" // River keeps them as SQLite's binary JSON
			if IsPostgres(database) {
				args = "j.args::text"
			}
			s, err := Open(ctx, Config{Dir: t.TempDir(), Database: database, Converter: convert.InProcess{}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			n := 2*rowsPerInsert + 1
			p := &batch.Planned{Report: &batch.Report{}}
			for i := range n {
				path := fmt.Sprintf("f%04d.pt", i)
				p.Units = append(p.Units, batch.Unit{Items: []batch.UnitItem{{Object: store.Object{Path: path}}}})
				p.Report.Files = append(p.Report.Files, batch.File{Path: path + ".txt", Outcome: batch.Ignored})
			}
			b, err := s.SubmitBatch(ctx, BatchParams{Tenant: "t", Source: "/src", Destination: "/dst"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.db.exec(ctx, `UPDATE converter_batch SET state = 'running' WHERE id = ?`, b.ID); err != nil {
				t.Fatal(err)
			}
			if err := s.recordPlan(ctx, b.ID, p); err != nil {
				t.Fatal(err)
			}
			rows, err := s.db.query(ctx, `SELECT u.seq, u.unit, `+args+` FROM converter_batch_unit u
				JOIN river_job j ON j.id = u.river_job_id WHERE u.batch_id = ? ORDER BY u.seq`, b.ID)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			seen := 0
			for rows.Next() {
				var (
					seq  int
					unit string
					doc  string
					a    batchUnitArgs
					u    batch.Unit
				)
				if err := rows.Scan(&seq, &unit, &doc); err != nil {
					t.Fatal(err)
				}
				if err := errors.Join(json.Unmarshal([]byte(doc), &a), json.Unmarshal([]byte(unit), &u)); err != nil {
					t.Fatal(err)
				}
				if want := fmt.Sprintf("f%04d.pt", seq); seq != seen || a.Seq != seq || a.BatchID != b.ID || u.Items[0].Object.Path != want {
					t.Errorf("unit row %d: seq %d, %s, entry %+v; want seq %d, %s, its own entry", seen, seq, u.Items[0].Object.Path, a, seen, want)
				}
				seen++
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			files, more, err := s.BatchFiles(ctx, "t", b.ID, "", n)
			if seen != n || len(files) != n || more || err != nil {
				t.Errorf("%d units with their entries, %d outcomes (more %v, %v); want %d of each", seen, len(files), more, err, n)
			}
		})
	}
}

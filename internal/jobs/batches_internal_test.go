package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/store"
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

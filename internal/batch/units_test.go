package batch_test

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/store"
)

// planned plans src into dst and works every unit after a trip through JSON, as the service's
// queue carries them, in reverse order (no unit may depend on another's having run), and
// returns the report made of the plan's outcomes and the units'.
func planned(t *testing.T, src, dst string, opts batch.Options) (*batch.Report, int) {
	t.Helper()
	ctx := context.Background()
	s, err := store.NewLocal(src)
	if err != nil {
		t.Fatal(err)
	}
	d, err := store.NewLocal(dst)
	if err != nil {
		t.Fatal(err)
	}
	p, err := batch.Plan(ctx, s, d, convert.InProcess{}, opts)
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	rep := p.Report
	for _, u := range slices.Backward(p.Units) {
		b, err := json.Marshal(u)
		if err != nil {
			t.Fatal(err)
		}
		var back batch.Unit
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		ur, err := batch.RunUnit(ctx, s, d, convert.InProcess{}, opts, back)
		if err != nil {
			t.Fatalf("RunUnit: %v", err)
		}
		rep.Files = append(rep.Files, ur.Files...)
	}
	return rep, len(p.Units)
}

func TestPlanAndUnitsAsRun(t *testing.T) {
	t.Parallel()
	src := mixedRepo(t)
	dst := filepath.Join(t.TempDir(), "dst")
	rep, units := planned(t, src, dst, batch.Options{Workers: 2})
	checkOutcomes(t, rep, mixedWant)
	// One unit per file that looks like a pickle or container (12, adapter.safetensors,
	// merges.txt and embeddings.npy among them) outside the set, one for the sharded set, one
	// for the plain files.
	if units != 14 {
		t.Errorf("%d units, want 14", units)
	}
	want := listing(t, dst)
	// A unit leaves the directory of a refused file (Run removes it): another unit may be
	// about to write there.
	if want["evil/"] != "dir" || want["evil/model.safetensors"] != "" {
		t.Errorf("DEST after the units: evil/ %q, evil/model.safetensors %q; want the empty directory", want["evil/"], want["evil/model.safetensors"])
	}

	// Run sees the planned run's receipts: nothing is left to convert.
	again := run(t, convert.InProcess{}, src, dst, batch.Options{})
	for _, f := range again.Files {
		if f.Outcome == batch.Converted || f.Outcome == batch.Copied {
			t.Errorf("%s: %s again after a planned run", f.Path, f.Outcome)
		}
	}
	if got := withoutState(listing(t, dst)); !maps.Equal(got, withoutState(want)) {
		t.Errorf("DEST changed on the second run:\n%v\nwant\n%v", got, want)
	}
	// And a planned run sees Run's: every unit is a skip.
	rep, _ = planned(t, src, dst, batch.Options{Workers: 2})
	for _, f := range rep.Files {
		if f.Outcome == batch.Converted || f.Outcome == batch.Copied {
			t.Errorf("%s: %s again in a planned run after a run", f.Path, f.Outcome)
		}
	}
}

func TestPlanRefusesRemoveSource(t *testing.T) {
	t.Parallel()
	s, err := store.NewLocal(repo(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	d, err := store.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, err = batch.Plan(context.Background(), s, d, convert.InProcess{}, batch.Options{RemoveSource: true})
	if !errors.Is(err, batch.ErrRemoveSource) {
		t.Errorf("Plan with RemoveSource: %v, want ErrRemoveSource", err)
	}
}

package torchzip_test

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ptsafe/converter/internal/convert"
)

// TestRegressions scans every file of testdata/regress, each one the differential harness
// (testdata/differential/torchdiff.py) found that torch 1.13 reads differently from an
// earlier version of this reader, and checks the verdict and container kind recorded beside it
// in verdicts.json. It needs no torch: the harness's findings are replayed as plain files.
func TestRegressions(t *testing.T) {
	dir := filepath.Join("testdata", "regress")
	b, err := os.ReadFile(filepath.Join(dir, "verdicts.json"))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]struct {
		Verdict   string `json:"verdict"`
		Container string `json:"container"`
		Why       string `json:"why"`
	}
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.pt"))
	for _, f := range files {
		if _, ok := want[filepath.Base(f)]; !ok {
			t.Errorf("%s has no entry in verdicts.json", f)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		w := want[name]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m, err := convert.Scan(context.Background(), filepath.Join(dir, name), convert.Options{})
			if m == nil {
				t.Fatal(err) // the scan could not run; a judged file's refusal comes with its manifest
			}
			if m.Verdict != w.Verdict || m.Source.Container != w.Container {
				detail := ""
				if m.Error != nil {
					detail = m.Error.Detail
				}
				t.Errorf("verdict %s, container %s (%s); want %s, %s: %s", m.Verdict, m.Source.Container, detail, w.Verdict, w.Container, w.Why)
			}
		})
	}
}

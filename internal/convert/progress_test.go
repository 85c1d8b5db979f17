package convert_test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/convert"
)

// A conversion reports its phases in order, never counts backwards, and ends its writing phase
// with every byte of the output and every tensor counted, whatever the timing.
func TestFileProgress(t *testing.T) {
	var got []convert.Progress
	dst := filepath.Join(t.TempDir(), "out.safetensors")
	m, err := convert.File(t.Context(), "../../testdata/torch/many_tensors.pt", dst, convert.Options{
		Progress: func(p convert.Progress) { got = append(got, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	checkProgress(t, got, []string{convert.PhaseScanning, convert.PhaseWriting, convert.PhaseVerifying})
	final := convert.Progress{Phase: convert.PhaseWriting, BytesDone: m.Output.Size, BytesTotal: m.Output.Size,
		TensorsDone: len(m.Tensors), TensorsTotal: len(m.Tensors)}
	if !contains(got, final) {
		t.Errorf("no progress record %+v among %+v", final, got)
	}
	if last := got[len(got)-1]; last.Phase != convert.PhaseVerifying || last.TensorsDone != len(m.Tensors) {
		t.Errorf("last record = %+v, want the verifying phase with every tensor done", last)
	}
}

// A scan reports the source digest's progress, ending with every byte of the source hashed,
// for a refused file too.
func TestScanProgress(t *testing.T) {
	for _, name := range []string{"mymodel.pt", "complex128.pt"} {
		t.Run(name, func(t *testing.T) {
			var got []convert.Progress
			m, _ := convert.Scan(t.Context(), filepath.Join("../../testdata/torch", name), convert.Options{
				Progress: func(p convert.Progress) { got = append(got, p) },
			})
			if m == nil {
				t.Fatal("no manifest")
			}
			checkProgress(t, got, []string{convert.PhaseScanning, convert.PhaseHashing})
			final := convert.Progress{Phase: convert.PhaseHashing, BytesDone: m.Source.Size, BytesTotal: m.Source.Size}
			if !contains(got, final) {
				t.Errorf("no progress record %+v among %+v", final, got)
			}
		})
	}
}

// checkProgress fails unless the records' phases are phases, in order, and counts within a phase
// never go back or beyond their totals.
func checkProgress(t *testing.T, got []convert.Progress, phases []string) {
	t.Helper()
	var seen []string
	for i, p := range got {
		if p.BytesDone > p.BytesTotal || p.TensorsDone > p.TensorsTotal {
			t.Errorf("record %d = %+v counts beyond its totals", i, p)
		}
		if len(seen) == 0 || seen[len(seen)-1] != p.Phase {
			seen = append(seen, p.Phase)
			continue
		}
		if prev := got[i-1]; p.BytesDone < prev.BytesDone || p.TensorsDone < prev.TensorsDone {
			t.Errorf("record %d = %+v counts back from %+v", i, p, prev)
		}
	}
	if strings.Join(seen, ",") != strings.Join(phases, ",") {
		t.Errorf("phases = %v, want %v", seen, phases)
	}
}

func contains(got []convert.Progress, want convert.Progress) bool {
	for _, p := range got {
		if p == want {
			return true
		}
	}
	return false
}

// The callback is no part of the options' JSON, which the sandbox sends its child.
func TestOptionsJSONOmitsProgress(t *testing.T) {
	b, err := json.Marshal(convert.Options{Progress: func(convert.Progress) {}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToLower(string(b)), "progress") {
		t.Errorf("options JSON %s carries the progress callback", b)
	}
}

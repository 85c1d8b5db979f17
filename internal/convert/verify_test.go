package convert

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/safetensors"
	"github.com/ptsafe/converter/internal/synth"
)

// TestVerifySourceOrder verifies against their source a converted file and the same tensors
// laid out in the reverse order (valid safetensors that another writer could produce): both
// match. The reversed file with one tensor renamed does not.
func TestVerifySourceOrder(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "model.pt"), filepath.Join(dir, "model.safetensors")
	if err := synth.WriteFile(src, synth.Spec{Format: synth.ZipStored, Tensors: 5, TotalBytes: 5 << 10, DType: dtype.F32, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := File(context.Background(), src, dst, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(context.Background(), dst, src, Options{}); err != nil {
		t.Fatalf("converted file: %v", err)
	}
	for _, rename := range []bool{false, true} {
		path := reversedCopy(t, dst, rename)
		_, err := Verify(context.Background(), path, src, Options{})
		switch {
		case !rename && err != nil:
			t.Errorf("reversed file: %v", err)
		case rename && (err == nil || !strings.Contains(err.Error(), "of the source is missing")):
			t.Errorf("reversed file with a renamed tensor: error %v, want one naming a missing tensor", err)
		}
	}
}

// reversedCopy writes the tensors of the safetensors file at path in the reverse order, the
// last one renamed if rename is set, and returns the new file's path.
func reversedCopy(t *testing.T, path string, rename bool) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	sf, err := safetensors.Read(f, st.Size(), 0)
	if err != nil {
		t.Fatal(err)
	}
	header := map[string]any{}
	var data []byte
	ts := slices.Clone(sf.Tensors)
	slices.Reverse(ts)
	for i, tt := range ts {
		b := make([]byte, tt.End-tt.Begin)
		if _, err := f.ReadAt(b, sf.DataStart+tt.Begin); err != nil {
			t.Fatal(err)
		}
		name := tt.Name
		if rename && i == len(ts)-1 {
			name += ".renamed"
		}
		header[name] = map[string]any{"dtype": tt.DType.String(), "shape": tt.Shape,
			"data_offsets": []int{len(data), len(data) + len(b)}}
		data = append(data, b...)
	}
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	out = append(append(out, h...), data...)
	p := filepath.Join(t.TempDir(), "reversed.safetensors")
	if err := os.WriteFile(p, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTensorIndex finds planned tensors in a file's list: in the plan's order at their own
// position, otherwise by name (zero-size tensors of two dtypes at one offset, which the reader
// sorts by name and the plan by dtype), and not at all when missing.
func TestTensorIndex(t *testing.T) {
	file := []safetensors.Tensor{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	for _, c := range []struct {
		i      int
		name   string
		want   int
		wantOK bool
	}{
		{0, "a", 0, true},
		{2, "c", 2, true},
		{0, "b", 1, true},
		{1, "a", 0, true},
		{3, "c", 2, true},
		{1, "z", 0, false},
	} {
		idx := tensorIndex{tensors: file}
		if got, ok := idx.find(c.i, c.name); got != c.want || ok != c.wantOK {
			t.Errorf("find(%d, %q) = %d, %v; want %d, %v", c.i, c.name, got, ok, c.want, c.wantOK)
		}
	}
}

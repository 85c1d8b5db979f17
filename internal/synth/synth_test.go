package synth

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/ptsafe/converter/internal/dtype"
)

func mustPlan(t *testing.T, spec Spec) []Tensor {
	t.Helper()
	ts, err := Plan(spec)
	if err != nil {
		t.Fatalf("Plan(%+v): %v", spec, err)
	}
	return ts
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name       string
		spec       Spec
		wantShapes [][]int64
		wantDType  dtype.DType
		wantKeys   []string
	}{
		{"defaults: f16 matrices, zip keys", Spec{Tensors: 2, TotalBytes: 2 * 2 * 4096},
			[][]int64{{64, 64}, {64, 64}}, dtype.F16, []string{"0", "1"}},
		{"flat spreads the remainder", Spec{Tensors: 3, TotalBytes: 4 * 10, DType: dtype.F32, Shapes: ShapeFlat},
			[][]int64{{4}, {3}, {3}}, dtype.F32, []string{"0", "1", "2"}},
		{"matrix rounds down to whole rows", Spec{Tensors: 1, TotalBytes: 10, DType: dtype.U8},
			[][]int64{{5, 2}}, dtype.U8, []string{"0"}},
		{"mixed cycles 2-d, 1-d, 3-d, 4-d", Spec{Tensors: 4, TotalBytes: 4 * 72 * 2, Shapes: ShapeMixed},
			[][]int64{{9, 8}, {72}, {2, 9, 4}, {4, 2, 3, 3}}, dtype.F16, []string{"0", "1", "2", "3"}},
		{"legacy keys are fixed-width addresses", Spec{Tensors: 2, TotalBytes: 2, DType: dtype.BOOL, Format: Legacy, Shapes: ShapeFlat},
			[][]int64{{1}, {1}}, dtype.BOOL, []string{"94000000000000", "94000000004096"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := mustPlan(t, tt.spec)
			for i, x := range ts {
				if !slices.Equal(x.Shape, tt.wantShapes[i]) || x.DType != tt.wantDType || x.Key != tt.wantKeys[i] {
					t.Errorf("tensor %d = %v %v key %s, want %v %v key %s", i, x.DType, x.Shape, x.Key, tt.wantDType, tt.wantShapes[i], tt.wantKeys[i])
				}
				if want := "model.layers." + string(rune('0'+i)) + ".weight"; x.Name != want {
					t.Errorf("tensor %d name %q, want %q", i, x.Name, want)
				}
			}
		})
	}
}

func TestPlanRejects(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"no tensors", Spec{TotalBytes: 10}, "want at least 1"},
		{"too few bytes", Spec{Tensors: 10, TotalBytes: 10, DType: dtype.F32}, "cannot hold"},
		{"dtype without typed storage", Spec{Tensors: 1, TotalBytes: 10, DType: dtype.U16}, "no typed torch storage"},
		{"unknown format", Spec{Tensors: 1, TotalBytes: 10, Format: 7}, "unknown format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Plan(tt.spec)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Plan(%+v) error = %v, want one containing %q", tt.spec, err, tt.want)
			}
		})
	}
}

// TestPickleInts: ints are encoded as CPython's pickle.dumps(v, 2) encodes them.
func TestPickleInts(t *testing.T) {
	tests := []struct {
		v    int64
		want string
	}{
		{0, "4b00"},
		{255, "4bff"},
		{256, "4d0001"},
		{65535, "4dffff"},
		{65536, "4a00000100"},
		{2147483647, "4affffff7f"},
		{2147483648, "8a050000008000"},
		{4294967396, "8a056400000001"},
		{9223372036854775807, "8a08ffffffffffffff7f"},
		{-1, "4affffffff"},
		{-128, "4a80ffffff"},
		{-2147483648, "4a00000080"},
		{-2147483649, "8a05ffffff7fff"},
		{-9223372036854775808, "8a080000000000000080"},
	}
	for _, tt := range tests {
		p := &pickler{}
		p.int(tt.v)
		if got := hex.EncodeToString(p.b); got != tt.want {
			t.Errorf("int(%d) = %s, want %s", tt.v, got, tt.want)
		}
	}
}

// TestContent: the bytes are deterministic per seed, independent of read sizes, and every
// floating-point value is finite (so torch.equal holds after a round trip).
func TestContent(t *testing.T) {
	spec := Spec{Tensors: 3, TotalBytes: 3 * 1001 * 2, Shapes: ShapeFlat, Seed: 7}
	a, b := mustPlan(t, spec), mustPlan(t, spec)
	spec.Seed = 8
	c := mustPlan(t, spec)
	for i := range a {
		x, _ := io.ReadAll(a[i].Content())
		y, _ := io.ReadAll(iotest.OneByteReader(b[i].Content()))
		z, _ := io.ReadAll(c[i].Content())
		if int64(len(x)) != a[i].Size() || !bytes.Equal(x, y) {
			t.Errorf("tensor %d: %d bytes, byte-wise read equal: %v; want %d bytes, equal", i, len(x), bytes.Equal(x, y), a[i].Size())
		}
		if bytes.Equal(x, z) {
			t.Errorf("tensor %d: seeds 7 and 8 give the same bytes", i)
		}
	}
	if a[0].SHA256() == a[1].SHA256() {
		t.Error("tensors 0 and 1 have the same content")
	}

	for _, d := range []dtype.DType{dtype.F16, dtype.BF16, dtype.F32, dtype.F64, dtype.C64, dtype.BOOL} {
		ts := mustPlan(t, Spec{Tensors: 1, TotalBytes: 1 << 16, DType: d, Shapes: ShapeFlat})
		raw, _ := io.ReadAll(ts[0].Content())
		for i := 0; i < len(raw); i += d.Size() {
			if !finite(d, raw[i:i+d.Size()]) {
				t.Fatalf("%v value %x at byte %d is not finite (or not 0/1)", d, raw[i:i+d.Size()], i)
			}
		}
	}
}

func finite(d dtype.DType, b []byte) bool {
	switch d {
	case dtype.F16:
		return binary.LittleEndian.Uint16(b)&0x7c00 != 0x7c00
	case dtype.BF16:
		return binary.LittleEndian.Uint16(b)&0x7f80 != 0x7f80
	case dtype.F32:
		f := math.Float32frombits(binary.LittleEndian.Uint32(b))
		return !math.IsNaN(float64(f)) && !math.IsInf(float64(f), 0)
	case dtype.C64:
		return finite(dtype.F32, b[:4]) && finite(dtype.F32, b[4:])
	case dtype.F64:
		f := math.Float64frombits(binary.LittleEndian.Uint64(b))
		return !math.IsNaN(f) && !math.IsInf(f, 0)
	case dtype.BOOL:
		return b[0] <= 1
	}
	return true
}

// TestZipStructure reads generated zips back with archive/zip: torch's record names and order,
// stored records 64-byte aligned, CRCs right (archive/zip checks them), contents as planned.
func TestZipStructure(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
	}{
		{"stored f16", Spec{Tensors: 12, TotalBytes: 12 * 3000, Seed: 1}},
		{"stored bf16 mixed, 1001 tensors", Spec{Tensors: 1001, TotalBytes: 1001 * 70, DType: dtype.BF16, Shapes: ShapeMixed}},
		{"stored without byteorder, own prefix", Spec{Tensors: 3, TotalBytes: 3 * 17, DType: dtype.U8, NoByteOrder: true, Prefix: "pytorch_model"}},
		{"deflated f32", Spec{Tensors: 5, TotalBytes: 5 * 1 << 20, DType: dtype.F32, Format: ZipDeflated}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := Write(&buf, tt.spec); err != nil {
				t.Fatal(err)
			}
			zr, err := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
			if err != nil {
				t.Fatal(err)
			}
			tensors := mustPlan(t, tt.spec)
			prefix := cmp(tt.spec.Prefix, "archive")
			want := []string{prefix + "/data.pkl"}
			if !tt.spec.NoByteOrder {
				want = append(want, prefix+"/byteorder")
			}
			keys := make([]string, len(tensors))
			for i, x := range tensors {
				keys[i] = x.Key
			}
			slices.Sort(keys)
			for _, k := range keys {
				want = append(want, prefix+"/data/"+k)
			}
			want = append(want, prefix+"/version")
			var got []string
			contents := map[string][]byte{}
			for _, f := range zr.File {
				got = append(got, f.Name)
				wantMethod := uint16(zip.Store)
				if tt.spec.Format == ZipDeflated {
					wantMethod = zip.Deflate
				}
				if f.Method != wantMethod || f.Flags != 0x0808 {
					t.Errorf("%s: method %d flags %#x, want %d 0x0808", f.Name, f.Method, f.Flags, wantMethod)
				}
				if off, err := f.DataOffset(); err != nil || (wantMethod == zip.Store && off%64 != 0) {
					t.Errorf("%s: data offset %d (%v), want a multiple of 64", f.Name, off, err)
				}
				rc, err := f.Open()
				if err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(rc) // archive/zip checks the CRC at EOF
				if err != nil {
					t.Fatalf("%s: %v", f.Name, err)
				}
				contents[f.Name] = b
			}
			if !slices.Equal(got, want) {
				t.Fatalf("records %q\nwant %q", got, want)
			}
			if v := string(contents[prefix+"/version"]); v != "3\n" {
				t.Errorf("version = %q, want \"3\\n\"", v)
			}
			if bo, ok := contents[prefix+"/byteorder"]; ok && string(bo) != "little" {
				t.Errorf("byteorder = %q, want little", bo)
			}
			if !bytes.Equal(contents[prefix+"/data.pkl"], stateDict(tensors, false)) {
				t.Error("data.pkl differs from the planned state dict")
			}
			for _, x := range tensors {
				wantData, _ := io.ReadAll(x.Content())
				if !bytes.Equal(contents[prefix+"/data/"+x.Key], wantData) {
					t.Errorf("%s: record data/%s differs from its content", x.Name, x.Key)
				}
			}
		})
	}
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// TestLegacyStructure walks the raw storage area after the pickles: keys in sorted order, an
// int64 element count, then the bytes; nothing after the last storage.
func TestLegacyStructure(t *testing.T) {
	spec := Spec{Tensors: 11, TotalBytes: 11 * 40, DType: dtype.F32, Format: Legacy, Shapes: ShapeMixed, Seed: 3}
	var buf bytes.Buffer
	if err := Write(&buf, spec); err != nil {
		t.Fatal(err)
	}
	tensors := mustPlan(t, spec)
	keys := make([]string, len(tensors))
	for i, x := range tensors {
		keys[i] = x.Key
	}
	slices.Sort(keys)
	head := slices.Concat(legacyMagic, legacyVersion, legacySysInfo, stateDict(tensors, true), keyList(keys))
	b := buf.Bytes()
	if !bytes.HasPrefix(b, head) {
		t.Fatal("file does not start with the five pickles")
	}
	rest := b[len(head):]
	for _, k := range keys {
		i := slices.IndexFunc(tensors, func(x Tensor) bool { return x.Key == k })
		x := tensors[i]
		if n := int64(binary.LittleEndian.Uint64(rest)); n != x.Numel() {
			t.Fatalf("storage %s: numel %d, want %d", k, n, x.Numel())
		}
		want, _ := io.ReadAll(x.Content())
		if !bytes.Equal(rest[8:8+len(want)], want) {
			t.Fatalf("storage %s: bytes differ from %s's content", k, x.Name)
		}
		rest = rest[8+len(want):]
	}
	if len(rest) != 0 {
		t.Errorf("%d bytes after the last storage", len(rest))
	}
}

// loadScript torch.loads each file named on the command line (weights_only, as the converter's
// users do) and prints name -> dtype, shape and SHA-256 of the bytes.
const loadScript = `
import hashlib, json, sys, torch
out = {}
for path in sys.argv[1:]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    out[path] = {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape),
                     "sha256": hashlib.sha256(v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()}
                 for k, v in sd.items()}
    out[path]["__type__"] = type(sd).__name__
print(json.dumps(out))
`

// TestTorchLoads cross-checks generated files with torch itself: torch.load reads the zip
// (stored and deflated) and the legacy file, and finds the planned names, dtypes, shapes and
// bytes. Skipped when /usr/bin/python3 has no torch (Debian: apt-get install python3-torch).
func TestTorchLoads(t *testing.T) {
	if err := exec.Command("/usr/bin/python3", "-c", "import torch").Run(); err != nil {
		t.Skipf("no torch in /usr/bin/python3: %v", err)
	}
	dir := t.TempDir()
	specs := map[string]Spec{
		"zip.pt":      {Tensors: 7, TotalBytes: 7 * 4000, Shapes: ShapeMixed, Seed: 11},
		"bf16.pt":     {Tensors: 1001, TotalBytes: 1001 * 64, DType: dtype.BF16, Seed: 12},
		"deflated.pt": {Tensors: 4, TotalBytes: 4 * 5000, DType: dtype.F32, Format: ZipDeflated, Seed: 13},
		"legacy.pt":   {Tensors: 12, TotalBytes: 12 * 999, DType: dtype.F64, Format: Legacy, Shapes: ShapeMixed, Seed: 14},
		"bool.pt":     {Tensors: 3, TotalBytes: 3 * 10, DType: dtype.BOOL, Format: Legacy, Seed: 15},
	}
	args := []string{"-c", loadScript}
	for name, spec := range specs {
		p := filepath.Join(dir, name)
		if err := WriteFile(p, spec); err != nil {
			t.Fatal(err)
		}
		args = append(args, p)
	}
	cmd := exec.Command("/usr/bin/python3", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("torch.load: %v\n%s", err, stderr.String())
	}
	type loaded struct {
		DType  string  `json:"dtype"`
		Shape  []int64 `json:"shape"`
		SHA256 string  `json:"sha256"`
	}
	var got map[string]map[string]json.RawMessage
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for name, spec := range specs {
		file := got[filepath.Join(dir, name)]
		if typ := string(file["__type__"]); typ != `"OrderedDict"` {
			t.Errorf("%s: root is %s, want OrderedDict", name, typ)
		}
		tensors := mustPlan(t, spec)
		if len(file) != len(tensors)+1 {
			t.Errorf("%s: torch found %d tensors, want %d", name, len(file)-1, len(tensors))
		}
		for _, x := range tensors {
			var l loaded
			if err := json.Unmarshal(file[x.Name], &l); err != nil {
				t.Errorf("%s: %s: %v", name, x.Name, err)
				continue
			}
			if l.DType != x.DType.Torch() || !slices.Equal(l.Shape, x.Shape) || l.SHA256 != x.SHA256() {
				t.Errorf("%s: %s: torch sees %s %v %s, want %s %v %s", name, x.Name,
					l.DType, l.Shape, l.SHA256, x.DType.Torch(), x.Shape, x.SHA256())
			}
		}
	}
}

func TestWriteFileRemovesPartialFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad.pt")
	if err := WriteFile(p, Spec{}); err == nil {
		t.Fatal("WriteFile with an empty spec succeeded")
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("partial file left behind: %v", err)
	}
}

func BenchmarkWrite(b *testing.B) {
	for _, f := range []Format{ZipStored, ZipDeflated, Legacy} {
		b.Run(f.String(), func(b *testing.B) {
			spec := Spec{Format: f, Tensors: 16, TotalBytes: 64 << 20}
			b.SetBytes(spec.TotalBytes)
			for b.Loop() {
				if err := Write(io.Discard, spec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("many-small", func(b *testing.B) {
		spec := ManySmall(1)
		b.SetBytes(spec.TotalBytes)
		for b.Loop() {
			if err := Write(io.Discard, spec); err != nil {
				b.Fatal(err)
			}
		}
	})
}

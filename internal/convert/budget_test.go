package convert

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/synth"
	"github.com/ptsafe/converter/internal/unpickler"
)

// writeViews writes the synthetic checkpoint v describes into dir and returns its path.
func writeViews(t testing.TB, dir string, v synth.Views) string {
	t.Helper()
	var buf bytes.Buffer
	if err := synth.WriteViews(&buf, v); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "model.pt")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// viewsOracle returns the bytes each view of v should convert to, element by element from the
// storage, keyed by tensor name.
func viewsOracle(t testing.TB, v synth.Views) map[string][]byte {
	t.Helper()
	st := v.Storage()
	storage, err := io.ReadAll(st.Content())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for i := range v.Count {
		ref := &unpickler.TensorRef{DType: st.DType, Shape: v.Shape, Stride: v.Stride, Offset: v.Offset(i)}
		out[fmt.Sprintf("views.%d", i)] = naiveGather(ref, storage)
	}
	return out
}

// TestOutputBudget feeds checkpoints whose output is far larger than their input (broadcast
// views, a huge storage deflated into a tiny record, a strided view that needs a huge record
// inflated) and requires a limit fault naming max-output-ratio from the plan, before any byte is
// written: scan refuses them too, and convert leaves nothing in the output's directory. Raised
// limits admit the same files.
func TestOutputBudget(t *testing.T) {
	broadcast := func(elems int64, count int) synth.Views {
		// Each view starts at its own element, so none is an alias of another.
		return synth.Views{Format: synth.ZipStored, StorageElems: int64(count), Count: count, Shape: []int64{elems}, Stride: []int64{0}, Step: 1}
	}
	cases := []struct {
		name    string
		v       synth.Views
		lim     limits.Limits
		wantErr string // "" converts
		why     string
	}{
		{"broadcast-2GiB", broadcast(1<<29, 1), limits.Limits{}, "output of at least 2147483648 tensor bytes",
			"a 4-byte storage viewed with stride 0 as 2^29 float32 elements"},
		{"many-broadcasts", broadcast(1<<20, 1024), limits.Limits{}, "max-output-ratio 16",
			"1024 views of 4 MiB each: the sum counts, not each view"},
		{"broadcast-under-default-slack", broadcast(1<<19, 1), limits.Limits{}, "",
			"2 MiB of output is within the 64 MiB slack"},
		{"broadcast-over-lowered-slack", broadcast(1<<19, 1), limits.Limits{MaxOutputSlack: 1 << 20}, "max-output-slack 1048576",
			"the same 2 MiB over a 1 MiB slack"},
		{"broadcast-admitted-by-raised-ratio", broadcast(1<<19, 1), limits.Limits{MaxOutputSlack: 1 << 20, MaxOutputRatio: 100_000}, "",
			"the same 2 MiB within 100,000 x the input"},
		{"huge-storage-tiny-record", synth.Views{Format: synth.ZipDeflated, StorageElems: 2 << 20, Zeros: true,
			Count: 1, Shape: []int64{2 << 20}, Stride: []int64{1}}, limits.Limits{MaxOutputSlack: 1 << 20}, "max-output-ratio",
			"8 MiB of zeros deflate to 8 KiB"},
		{"huge-scratch-for-a-strided-view", synth.Views{Format: synth.ZipDeflated, StorageElems: 2 << 20, Zeros: true,
			Count: 1, Shape: []int64{4}, Stride: []int64{2}}, limits.Limits{MaxOutputSlack: 1 << 20}, "inflating record \"archive/data/0\" (8388608 bytes)",
			"a 16-byte view needs its whole 8 MiB record inflated for random access"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			src := writeViews(t, dir, c.v)
			outDir := t.TempDir()
			opts := Options{Limits: c.lim}
			m, err := File(context.Background(), src, filepath.Join(outDir, "out.safetensors"), opts)
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("convert: %v (%s)", err, c.why)
				}
				if m.Output.Size <= m.Source.Size {
					t.Fatalf("output %d bytes from %d: the case does not amplify", m.Output.Size, m.Source.Size)
				}
				return
			}
			if fault.KindOf(err) != fault.Limit || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("convert: %v; want a limit fault containing %q (%s)", err, c.wantErr, c.why)
			}
			if es, _ := os.ReadDir(outDir); len(es) != 0 {
				t.Errorf("the output directory holds %d files after the refusal", len(es))
			}
			sm, err := Scan(context.Background(), src, opts)
			if sm == nil || fault.KindOf(err) != fault.Limit {
				t.Fatalf("scan: %v; want a manifest and a limit fault", err)
			}
			if sm.Error == nil || sm.Error.Type != fault.Limit || !strings.Contains(sm.Error.Detail, c.wantErr) {
				t.Errorf("scan: %+v; want the same limit refusal", sm.Error)
			}
		})
	}
}

// TestMinFreeBytes checks the free-space reserve: a conversion that would leave less than
// MinFreeBytes free on the output's file system is a limit fault before writing; a reserve it
// fits in converts.
func TestMinFreeBytes(t *testing.T) {
	src := writeViews(t, t.TempDir(), synth.Views{Format: synth.ZipStored, StorageElems: 1024, Count: 1,
		Shape: []int64{1024}, Stride: []int64{1}})
	cases := []struct {
		name    string
		reserve int64
		wantErr bool
	}{
		{"no reserve", 0, false},
		{"one byte", 1, false},
		{"more than any disk", 1 << 62, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			outDir := t.TempDir()
			_, err := File(context.Background(), src, filepath.Join(outDir, "out.safetensors"), Options{MinFreeBytes: c.reserve})
			if !c.wantErr {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if fault.KindOf(err) != fault.Limit || !strings.Contains(err.Error(), fmt.Sprintf("would leave less than %d bytes free", c.reserve)) {
				t.Fatalf("convert: %v; want a limit fault naming the reserve", err)
			}
			if es, _ := os.ReadDir(outDir); len(es) != 0 {
				t.Errorf("the output directory holds %d files after the refusal", len(es))
			}
		})
	}
}

// TestViewsShareOneRecord converts checkpoints of many views into one storage, stored and
// deflated, contiguous, strided, overlapping and broadcast, and compares every tensor with an
// element-by-element oracle; cvConvert also verifies each output against its source. Deflated
// records go through one scratch file each, whatever the number of views.
func TestViewsShareOneRecord(t *testing.T) {
	cases := []struct {
		name          string
		shape, stride []int64
		step          int64
	}{
		{"contiguous-slices", []int64{16}, []int64{1}, 16},
		{"overlapping-rows", []int64{4, 8}, []int64{8, 1}, 3},
		{"transposed", []int64{8, 4}, []int64{1, 8}, 5},
		{"every-other", []int64{10}, []int64{2}, 7},
		{"broadcast-rows", []int64{3, 5}, []int64{0, 1}, 11},
		{"wide-span", []int64{2}, []int64{3000}, 1},
	}
	for _, c := range cases {
		for _, format := range []synth.Format{synth.ZipStored, synth.ZipDeflated, synth.Legacy} {
			t.Run(c.name+"/"+format.String(), func(t *testing.T) {
				v := synth.Views{Format: format, DType: dtype.F32, StorageElems: 4096, Count: 300,
					Shape: c.shape, Stride: c.stride, Step: c.step, Seed: 7}
				var buf bytes.Buffer
				if err := synth.WriteViews(&buf, v); err != nil {
					t.Fatal(err)
				}
				m, err := cvConvert(t, buf.Bytes(), "model.pt")
				if err != nil {
					t.Fatal(err)
				}
				want := viewsOracle(t, v)
				if len(m.Tensors)+len(m.Aliases) != len(want) {
					t.Fatalf("%d tensors and %d aliases; want %d names", len(m.Tensors), len(m.Aliases), len(want))
				}
				for _, tt := range m.Tensors {
					sum := sha256.Sum256(want[tt.Name])
					if got, w := tt.SHA256, hex.EncodeToString(sum[:]); got != w {
						t.Errorf("%s: sha256 %s; the oracle gives %s", tt.Name, got, w)
					}
				}
			})
		}
	}
}

// TestScratchInflatesOnce checks the scratch files of a stream: a record is inflated at its
// first reader into a file that is already unlinked, later readers get the same file, and the
// file is closed after the planned number of readers.
func TestScratchInflatesOnce(t *testing.T) {
	src := writeViews(t, t.TempDir(), synth.Views{Format: synth.ZipDeflated, StorageElems: 1024, Count: 3,
		Shape: []int64{8}, Stride: []int64{2}, Step: 1})
	m := newManifest(src, Options{})
	f, err := OpenInput(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := open(f, Options{}, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.inflate) != 1 || p.scratchBytes != 4096 {
		t.Fatalf("plan inflates %d records, %d bytes; want one record of 4096 bytes", len(p.inflate), p.scratchBytes)
	}
	rec := p.tensors[0].record
	if p.inflate[rec] != 3 {
		t.Fatalf("plan counts %d readers; want 3", p.inflate[rec])
	}
	p.scratchDir = t.TempDir()
	sc := p.newScratch(context.Background())
	first, err := sc.get(rec)
	if err != nil {
		t.Fatal(err)
	}
	if es, _ := os.ReadDir(p.scratchDir); len(es) != 0 {
		t.Errorf("scratch directory holds %d entries; the scratch file should be unlinked at once", len(es))
	}
	for i := range 2 {
		sc.release(rec)
		again, err := sc.get(rec)
		if err != nil {
			t.Fatal(err)
		}
		if again != first {
			t.Fatalf("reader %d got another scratch file: the record was inflated again", i+2)
		}
	}
	sc.release(rec)
	if _, err := first.Stat(); err == nil {
		t.Errorf("scratch file still open after its last reader")
	}
}

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r io.ReaderAt
	n int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.n += int64(len(p))
	return c.r.ReadAt(p, off)
}

// TestGatherReadsLittleForSparseViews requires a view that picks a few elements out of a wide
// span to read about what it gathers, not the span: a million such views of one record must not
// cost a million spans.
func TestGatherReadsLittleForSparseViews(t *testing.T) {
	storage := make([]byte, 4<<20)
	cases := []struct {
		name          string
		shape, stride []int64
		maxRead       int64
	}{
		{"two-elements-4MiB-apart", []int64{2}, []int64{1<<20 - 1}, 8},
		{"one-column", []int64{1024, 1}, []int64{1024, 1}, 4 << 10},
		{"dense-transpose-reads-its-span", []int64{64, 64}, []int64{1, 64}, 16 << 10},
	}
	for _, c := range cases {
		ref := &unpickler.TensorRef{DType: dtype.F32, Shape: c.shape, Stride: c.stride}
		src := &countingReaderAt{r: bytes.NewReader(storage)}
		s := &collectSink{room: make([]byte, chunkSize)}
		if err := gather(ref, src, s, maxSpanInMemory); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if src.n > c.maxRead {
			t.Errorf("%s: read %d bytes to gather %d; want at most %d", c.name, src.n, s.out.Len(), c.maxRead)
		}
	}
}

// TestDroppedCapped checks that the manifest lists at most max-dropped-listed non-tensor
// leaves and counts the rest, so that a small pickle of many None leaves makes a small manifest.
func TestDroppedCapped(t *testing.T) {
	pickle := func(leaves int) []byte {
		p := newAdvPickle().op('}').str("w").tensor("0", 4).op('s')
		for i := range leaves {
			p.str(fmt.Sprintf("n%d", i)).op('N', 's')
		}
		return p.stop()
	}
	cases := []struct {
		name                 string
		leaves, limit        int
		wantListed, wantMore int
	}{
		{"few", 3, 0, 3, 0},
		{"at the default cap", 1000, 0, 1000, 0},
		{"over the default cap", 2500, 0, 1000, 1500},
		{"configured cap", 50, 10, 10, 40},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := filepath.Join(t.TempDir(), "model.pt")
			if err := os.WriteFile(src, advCheckpoint(t, pickle(c.leaves)), 0o600); err != nil {
				t.Fatal(err)
			}
			m, err := Scan(context.Background(), src, Options{Limits: limits.Limits{MaxDroppedListed: c.limit}})
			if err != nil || m.Error != nil {
				t.Fatalf("scan: %v %+v", err, m.Error)
			}
			if len(m.Dropped) != c.wantListed || m.DroppedMore != c.wantMore {
				t.Errorf("dropped %d listed + %d more; want %d + %d", len(m.Dropped), m.DroppedMore, c.wantListed, c.wantMore)
			}
		})
	}
}

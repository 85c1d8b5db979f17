package convert

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/synth"
	"github.com/ptsafe/converter/internal/unpickler"
)

// benchCheckpoint writes a synthetic checkpoint of 64 MiB of fp16 in 16 tensors, once per run.
func benchCheckpoint(b *testing.B, format synth.Format) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "model.pt")
	spec := synth.Spec{Format: format, Tensors: 16, TotalBytes: 64 << 20, DType: dtype.F16, Seed: 1}
	if err := synth.WriteFile(path, spec); err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkStreamHash measures the source side of a conversion without the disk: reading every
// tensor into packed chunks and hashing each (what verify --source does).
func BenchmarkStreamHash(b *testing.B) {
	for _, format := range []synth.Format{synth.ZipStored, synth.ZipDeflated, synth.Legacy} {
		b.Run(format.String(), func(b *testing.B) {
			src := benchCheckpoint(b, format)
			m := newManifest(src, Options{})
			f, err := OpenInput(src)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			p, err := open(f, Options{}, m)
			if err != nil {
				b.Fatal(err)
			}
			p.scratchDir = b.TempDir()
			b.SetBytes(p.layout.Size)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.sourceDigests(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConvert measures a whole conversion of a 64 MiB checkpoint: parse, stream, write,
// re-read, verify, fsync and rename.
func BenchmarkConvert(b *testing.B) {
	src := benchCheckpoint(b, synth.ZipStored)
	dst := filepath.Join(b.TempDir(), "model.safetensors")
	st, _ := os.Stat(src)
	b.SetBytes(st.Size())
	for b.Loop() {
		if _, err := File(context.Background(), src, dst, Options{Overwrite: true}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkManyViews converts checkpoints of 10,000, 100,000 and 1,000,000 small transposed
// views into one 4 MiB storage record, deflated or stored, and verifies each output against its
// source: the shape of a hostile file that once made every view inflate its record again, and
// whose per-view cost (pickle VM, flattening, planning, verifying) must stay small. The million
// views need more than the default max-tensors, max-objects and max-walk-nodes, which are raised
// here as a user would. Reproduce (about a minute on 2 cores):
//
//	go test -run '^$' -bench 'ManyViews/views=1000000/' -benchtime 1x ./internal/convert
//
// and profile one case with -cpuprofile cpu.out, then go tool pprof -top cpu.out.
func BenchmarkManyViews(b *testing.B) {
	lim := limits.Limits{MaxTensors: 2_000_000, MaxObjects: 64_000_000, MaxWalkNodes: 64_000_000}
	for _, format := range []synth.Format{synth.ZipDeflated, synth.ZipStored} {
		for _, n := range []int{10_000, 100_000, 1_000_000} {
			v := synth.Views{Format: format, StorageElems: 1 << 20, Count: n,
				Shape: []int64{4, 4}, Stride: []int64{1, 64}, Step: 97, Seed: 1}
			var src, dst string
			// The file is written once, for the first case that runs, into the parent's
			// directory, which outlives both cases.
			setup := func() {
				if src == "" {
					src = writeViews(b, b.TempDir(), v)
					dst = filepath.Join(b.TempDir(), "model.safetensors")
				}
			}
			b.Run(fmt.Sprintf("views=%d/%v/convert", n, format), func(b *testing.B) {
				setup()
				for b.Loop() {
					if _, err := File(context.Background(), src, dst, Options{Limits: lim, Overwrite: true}); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(fmt.Sprintf("views=%d/%v/verify-source", n, format), func(b *testing.B) {
				setup()
				if _, err := os.Stat(dst); err != nil {
					b.Skip("no output: run the convert case too")
				}
				for b.Loop() {
					if _, err := Verify(context.Background(), dst, src, Options{Limits: lim, ScratchDir: b.TempDir()}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkGather measures gathering a transposed 2048x2048 float32 view (16 MiB) into
// row-major order from a file: with the whole span read into memory (it fits maxSpanInMemory),
// in tiles (as a view larger than maxSpanInMemory is), and, for comparison, one positioned read
// per element (what a limit too small for a tile leaves).
func BenchmarkGather(b *testing.B) {
	const n = 2048
	storage := make([]byte, n*n*4)
	for i := range storage {
		storage[i] = byte(i)
	}
	path := filepath.Join(b.TempDir(), "storage")
	if err := os.WriteFile(path, storage, 0o600); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	ref := &unpickler.TensorRef{DType: dtype.F32, Shape: []int64{n, n}, Stride: []int64{1, n},
		Storage: &unpickler.StorageRef{NBytes: int64(len(storage))}}
	s := discardSink(make([]byte, chunkSize))
	for _, c := range []struct {
		name  string
		limit int64
	}{{"span-in-memory", maxSpanInMemory}, {"tiles", 4 << 20}, {"elements", 4 << 10}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(storage)))
			for b.Loop() {
				if err := gather(ref, f, s, c.limit); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSwap measures converting big-endian float32 data to little-endian in place.
func BenchmarkSwap(b *testing.B) {
	for _, unit := range []int{2, 4, 8} {
		b.Run(map[int]string{2: "16bit", 4: "32bit", 8: "64bit"}[unit], func(b *testing.B) {
			data := make([]byte, chunkSize)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				swapBytes(data, unit)
			}
		})
	}
}

// discardSink is a sink that offers the same buffer again and again.
type discardSink []byte

func (s discardSink) space() ([]byte, error) { return s, nil }
func (discardSink) put([]byte)               {}

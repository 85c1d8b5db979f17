package convert

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/unpickler"
)

// collectSink gathers what is put into it, offering small spaces of whole elements so that
// callers must split their output.
type collectSink struct {
	room []byte
	out  bytes.Buffer
}

func (c *collectSink) space() ([]byte, error) { return c.room, nil }
func (c *collectSink) put(b []byte)           { c.out.Write(b) }

// naiveGather is the oracle: every element of the view, in row-major order, read one by one.
func naiveGather(t *unpickler.TensorRef, storage []byte) []byte {
	isz := int64(t.DType.Size())
	var out []byte
	idx := make([]int64, len(t.Shape))
	for range t.Numel() {
		pos := t.Offset
		for i, v := range idx {
			pos += v * t.Stride[i]
		}
		out = append(out, storage[pos*isz:(pos+1)*isz]...)
		next(idx, t.Shape)
	}
	return out
}

// TestGatherPaths gathers random permuted, sliced and strided views three ways (whole span in
// memory, in tiles, element by element) and compares each with a one-element-at-a-time oracle.
func TestGatherPaths(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	dtypes := []dtype.DType{dtype.F32, dtype.F16, dtype.U8, dtype.F64}
	tiled := 0
	for trial := range 400 {
		dt := dtypes[trial%len(dtypes)]
		isz := int64(dt.Size())
		// A contiguous tensor of 1-4 dims, some of size 1, then a permutation of its dims and,
		// sometimes, a slice with a step along one of them.
		n := 1 + rng.IntN(4)
		base := make([]int64, n)
		for i := range base {
			base[i] = int64(1 + rng.IntN(7))
		}
		stride := make([]int64, n)
		numel := int64(1)
		for i := n - 1; i >= 0; i-- {
			stride[i] = numel
			numel *= base[i]
		}
		perm := rng.Perm(n)
		ref := &unpickler.TensorRef{DType: dt, Shape: make([]int64, n), Stride: make([]int64, n)}
		for i, p := range perm {
			ref.Shape[i], ref.Stride[i] = base[p], stride[p]
		}
		if rng.IntN(3) == 0 {
			d := rng.IntN(n)
			if ref.Shape[d] > 2 {
				// Every other index, from the second: 1, 3, 5, ...
				ref.Offset += ref.Stride[d]
				ref.Shape[d] /= 2
				ref.Stride[d] *= 2
			}
		}
		storage := make([]byte, numel*isz)
		for i := range storage {
			storage[i] = byte(rng.Uint32())
		}
		want := naiveGather(ref, storage)
		for _, limit := range []int64{1 << 40, 64 * isz, isz} {
			if _, ok := tileDim(ref, limit/2); ok && limit < numel*isz {
				tiled++
			}
			s := &collectSink{room: make([]byte, 3*isz)}
			if err := gather(ref, bytes.NewReader(storage), s, limit); err != nil {
				t.Fatalf("shape %v stride %v offset %d limit %d: %v", ref.Shape, ref.Stride, ref.Offset, limit, err)
			}
			if !bytes.Equal(s.out.Bytes(), want) {
				t.Fatalf("shape %v stride %v offset %d %s limit %d: gathered bytes differ from the oracle",
					ref.Shape, ref.Stride, ref.Offset, dt, limit)
			}
		}
	}
	if tiled < 50 {
		t.Errorf("only %d gathers took the tiled path; the test does not exercise it", tiled)
	}
	t.Logf("%d tiled gathers", tiled)
}

// FuzzGather gathers arbitrary views (1 to 4 dims, any strides including 0, any offset) over a
// storage just large enough for them, with the whole span in memory and with limits small
// enough to force tiles or element reads, and compares each with the oracle.
func FuzzGather(f *testing.F) {
	f.Add([]byte{0, 2, 3, 4, 1, 3, 0, 0})    // transposed 3x4 float32
	f.Add([]byte{1, 3, 2, 2, 2, 1, 4, 2, 5}) // permuted 3-D float16, offset 5
	f.Add([]byte{2, 2, 5, 0, 1, 2, 0, 9})    // a broadcast (stride 0) dim
	dtypes := []dtype.DType{dtype.F32, dtype.F16, dtype.U8, dtype.F64}
	f.Fuzz(func(t *testing.T, b []byte) {
		at := func(i int) int64 {
			if i < len(b) {
				return int64(b[i])
			}
			return 0
		}
		dt := dtypes[at(0)%int64(len(dtypes))]
		n := int(1 + at(1)%4)
		ref := &unpickler.TensorRef{DType: dt, Shape: make([]int64, n), Stride: make([]int64, n)}
		numel, last := int64(1), int64(0)
		for i := range n {
			ref.Shape[i] = 1 + at(2+i)%9
			ref.Stride[i] = at(2+n+i) % 33
			numel *= ref.Shape[i]
			last += (ref.Shape[i] - 1) * ref.Stride[i]
		}
		ref.Offset = at(2+2*n) % 17
		isz := int64(dt.Size())
		storage := make([]byte, (ref.Offset+last+1)*isz)
		for i := range storage {
			storage[i] = byte(i*131 + i>>8)
		}
		want := naiveGather(ref, storage)
		for _, limit := range []int64{1 << 40, 64 * isz, isz} {
			s := &collectSink{room: make([]byte, (1+at(3+2*n)%5)*isz)}
			if err := gather(ref, bytes.NewReader(storage), s, limit); err != nil {
				t.Fatalf("shape %v stride %v offset %d limit %d: %v", ref.Shape, ref.Stride, ref.Offset, limit, err)
			}
			if !bytes.Equal(s.out.Bytes(), want) {
				t.Fatalf("shape %v stride %v offset %d %s limit %d: %d elements gathered differ from the oracle",
					ref.Shape, ref.Stride, ref.Offset, dt, limit, numel)
			}
		}
	})
}

package convert

import (
	"io"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/unpickler"
)

// maxSpanInMemory bounds the storage span a strided view is gathered from in memory; larger
// spans are gathered with positioned reads, so memory stays flat whatever the tensor size.
const maxSpanInMemory = 32 << 20

// maxSpanWaste bounds the storage bytes per gathered byte that reading a view's whole span may
// cost: a view that picks a few elements from a wide span (a column of a matrix, or each of a
// million small views of one record) reads only what it needs instead.
const maxSpanWaste = 8

// minSpanRead is a span always worth reading whole when it fits memLimit: one read of a page
// costs about what one read of an element does.
const minSpanRead = 4 << 10

// stridedPiece is the most of a strided run's span read at once, and maxPieceStride the
// largest distance between its elements (in bytes) for which reading the span beats one read
// per element.
const (
	stridedPiece   = 1 << 20
	maxPieceStride = 4 << 10
)

// gather puts a strided view's elements into s in row-major order, holding at most memLimit
// bytes of storage (maxSpanInMemory; tests pass less). The span of storage the view covers is
// read into memory when it fits and is not much larger than the view (maxSpanWaste); otherwise a view whose elements lie contiguously along some
// outer dimension (a transposed or permuted tensor) is gathered in tiles (gatherTiled), and
// any other view run by run, or element by element, where it lies.
func gather(t *unpickler.TensorRef, src io.ReaderAt, s sink, memLimit int64) error {
	isz := int64(t.DType.Size())
	dims := len(t.Shape)
	// origin is the storage byte offset that position 0 of src stands for.
	origin, spanLen := int64(0), spanBytes(t)
	inMemory := spanLen <= memLimit && spanLen <= max(maxSpanWaste*t.Numel()*isz, minSpanRead)
	if !inMemory {
		if p, ok := tileDim(t, memLimit/2); ok {
			return gatherTiled(t, src, s, p, memLimit/2)
		}
	}
	// Row-major walk over all dims but the innermost, whose elements are read as one run when
	// its stride is 1. From the file, a small stride reads a piece of the run's span at once and
	// picks its elements (reading up to stridedPiece/elements wasted bytes costs less than a
	// system call per element).
	inner, innerStride := int64(1), int64(1)
	if dims > 0 {
		inner, innerStride = t.Shape[dims-1], t.Stride[dims-1]
	}
	var piece []byte
	if inMemory {
		buf := make([]byte, spanLen)
		if _, err := src.ReadAt(buf, t.Offset*isz); err != nil {
			return fault.Wrap(fault.Malformed, "", err, "read view span")
		}
		src, origin = bytesAt(buf), t.Offset*isz
	} else if innerStride > 1 && innerStride*isz <= maxPieceStride {
		piece = make([]byte, stridedPiece)
	}
	idx := make([]int64, max(dims-1, 0))
	var out []byte
	n := 0
	rows := t.Numel() / inner
	for row := int64(0); row < rows; row++ {
		base := t.Offset
		for i, v := range idx {
			base += v * t.Stride[i]
		}
		for j := int64(0); j < inner; {
			if n == len(out) {
				if n > 0 {
					s.put(out)
				}
				var err error
				if out, err = s.space(); err != nil {
					return err
				}
				n = 0
			}
			run := int64(1)
			pos := (base+j*innerStride)*isz - origin
			switch {
			case innerStride == 1:
				run = min(inner-j, int64(len(out)-n)/isz)
				if _, err := src.ReadAt(out[n:n+int(run*isz)], pos); err != nil {
					return fault.Wrap(fault.Malformed, "", err, "read view elements")
				}
			case piece != nil:
				step := innerStride * isz
				run = min(inner-j, int64(len(out)-n)/isz, (int64(len(piece))-isz)/step+1)
				span := piece[:(run-1)*step+isz]
				if _, err := src.ReadAt(span, pos); err != nil {
					return fault.Wrap(fault.Malformed, "", err, "read view elements")
				}
				for k := int64(0); k < run; k++ {
					copy(out[int64(n)+k*isz:int64(n)+(k+1)*isz], span[k*step:k*step+isz])
				}
			default:
				if _, err := src.ReadAt(out[n:n+int(isz)], pos); err != nil {
					return fault.Wrap(fault.Malformed, "", err, "read view element")
				}
			}
			n += int(run * isz)
			j += run
		}
		next(idx, t.Shape[:len(idx)])
	}
	if n > 0 {
		s.put(out[:n])
	}
	return nil
}

// spanBytes returns the length of the storage bytes a view with at least one element spans,
// from its first element to the end of its last.
func spanBytes(t *unpickler.TensorRef) int64 {
	last := t.Offset
	for i, d := range t.Shape {
		last += (d - 1) * t.Stride[i]
	}
	return (last - t.Offset + 1) * int64(t.DType.Size())
}

// tileDim picks the dimension a view is gathered along in tiles: an outer one (not the
// innermost) whose elements are contiguous in storage (stride 1, more than one element), whose
// slices of the dimensions after it fit tileBytes. The innermost dimension with stride 1 needs
// no tiles: gather reads its runs directly.
func tileDim(t *unpickler.TensorRef, tileBytes int64) (int, bool) {
	n := len(t.Shape)
	if n < 2 || t.Stride[n-1] == 1 {
		return 0, false
	}
	for p := n - 2; p >= 0; p-- {
		if t.Shape[p] > 1 && t.Stride[p] == 1 {
			slice := int64(t.DType.Size())
			for _, d := range t.Shape[p+1:] {
				slice *= d
			}
			return p, slice <= tileBytes
		}
	}
	return 0, false
}

// gatherTiled gathers a view along dimension p, whose elements are contiguous in storage. For
// each index of the dimensions before p, it fills a tile of at most tileBytes with c
// consecutive indices of p and all of the dimensions after it (a contiguous piece of the
// output): for each index of the dimensions after p it reads the c elements along p with one
// positioned read and scatters them into the tile. A transposed R x C matrix of 4-byte
// elements with 16 MiB tiles takes C reads of 4 MiB/C bytes per tile, not R x C reads of one
// element.
func gatherTiled(t *unpickler.TensorRef, src io.ReaderAt, s sink, p int, tileBytes int64) error {
	isz := int64(t.DType.Size())
	outer, after := t.Shape[:p], t.Shape[p+1:]
	inner := int64(1) // elements per index of p in a tile
	for _, d := range after {
		inner *= d
	}
	c := min(t.Shape[p], max(tileBytes/(inner*isz), 1))
	tile := make([]byte, c*inner*isz)
	run := make([]byte, c*isz)
	oidx := make([]int64, len(outer))
	aidx := make([]int64, len(after))
	for more := true; more; more = next(oidx, outer) {
		base := t.Offset
		for i, v := range oidx {
			base += v * t.Stride[i]
		}
		for a := int64(0); a < t.Shape[p]; a += c {
			n := min(c, t.Shape[p]-a)
			clear(aidx)
			for q := int64(0); q < inner; q++ {
				pos := base + a
				for i, v := range aidx {
					pos += v * t.Stride[p+1+i]
				}
				r := run[:n*isz]
				if _, err := src.ReadAt(r, pos*isz); err != nil {
					return fault.Wrap(fault.Malformed, "", err, "read view elements")
				}
				for i := int64(0); i < n; i++ {
					copy(tile[(i*inner+q)*isz:(i*inner+q+1)*isz], r[i*isz:(i+1)*isz])
				}
				next(aidx, after)
			}
			if err := putAll(s, tile[:n*inner*isz]); err != nil {
				return err
			}
		}
	}
	return nil
}

// next advances a row-major multi-index over shape; it reports false after the last index
// (leaving idx at zero), or at once for an empty shape.
func next(idx, shape []int64) bool {
	for i := len(idx) - 1; i >= 0; i-- {
		if idx[i]++; idx[i] < shape[i] {
			return true
		}
		idx[i] = 0
	}
	return false
}

// putAll copies b into s, through as many spaces as it takes.
func putAll(s sink, b []byte) error {
	for len(b) > 0 {
		sp, err := s.space()
		if err != nil {
			return err
		}
		n := copy(sp, b)
		s.put(sp[:n])
		b = b[n:]
	}
	return nil
}

// bytesAt is an in-memory io.ReaderAt.
type bytesAt []byte

func (b bytesAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(b)) {
		return 0, io.ErrUnexpectedEOF
	}
	return copy(p, b[off:]), nil
}

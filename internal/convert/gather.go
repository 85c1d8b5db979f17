package convert

import (
	"io"
	"os"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/torchzip"
	"github.com/ptsafe/converter/internal/unpickler"
)

// maxSpanInMemory bounds the storage span a strided view is gathered from in memory; larger
// spans are gathered with positioned reads, so memory stays flat whatever the tensor size.
const maxSpanInMemory = 32 << 20

// randomAccess returns positioned-read access to a record's bytes: the file itself for stored
// records, or a temporary file the record is inflated into (disk, never memory) for deflated
// ones.
func (p *plan) randomAccess(rec *torchzip.Record) (io.ReaderAt, func(), error) {
	if rec.Stored() {
		return rec.ReaderAt(), func() {}, nil
	}
	tmp, err := os.CreateTemp(p.scratchDir, ".inflate-*")
	if err != nil {
		return nil, nil, fault.Wrap(fault.Internal, rec.Entry, err, "scratch file")
	}
	release := func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}
	r, _ := rec.Open()
	if _, err := io.Copy(tmp, r); err != nil {
		release()
		return nil, nil, readErr(rec, err)
	}
	return tmp, release, nil
}

// gather puts a strided view's elements into s in row-major order. The span of storage the
// view covers is read into memory when it is small; otherwise each innermost run (or element)
// is read where it lies.
func gather(t *unpickler.TensorRef, src io.ReaderAt, s sink) error {
	isz := int64(t.DType.Size())
	dims := len(t.Shape)
	last := t.Offset
	for i, d := range t.Shape {
		last += (d - 1) * t.Stride[i]
	}
	// origin is the storage byte offset that position 0 of src stands for.
	origin, spanLen := int64(0), (last-t.Offset+1)*isz
	if spanLen <= maxSpanInMemory {
		buf := make([]byte, spanLen)
		if _, err := src.ReadAt(buf, t.Offset*isz); err != nil {
			return fault.Wrap(fault.Malformed, "", err, "read view span")
		}
		src, origin = bytesAt(buf), t.Offset*isz
	}
	// Row-major walk over all dims but the innermost, whose elements are read as one run when
	// its stride is 1.
	inner, innerStride := int64(1), int64(1)
	if dims > 0 {
		inner, innerStride = t.Shape[dims-1], t.Stride[dims-1]
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
			if innerStride == 1 {
				run = min(inner-j, int64(len(out)-n)/isz)
			}
			pos := (base+j*innerStride)*isz - origin
			if _, err := src.ReadAt(out[n:n+int(run*isz)], pos); err != nil {
				return fault.Wrap(fault.Malformed, "", err, "read view element")
			}
			n += int(run * isz)
			j += run
		}
		for i := len(idx) - 1; i >= 0; i-- {
			idx[i]++
			if idx[i] < t.Shape[i] {
				break
			}
			idx[i] = 0
		}
	}
	if n > 0 {
		s.put(out[:n])
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

package synth

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strings"
)

// The zip writer reproduces what torch's PyTorchStreamWriter gets from miniz
// (caffe2/serialize/inline_container.cc, third_party/miniz), verified against files torch 1.13
// wrote, including one over 4 GiB:
//   - local headers: version 0, flags 0x0808 (data descriptor, UTF-8), time, date, CRC and sizes 0;
//     extra = [ZIP64 field (usize and a zero csize if size >= 0xFFFFFFFF; offset if offset >=
//     0xFFFFFFFF)]
//     + "FB" field of 'Z' bytes padding the data start to a multiple of 64;
//   - a data descriptor after each record: 16 bytes, or 24 (64-bit sizes) when the local header
//     has a ZIP64 field;
//   - central directory entries with versions 0, no "FB" field, ZIP64 field as in the local header
//     (32-bit fields 0xFFFFFFFF where it applies);
//   - ZIP64 end record (made by 0x031e, needs 45) and locator always, then the classic end record
//     with counts and offsets clamped to 0xFFFF / 0xFFFFFFFF.
// Deflated records, which torch never writes, get the same headers with method 8, version 20 and
// no padding.
//
// torch's own padding arithmetic (getPadding) counts 4 bytes too many when one record needs both
// a 64-bit size and a 64-bit offset, leaving that record misaligned; this writer pads from the
// real header length, so it is always aligned.

const (
	zipAlign   = 64
	max32      = 0xFFFFFFFF
	flagsTorch = 0x0808
	chunkBytes = 1 << 20
)

type zipEntry struct {
	name         string
	offset       int64
	crc          uint32
	csize, usize int64
	method       uint16
}

type zipWriter struct {
	cw      countWriter
	deflate bool
	dir     []zipEntry
	buf     []byte
	fw      *flate.Writer
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func writeZip(w io.Writer, prefix string, tensors []Tensor, deflate, byteOrder bool) error {
	z := &zipWriter{cw: countWriter{w: w}, deflate: deflate, buf: make([]byte, chunkBytes)}
	pkl := stateDict(tensors, false)
	if err := z.record(prefix+"/data.pkl", int64(len(pkl)), bytes.NewReader(pkl)); err != nil {
		return err
	}
	if byteOrder {
		if err := z.record(prefix+"/byteorder", 6, strings.NewReader("little")); err != nil {
			return err
		}
	}
	// torch 1.6 to 2.6 write the storages in sorted key order (string order: 0, 1, 10, 11, 2, ...).
	sts, err := storages(tensors)
	if err != nil {
		return err
	}
	slices.SortFunc(sts, func(a, b *Tensor) int { return strings.Compare(a.Key, b.Key) })
	for _, t := range sts {
		if err := z.record(prefix+"/data/"+t.Key, t.Size(), t.Content()); err != nil {
			return err
		}
	}
	if err := z.record(prefix+"/version", 2, strings.NewReader("3\n")); err != nil {
		return err
	}
	return z.close()
}

// record writes one entry whose uncompressed content is the size bytes of src.
func (z *zipWriter) record(name string, size int64, src io.Reader) error {
	off := z.cw.n
	e := zipEntry{name: name, offset: off, usize: size, method: 0}
	if z.deflate {
		e.method = 8
	}
	bigSize, bigOff := size >= max32, off >= max32
	zip64 := bigSize || bigOff

	var extra []byte
	if zip64 {
		// miniz leaves the compressed size 0 in the local header's ZIP64 field.
		extra = zip64Extra(bigSize, bigOff, size, 0, off)
	}
	if !z.deflate {
		start := off + 30 + int64(len(name)) + int64(len(extra)) + 4
		pad := (zipAlign - start%zipAlign) % zipAlign
		extra = append(extra, 'F', 'B', byte(pad), byte(pad>>8))
		extra = append(extra, bytes.Repeat([]byte{'Z'}, int(pad))...)
	}
	h := make([]byte, 0, 30+len(name)+len(extra))
	h = binary.LittleEndian.AppendUint32(h, 0x04034b50)
	h = binary.LittleEndian.AppendUint16(h, versionNeeded(e.method))
	h = binary.LittleEndian.AppendUint16(h, flagsTorch)
	h = binary.LittleEndian.AppendUint16(h, e.method)
	h = append(h, make([]byte, 16)...) // time, date, crc, csize, usize
	h = binary.LittleEndian.AppendUint16(h, uint16(len(name)))
	h = binary.LittleEndian.AppendUint16(h, uint16(len(extra)))
	h = append(h, name...)
	h = append(h, extra...)
	if _, err := z.cw.Write(h); err != nil {
		return err
	}

	start := z.cw.n
	var dst io.Writer = &z.cw
	if z.deflate {
		if z.fw == nil {
			fw, err := flate.NewWriter(&z.cw, flate.BestSpeed)
			if err != nil {
				return err
			}
			z.fw = fw
		} else {
			z.fw.Reset(&z.cw)
		}
		dst = z.fw
	}
	crc := uint32(0)
	for left := size; left > 0; {
		b := z.buf[:min(left, int64(len(z.buf)))]
		if _, err := io.ReadFull(src, b); err != nil {
			return fmt.Errorf("%s: %w", name, errShortContent)
		}
		crc = crc32.Update(crc, crc32.IEEETable, b)
		if _, err := dst.Write(b); err != nil {
			return err
		}
		left -= int64(len(b))
	}
	if z.deflate {
		if err := z.fw.Close(); err != nil {
			return err
		}
	}
	e.crc, e.csize = crc, z.cw.n-start
	zip64 = zip64 || e.csize >= max32

	d := binary.LittleEndian.AppendUint32(make([]byte, 0, 24), 0x08074b50)
	d = binary.LittleEndian.AppendUint32(d, e.crc)
	if zip64 {
		d = binary.LittleEndian.AppendUint64(d, uint64(e.csize))
		d = binary.LittleEndian.AppendUint64(d, uint64(e.usize))
	} else {
		d = binary.LittleEndian.AppendUint32(d, uint32(e.csize))
		d = binary.LittleEndian.AppendUint32(d, uint32(e.usize))
	}
	if _, err := z.cw.Write(d); err != nil {
		return err
	}
	z.dir = append(z.dir, e)
	return nil
}

func versionNeeded(method uint16) uint16 {
	if method == 8 {
		return 20
	}
	return 0
}

// zip64Extra returns a ZIP64 extended information field holding the sizes (when big) and the
// local header offset (when big), in the order the format prescribes.
func zip64Extra(bigSize, bigOff bool, usize, csize, off int64) []byte {
	var body []byte
	if bigSize {
		body = binary.LittleEndian.AppendUint64(body, uint64(usize))
		body = binary.LittleEndian.AppendUint64(body, uint64(csize))
	}
	if bigOff {
		body = binary.LittleEndian.AppendUint64(body, uint64(off))
	}
	x := binary.LittleEndian.AppendUint16(nil, 1)
	x = binary.LittleEndian.AppendUint16(x, uint16(len(body)))
	return append(x, body...)
}

func clamp32(v int64) uint32 {
	if v >= max32 {
		return max32
	}
	return uint32(v)
}

func (z *zipWriter) close() error {
	cdOff := z.cw.n
	var b []byte
	for _, e := range z.dir {
		bigSize := e.usize >= max32 || e.csize >= max32
		bigOff := e.offset >= max32
		var extra []byte
		if bigSize || bigOff {
			extra = zip64Extra(bigSize, bigOff, e.usize, e.csize, e.offset)
		}
		csize, usize := clamp32(e.csize), clamp32(e.usize)
		if bigSize {
			csize, usize = max32, max32
		}
		b = binary.LittleEndian.AppendUint32(b, 0x02014b50)
		b = binary.LittleEndian.AppendUint16(b, 0) // made by
		b = binary.LittleEndian.AppendUint16(b, versionNeeded(e.method))
		b = binary.LittleEndian.AppendUint16(b, flagsTorch)
		b = binary.LittleEndian.AppendUint16(b, e.method)
		b = binary.LittleEndian.AppendUint32(b, 0) // time, date
		b = binary.LittleEndian.AppendUint32(b, e.crc)
		b = binary.LittleEndian.AppendUint32(b, csize)
		b = binary.LittleEndian.AppendUint32(b, usize)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(e.name)))
		b = binary.LittleEndian.AppendUint16(b, uint16(len(extra)))
		b = append(b, make([]byte, 10)...) // comment length, disk, internal and external attributes
		b = binary.LittleEndian.AppendUint32(b, clamp32(e.offset))
		b = append(b, e.name...)
		b = append(b, extra...)
		if len(b) >= chunkBytes {
			if _, err := z.cw.Write(b); err != nil {
				return err
			}
			b = b[:0]
		}
	}
	if _, err := z.cw.Write(b); err != nil {
		return err
	}
	cdSize := z.cw.n - cdOff
	eocd64 := z.cw.n
	n := uint64(len(z.dir))

	b = binary.LittleEndian.AppendUint32(b[:0], 0x06064b50)
	b = binary.LittleEndian.AppendUint64(b, 44)
	b = binary.LittleEndian.AppendUint16(b, 0x031e) // made by: Unix, 3.0
	b = binary.LittleEndian.AppendUint16(b, 45)
	b = binary.LittleEndian.AppendUint64(b, 0) // this disk, directory disk
	b = binary.LittleEndian.AppendUint64(b, n)
	b = binary.LittleEndian.AppendUint64(b, n)
	b = binary.LittleEndian.AppendUint64(b, uint64(cdSize))
	b = binary.LittleEndian.AppendUint64(b, uint64(cdOff))

	b = binary.LittleEndian.AppendUint32(b, 0x07064b50)
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint64(b, uint64(eocd64))
	b = binary.LittleEndian.AppendUint32(b, 1)

	b = binary.LittleEndian.AppendUint32(b, 0x06054b50)
	b = binary.LittleEndian.AppendUint32(b, 0) // this disk, directory disk
	b = binary.LittleEndian.AppendUint16(b, uint16(min(n, 0xFFFF)))
	b = binary.LittleEndian.AppendUint16(b, uint16(min(n, 0xFFFF)))
	b = binary.LittleEndian.AppendUint32(b, clamp32(cdSize))
	b = binary.LittleEndian.AppendUint32(b, clamp32(cdOff))
	b = binary.LittleEndian.AppendUint16(b, 0) // comment length
	_, err := z.cw.Write(b)
	return err
}

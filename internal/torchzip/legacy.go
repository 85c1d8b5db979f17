package torchzip

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/big"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/unpickler"
)

// legacyMagic is torch's MAGIC_NUMBER, the first pickle of a legacy file.
var legacyMagic, _ = new(big.Int).SetString("1950a86a20f9469cfc6c", 16)

// openPickles reads back-to-back pickle streams from the start of the file. When the first is
// torch's magic number as a literal, the file is a legacy checkpoint: five pickles (magic,
// protocol version, sys_info, the object, the sorted storage keys) and then the raw storages.
// Otherwise every stream up to the end of the file is scanned and the file is refused as a bare
// pickle.
func (c *Container) openPickles() error {
	var off int64
	// One buffered reader serves every stream: Prescan stops right after STOP, so the reader
	// is positioned at the next stream. (A reader per stream cost 64 KiB each: a 2 MB file of
	// a million "N." pickles allocated 64 GB.)
	src := newSource(c.ra, 0, c.size)
	for n := 1; off < c.size; n++ {
		if n > 1 && c.Kind == Legacy && n > 5 {
			break
		}
		s := c.scan(src, c.size-off, fmt.Sprintf("pickle#%d", n), off)
		if s.Err != nil {
			c.Problem = s.Err
			return nil
		}
		off += s.Scan.Length
		if n == 1 && isLiteralMagic(s, c) {
			c.Kind = Legacy
		}
		if c.Kind != Legacy {
			if off < c.size && !looksLikePickle(firstByte(c.ra, off)) {
				c.Problem = fault.At(fault.Malformed, s.Entry, s.Scan.Length, "%d bytes after STOP are not another pickle", c.size-off)
				return nil
			}
			continue
		}
		switch n {
		case 2:
			if v, err := c.literal(s); err != nil || !isInt(v, 1001) {
				c.Problem = fault.New(fault.Malformed, s.Entry, "legacy protocol version is not the literal 1001")
				return nil
			}
		case 4:
			c.Main = s
		case 5:
			c.Keys = s
			c.dataEnd = off
		}
	}
	if c.Kind != Legacy {
		c.Problem = fault.New(fault.Unsupported, "", "bare pickle (%d stream(s)) with no torch magic number: not a checkpoint", len(c.Streams))
		return nil
	}
	if c.Keys == nil {
		c.Problem = fault.New(fault.Malformed, "", "legacy checkpoint ends after %d of its 5 pickles", len(c.Streams))
	}
	return nil
}

func firstByte(ra io.ReaderAt, off int64) byte {
	var b [1]byte
	ra.ReadAt(b[:], off)
	return b[0]
}

// isLiteralMagic reports whether a stream is torch's magic number written as a plain integer:
// no globals, and it evaluates to the magic value.
func isLiteralMagic(s *Stream, c *Container) bool {
	if len(s.Scan.Globals) != 0 {
		return false
	}
	v, err := c.literal(s)
	if err != nil {
		return false
	}
	b, ok := v.(*big.Int)
	return ok && b.Cmp(legacyMagic) == 0
}

// literal evaluates a global-free stream.
func (c *Container) literal(s *Stream) (any, error) {
	if len(s.Scan.Globals) != 0 {
		return nil, fmt.Errorf("not a literal")
	}
	return unpickler.Load(s.Raw, s.Entry, c.pol, &unpickler.PersistentIDs{}, c.lim)
}

func isInt(v any, want int) bool {
	n, ok := v.(int)
	return ok && n == want
}

// LocateLegacy walks the raw storage area of a legacy file: for each key of the sorted key list,
// an int64 little-endian element count and then that many elements. nbytes gives each key's
// size in bytes as its persistent id declared it, and elemSize its element size; the counts in
// the file must agree.
func (c *Container) LocateLegacy(keys []string, nbytes func(key string) (size int64, elem int64, ok bool)) error {
	off := c.dataEnd
	for _, key := range keys {
		size, elem, ok := nbytes(key)
		if !ok {
			return fault.New(fault.Malformed, "pickle#5", "storage key %q is not referenced by the checkpoint", key)
		}
		if _, dup := c.records[key]; dup {
			return fault.New(fault.Malformed, "pickle#5", "storage key %q listed twice", key)
		}
		var hdr [8]byte
		if off > c.size-8 {
			return fault.At(fault.Malformed, "storages", off, "storage %q: file ends before its element count", key)
		}
		if _, err := c.ra.ReadAt(hdr[:], off); err != nil {
			return fault.Wrap(fault.Internal, "storages", err, "read")
		}
		count := binary.LittleEndian.Uint64(hdr[:])
		if elem <= 0 || count > math.MaxInt64/uint64(elem) || int64(count)*elem != size {
			return fault.At(fault.Malformed, "storages", off, "storage %q: file holds %d elements, the pickle declares %d bytes", key, count, size)
		}
		off += 8
		if size > c.size-off {
			return fault.At(fault.Malformed, "storages", off, "storage %q of %d bytes runs past the end of the file", key, size)
		}
		c.records[key] = &Record{Entry: "storage " + key, Size: size, ra: c.ra, off: off, csize: size}
		off += size
	}
	if off != c.size {
		return fault.At(fault.Malformed, "storages", off, "%d trailing bytes after the last storage", c.size-off)
	}
	return nil
}

// openNumpy scans the pickle an object-dtype .npy file embeds after its header, then refuses the
// file: NumPy arrays are not torch checkpoints.
func (c *Container) openNumpy() error {
	c.Problem = fault.New(fault.Unsupported, "", "NumPy .npy file: not a PyTorch checkpoint")
	var h [12]byte
	if _, err := c.ra.ReadAt(h[:], 0); err != nil {
		return nil
	}
	var start int64
	switch h[6] {
	case 1:
		start = 10 + int64(binary.LittleEndian.Uint16(h[8:]))
	case 2, 3:
		start = 12 + int64(binary.LittleEndian.Uint32(h[8:]))
	default:
		return nil
	}
	if start < c.size && looksLikePickle(firstByte(c.ra, start)) {
		c.scan(newSource(c.ra, start, c.size-start), c.size-start, "npy-object-data", start)
	}
	return nil
}

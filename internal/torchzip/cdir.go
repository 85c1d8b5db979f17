package torchzip

import (
	"bytes"
	"encoding/binary"
	"io"

	"github.com/ptsafe/converter/internal/fault"
)

// cdEntry is what archive/zip does not export about a central directory entry: where its local
// header is, so that the local header can be compared with the directory.
type cdEntry struct {
	name         string
	headerOffset int64
}

const (
	sigEOCD      = 0x06054b50
	sigEOCD64    = 0x06064b50
	sigLocator64 = 0x07064b50
	sigCentral   = 0x02014b50
)

// readCentralDirectory walks the central directory (ZIP64 aware) and returns each entry's name
// and local header offset, refusing more than maxEntries entries before allocating for them.
func readCentralDirectory(ra io.ReaderAt, size int64, maxEntries int) ([]cdEntry, error) {
	tail := int64(65535 + 22)
	if tail > size {
		tail = size
	}
	buf := make([]byte, tail)
	if _, err := ra.ReadAt(buf, size-tail); err != nil && err != io.EOF {
		return nil, fault.Wrap(fault.Malformed, "", err, "zip end record")
	}
	i := bytes.LastIndex(buf, []byte{0x50, 0x4b, 0x05, 0x06})
	if i < 0 || len(buf)-i < 22 {
		return nil, fault.New(fault.Malformed, "", "no zip end-of-central-directory record")
	}
	eocd := buf[i:]
	eocdOff := size - tail + int64(i)
	count := uint64(binary.LittleEndian.Uint16(eocd[10:]))
	dirSize := uint64(binary.LittleEndian.Uint32(eocd[12:]))
	dirOff := uint64(binary.LittleEndian.Uint32(eocd[16:]))
	if count == 0xffff || dirSize == 0xffffffff || dirOff == 0xffffffff {
		var loc [20]byte
		if eocdOff < 20 {
			return nil, fault.New(fault.Malformed, "", "ZIP64 locator missing")
		}
		if _, err := ra.ReadAt(loc[:], eocdOff-20); err != nil || binary.LittleEndian.Uint32(loc[:]) != sigLocator64 {
			return nil, fault.New(fault.Malformed, "", "ZIP64 locator missing")
		}
		off64 := int64(binary.LittleEndian.Uint64(loc[8:]))
		var rec [56]byte
		if off64 < 0 || off64 > size-56 {
			return nil, fault.New(fault.Malformed, "", "ZIP64 end record offset %d out of range", off64)
		}
		if _, err := ra.ReadAt(rec[:], off64); err != nil || binary.LittleEndian.Uint32(rec[:]) != sigEOCD64 {
			return nil, fault.New(fault.Malformed, "", "ZIP64 end record missing")
		}
		count = binary.LittleEndian.Uint64(rec[32:])
		dirSize = binary.LittleEndian.Uint64(rec[40:])
		dirOff = binary.LittleEndian.Uint64(rec[48:])
	}
	if count > uint64(maxEntries) {
		return nil, fault.New(fault.Limit, "", "zip has %d entries (limit max-zip-entries %d)", count, maxEntries)
	}
	if dirOff > uint64(size) || dirSize > uint64(size)-dirOff || count > dirSize/46 {
		return nil, fault.New(fault.Malformed, "", "zip central directory (%d entries, %d bytes at %d) does not fit the file", count, dirSize, dirOff)
	}
	r := io.NewSectionReader(ra, int64(dirOff), int64(dirSize))
	out := make([]cdEntry, 0, count)
	var h [46]byte
	for n := uint64(0); n < count; n++ {
		if _, err := io.ReadFull(r, h[:]); err != nil || binary.LittleEndian.Uint32(h[:]) != sigCentral {
			return nil, fault.New(fault.Malformed, "", "central directory entry %d unreadable", n)
		}
		nameLen := int(binary.LittleEndian.Uint16(h[28:]))
		extraLen := int(binary.LittleEndian.Uint16(h[30:]))
		commentLen := int(binary.LittleEndian.Uint16(h[32:]))
		usize := binary.LittleEndian.Uint32(h[24:])
		csize := binary.LittleEndian.Uint32(h[20:])
		off := uint64(binary.LittleEndian.Uint32(h[42:]))
		rest := make([]byte, nameLen+extraLen+commentLen)
		if _, err := io.ReadFull(r, rest); err != nil {
			return nil, fault.New(fault.Malformed, "", "central directory entry %d truncated", n)
		}
		if off == 0xffffffff {
			// ZIP64 extra: the 8-byte fields appear in order usize, csize, offset, for those set
			// to 0xffffffff in the fixed header.
			extra := rest[nameLen : nameLen+extraLen]
			found := false
			for len(extra) >= 4 {
				id := binary.LittleEndian.Uint16(extra)
				sz := int(binary.LittleEndian.Uint16(extra[2:]))
				if 4+sz > len(extra) {
					break
				}
				if id == 0x0001 {
					f := extra[4 : 4+sz]
					if usize == 0xffffffff && len(f) >= 8 {
						f = f[8:]
					}
					if csize == 0xffffffff && len(f) >= 8 {
						f = f[8:]
					}
					if len(f) >= 8 {
						off, found = binary.LittleEndian.Uint64(f), true
					}
				}
				extra = extra[4+sz:]
			}
			if !found {
				return nil, fault.New(fault.Malformed, string(rest[:nameLen]), "ZIP64 header offset missing")
			}
		}
		if off > uint64(size) {
			return nil, fault.New(fault.Malformed, string(rest[:nameLen]), "local header offset %d past end of file", off)
		}
		out = append(out, cdEntry{name: string(rest[:nameLen]), headerOffset: int64(off)})
	}
	return out, nil
}

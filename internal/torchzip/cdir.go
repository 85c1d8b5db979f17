package torchzip

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"github.com/ptsafe/converter/internal/fault"
)

// The zip layer's one source of truth is this strict reader of the end records and the central
// directory. It accepts only archives that every reader that matters reads identically: miniz
// as torch uses it (which takes the last end record, the ZIP64 end record whenever its locator
// is present, counts entries, and takes the first ZIP64 extra field), Go's archive/zip (which
// reads 32-bit fields unless they are saturated, entries until a signature fails, and falls
// back to a "prepended data" base offset) and Python's zipfile (which reads the directory by
// size, expects the ZIP64 end record right before its locator, and also shifts by prepended
// data). Every rule below closes one of those differences; openZip then cross-checks what
// archive/zip reads, entry by entry.

const (
	sigLocal     = 0x04034b50
	sigCentral   = 0x02014b50
	sigEOCD      = 0x06054b50
	sigEOCD64    = 0x06064b50
	sigLocator64 = 0x07064b50

	eocdLen      = 22
	eocd64Len    = 56
	locatorLen   = 20
	centralLen   = 46
	localLen     = 30
	maxEOCDTail  = 0xffff + eocdLen // the comment can be at most 0xffff bytes long
	zip64ExtraID = 0x0001
	sat16        = 0xffff
	sat32        = 0xffffffff
)

// readBuf is a little-endian cursor over a fixed-width record (archive/zip's habit), so that the
// order of the reads documents the layout.
type readBuf []byte

func (b *readBuf) uint16() uint16 {
	v := binary.LittleEndian.Uint16(*b)
	*b = (*b)[2:]
	return v
}

func (b *readBuf) uint32() uint32 {
	v := binary.LittleEndian.Uint32(*b)
	*b = (*b)[4:]
	return v
}

func (b *readBuf) uint64() uint64 {
	v := binary.LittleEndian.Uint64(*b)
	*b = (*b)[8:]
	return v
}

func (b *readBuf) sub(n int) readBuf {
	s := (*b)[:n]
	*b = (*b)[n:]
	return s
}

// cdEntry is one central directory entry, with the ZIP64 extra field applied.
type cdEntry struct {
	name          string
	flags, method uint16
	crc           uint32
	csize, usize  uint64
	headerOffset  int64
	external      uint32 // external attributes
}

// directory is the archive as the strict reader sees it: its entries in directory order and
// where the directory itself lies.
type directory struct {
	entries  []cdEntry
	start    int64 // offset of the central directory, where the entries' bytes must end
	dirBytes int64
}

// endRecord is what the end records say about the directory.
type endRecord struct {
	count     uint64
	size, off uint64
	dirEnd    int64 // where the directory must end: the ZIP64 end record, or the end record
}

// readDirectory reads and validates the end records and the central directory. It refuses more
// than maxEntries entries before allocating for them, and holds one entry at a time besides the
// result.
func readDirectory(ra io.ReaderAt, size int64, maxEntries int) (*directory, error) {
	end, err := readEnd(ra, size)
	if err != nil {
		return nil, err
	}
	if end.count > uint64(maxEntries) {
		return nil, fault.New(fault.Limit, "", "zip has %d entries (limit max-zip-entries %d)", end.count, maxEntries)
	}
	// No prepended data: the directory ends exactly where the end records begin. archive/zip and
	// zipfile otherwise shift every offset by the difference, and miniz does not.
	if end.off > uint64(end.dirEnd) || end.size != uint64(end.dirEnd)-end.off {
		return nil, fault.New(fault.Malformed, "", "zip central directory [%d, +%d) does not end at the end record (%d): prepended or hidden data", end.off, end.size, end.dirEnd)
	}
	if end.count > end.size/centralLen {
		return nil, fault.New(fault.Malformed, "", "zip central directory of %d bytes cannot hold %d entries", end.size, end.count)
	}
	d := &directory{start: int64(end.off), dirBytes: int64(end.size), entries: make([]cdEntry, 0, end.count)}
	r := bufio.NewReader(io.NewSectionReader(ra, d.start, d.dirBytes))
	left := d.dirBytes
	for n := uint64(0); n < end.count; n++ {
		e, used, err := readCentral(r, left, n)
		if err != nil {
			return nil, err
		}
		left -= used
		d.entries = append(d.entries, e)
	}
	// miniz counts entries, zipfile reads until the size is used up, archive/zip until a
	// signature fails: they agree only when the entries fill the directory exactly.
	if left != 0 {
		return nil, fault.At(fault.Malformed, "", d.start+d.dirBytes-left, "%d bytes in the central directory after its %d entries", left, end.count)
	}
	if err := checkFirstAtZero(d.entries); err != nil {
		return nil, err
	}
	return d, nil
}

// readEnd locates the one end record and applies the ZIP64 end record when its locator is
// present, as miniz does.
func readEnd(ra io.ReaderAt, size int64) (*endRecord, error) {
	tailLen := min(size, maxEOCDTail)
	tail := make([]byte, tailLen)
	if _, err := ra.ReadAt(tail, size-tailLen); err != nil && err != io.EOF {
		return nil, fault.Wrap(fault.Malformed, "", err, "zip end record")
	}
	at, err := findEOCD(tail)
	if err != nil {
		return nil, err
	}
	eocdOff := size - tailLen + int64(at)
	b := readBuf(tail[at+4 : at+eocdLen])
	disk, cdDisk := b.uint16(), b.uint16()
	countDisk, count := b.uint16(), b.uint16()
	end := &endRecord{count: uint64(count), size: uint64(b.uint32()), off: uint64(b.uint32()), dirEnd: eocdOff}
	commentLen := b.uint16()
	switch {
	case eocdOff+eocdLen != size || commentLen != 0:
		// torch writes no comment; zipfile would look for the end record inside one.
		return nil, fault.At(fault.Malformed, "", eocdOff, "zip end record with a %d-byte comment or trailing data", size-eocdOff-eocdLen)
	case disk != 0 || cdDisk != 0 || countDisk != count:
		return nil, fault.At(fault.Malformed, "", eocdOff, "multi-disk zip end record refused")
	}
	if eocdOff < locatorLen {
		return end, nil
	}
	var loc [locatorLen]byte
	if _, err := ra.ReadAt(loc[:], eocdOff-locatorLen); err != nil {
		return nil, fault.Wrap(fault.Malformed, "", err, "zip end record")
	}
	lb := readBuf(loc[:])
	if lb.uint32() != sigLocator64 {
		if count == sat16 || end.size == sat32 || end.off == sat32 {
			return nil, fault.At(fault.Malformed, "", eocdOff, "saturated zip end record without a ZIP64 locator")
		}
		return end, nil
	}
	return readEnd64(ra, eocdOff, lb, end)
}

// findEOCD returns the index of the one plausible end-of-central-directory record in tail: a
// signature whose comment would fit in the file (archive/zip's test) at least 22 bytes before
// the end (miniz's). More than one is ambiguous: readers that search differently pick
// different ones.
func findEOCD(tail []byte) (int, error) {
	found := -1
	sig := binary.LittleEndian.AppendUint32(nil, sigEOCD)
	for i := bytes.LastIndex(tail, sig); i >= 0; i = bytes.LastIndex(tail[:i], sig) {
		if i+eocdLen > len(tail) {
			continue
		}
		comment := int(binary.LittleEndian.Uint16(tail[i+eocdLen-2:]))
		if i+eocdLen+comment > len(tail) {
			continue
		}
		if found >= 0 {
			return 0, fault.New(fault.Malformed, "", "two zip end records (%d and %d bytes before the end): readers disagree on which is real", len(tail)-i, len(tail)-found)
		}
		found = i
	}
	if found < 0 {
		return 0, fault.New(fault.Malformed, "", "no zip end-of-central-directory record")
	}
	return found, nil
}

// readEnd64 reads the ZIP64 end record the locator (already past its signature in lb) points
// to. It must sit right before the locator (zipfile assumes so), be of the single-disk kind with
// no extensible data, and agree with every field of the 32-bit end record that is not
// saturated, so that a reader using either record reads one directory.
func readEnd64(ra io.ReaderAt, eocdOff int64, lb readBuf, end *endRecord) (*endRecord, error) {
	locDisk, off64, disks := lb.uint32(), lb.uint64(), lb.uint32()
	want := eocdOff - locatorLen - eocd64Len
	if locDisk != 0 || disks != 1 || want < 0 || off64 != uint64(want) {
		return nil, fault.At(fault.Malformed, "", eocdOff-locatorLen, "ZIP64 locator (disk %d of %d, record at %d) does not point right before itself (%d)", locDisk, disks, off64, want)
	}
	var rec [eocd64Len]byte
	if _, err := ra.ReadAt(rec[:], want); err != nil {
		return nil, fault.Wrap(fault.Malformed, "", err, "ZIP64 end record")
	}
	b := readBuf(rec[:])
	sig, recSize := b.uint32(), b.uint64()
	b.sub(4) // versions made by and needed
	disk, cdDisk := b.uint32(), b.uint32()
	countDisk, count := b.uint64(), b.uint64()
	dirSize, dirOff := b.uint64(), b.uint64()
	switch {
	case sig != sigEOCD64:
		return nil, fault.At(fault.Malformed, "", want, "ZIP64 end record missing")
	case recSize != eocd64Len-12 || disk != 0 || cdDisk != 0 || countDisk != count:
		return nil, fault.At(fault.Malformed, "", want, "ZIP64 end record with extensible data or several disks refused")
	case !agrees(end.count, count, sat16) || !agrees(end.size, dirSize, sat32) || !agrees(end.off, dirOff, sat32):
		return nil, fault.At(fault.Malformed, "", want, "ZIP64 end record (%d entries, %d bytes at %d) disagrees with the end record (%d, %d, %d)", count, dirSize, dirOff, end.count, end.size, end.off)
	}
	return &endRecord{count: count, size: dirSize, off: dirOff, dirEnd: want}, nil
}

// agrees reports whether a 32-bit field says the same as its ZIP64 counterpart: equal, or
// saturated (meaning "see the ZIP64 record").
func agrees(v32, v64, saturated uint64) bool { return v32 == v64 || v32 == saturated }

// readCentral reads entry n of the directory from r, with left bytes of the directory
// remaining; it returns the entry and the bytes it used.
func readCentral(r io.Reader, left int64, n uint64) (cdEntry, int64, error) {
	var e cdEntry
	var h [centralLen]byte
	if left < centralLen {
		return e, 0, fault.New(fault.Malformed, "", "central directory entry %d runs past the directory", n)
	}
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return e, 0, fault.Wrap(fault.Malformed, "", err, "central directory entry %d", n)
	}
	b := readBuf(h[:])
	if b.uint32() != sigCentral {
		return e, 0, fault.New(fault.Malformed, "", "central directory entry %d has no signature", n)
	}
	b.sub(4) // versions made by and needed
	e.flags, e.method = b.uint16(), b.uint16()
	b.sub(4) // modification time and date
	e.crc = b.uint32()
	csize, usize := b.uint32(), b.uint32()
	nameLen, extraLen, commentLen := int(b.uint16()), int(b.uint16()), int(b.uint16())
	diskStart := b.uint16()
	b.sub(2) // internal attributes
	e.external = b.uint32()
	off := b.uint32()
	used := int64(centralLen + nameLen + extraLen + commentLen)
	if used > left {
		return e, 0, fault.New(fault.Malformed, "", "central directory entry %d runs past the directory", n)
	}
	rest := make([]byte, nameLen+extraLen+commentLen)
	if _, err := io.ReadFull(r, rest); err != nil {
		return e, 0, fault.Wrap(fault.Malformed, "", err, "central directory entry %d", n)
	}
	e.name = string(rest[:nameLen])
	if diskStart != 0 {
		return e, 0, fault.New(fault.Malformed, e.name, "entry on disk %d of a multi-disk zip", diskStart)
	}
	fields, err := extraFields(rest[nameLen : nameLen+extraLen])
	if err != nil {
		return e, 0, fault.Wrap(fault.Malformed, e.name, err, "central directory extra field")
	}
	e.usize, e.csize, e.headerOffset = uint64(usize), uint64(csize), int64(off)
	if err := applyZip64(fields[zip64ExtraID], &e.usize, &e.csize, &e.headerOffset); err != nil {
		return e, 0, fault.Wrap(fault.Malformed, e.name, err, "central directory")
	}
	return e, used, nil
}

// extraFields splits an extra field into its records by id. The records must tile it exactly
// (miniz refuses a partial record, archive/zip ignores it) and each id may appear once
// (miniz and archive/zip take the first ZIP64 record; a reader taking the last would read
// another offset).
func extraFields(extra []byte) (map[uint16][]byte, error) {
	fields := map[uint16][]byte{}
	for b := readBuf(extra); len(b) > 0; {
		if len(b) < 4 {
			return nil, fmt.Errorf("%d stray bytes after its records", len(b))
		}
		id, n := b.uint16(), int(b.uint16())
		if n > len(b) {
			return nil, fmt.Errorf("record %#04x of %d bytes runs past its end", id, n)
		}
		if _, dup := fields[id]; dup {
			return nil, fmt.Errorf("record %#04x appears twice", id)
		}
		fields[id] = b.sub(n)
	}
	return fields, nil
}

// applyZip64 replaces the saturated 32-bit values by the ZIP64 record's 64-bit ones, which come
// in the order uncompressed size, compressed size, offset, each present only when its 32-bit
// field is saturated (a nil offset pointer means the local header, which has none). A saturated
// field the record does not resolve is refused.
func applyZip64(rec []byte, usize, csize *uint64, off *int64) error {
	b := readBuf(rec)
	take := func(what string) (uint64, error) {
		if len(b) < 8 {
			return 0, fmt.Errorf("%s saturated without its ZIP64 value", what)
		}
		return b.uint64(), nil
	}
	var err error
	if *usize == sat32 {
		if *usize, err = take("uncompressed size"); err != nil {
			return err
		}
	}
	if *csize == sat32 {
		if *csize, err = take("compressed size"); err != nil {
			return err
		}
	}
	if off != nil && *off == sat32 {
		v, err := take("local header offset")
		if err != nil {
			return err
		}
		if v > 1<<62 {
			return fmt.Errorf("local header offset %d out of range", v)
		}
		*off = int64(v)
	}
	return nil
}

// checkFirstAtZero refuses bytes before the first local header: every reader would skip them,
// and they are where a second archive or a pickle can hide.
func checkFirstAtZero(entries []cdEntry) error {
	if len(entries) == 0 {
		return nil
	}
	first := slices.MinFunc(entries, func(a, b cdEntry) int { return cmpInt64(a.headerOffset, b.headerOffset) })
	if first.headerOffset != 0 {
		return fault.New(fault.Malformed, first.name, "first local header at %d, not 0: prepended data", first.headerOffset)
	}
	return nil
}

package torchzip

import (
	"archive/zip"
	"bufio"
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strings"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/unpickler"
)

// Flags a torch archive may carry: bit 3 (sizes in a data descriptor) and bit 11 (UTF-8 names).
const allowedFlags = 0x0008 | 0x0800

// openZip validates the archive and locates data.pkl, the byteorder record and the storages.
func (c *Container) openZip() error {
	cd, err := readCentralDirectory(c.ra, c.size, c.lim.MaxZipEntries)
	if err != nil {
		c.Kind = OtherZip
		c.Problem = err
		return nil
	}
	zr, err := zip.NewReader(c.ra, c.size)
	if err != nil {
		c.Kind = OtherZip
		c.Problem = fault.Wrap(fault.Malformed, "", err, "zip directory")
		return nil
	}
	if len(zr.File) != len(cd) {
		c.Kind = OtherZip
		c.Problem = fault.New(fault.Malformed, "", "zip directory lists %d entries, archive/zip read %d", len(cd), len(zr.File))
		return nil
	}
	// Structure problems are collected first; pickle-looking entries are scanned regardless so
	// that a payload in a malformed archive is still reported as unsafe.
	var problem error
	setProblem := func(e error) {
		if problem == nil {
			problem = e
		}
	}
	seen := map[string]string{}
	var ranges []span
	// recs holds every entry whose local header could be read.
	recs := make(map[*zip.File]*Record, len(zr.File))
	for i, f := range zr.File {
		name := f.Name
		if err := checkEntryName(name); err != nil {
			setProblem(fault.New(fault.Malformed, name, "%v", err))
		}
		lower := strings.ToLower(name)
		if prev, dup := seen[lower]; dup {
			setProblem(fault.New(fault.Malformed, name, "duplicate entry name (also %q; torch looks names up case-insensitively)", prev))
		}
		seen[lower] = name
		if f.Flags&^allowedFlags != 0 {
			setProblem(fault.New(fault.Malformed, name, "general-purpose flags %#04x (encryption or unknown bits) refused", f.Flags))
		}
		if f.Method != zip.Store && f.Method != zip.Deflate {
			setProblem(fault.New(fault.Unsupported, name, "compression method %d refused (only stored and deflate)", f.Method))
		}
		off, err := checkLocalHeader(c.ra, cd[i], f)
		if err != nil {
			setProblem(err)
		}
		if off <= 0 {
			continue
		}
		recs[f] = c.newRecord(f, off)
		end := off + int64(f.CompressedSize64)
		if end < off || end > c.size {
			setProblem(fault.New(fault.Malformed, name, "entry data [%d, +%d) runs past the end of the file", off, f.CompressedSize64))
			continue
		}
		ranges = append(ranges, span{cd[i].headerOffset, end, name})
	}
	if err := checkOverlap(ranges); err != nil {
		setProblem(err)
	}

	prefix, perr := commonPrefix(zr.File)
	if perr != nil {
		setProblem(perr)
	}
	c.Prefix = prefix
	byName := map[string]*zip.File{}
	for _, f := range zr.File {
		byName[f.Name] = f
	}
	torchScript := byName[prefix+"/constants.pkl"] != nil
	for _, f := range zr.File {
		if strings.HasPrefix(f.Name, prefix+"/code/") {
			torchScript = true
		}
	}
	if torchScript {
		c.Kind = TorchScript
	}

	// Scan data.pkl first, then every other entry that holds a pickle.
	main := byName[prefix+"/data.pkl"]
	if main != nil && perr == nil {
		c.Main = c.scanEntry(main, recs[main])
	}
	for _, f := range zr.File {
		if f == main || strings.HasPrefix(f.Name, prefix+"/data/") && perr == nil && !torchScript {
			continue
		}
		if isPickleEntry(c.ra, f) {
			s := c.scanEntry(f, recs[f])
			if !torchScript && perr == nil && problem == nil {
				setProblem(fault.New(fault.Unsupported, s.Entry, "unexpected second pickle stream in a torch archive"))
			}
		}
	}
	switch {
	case torchScript:
		c.Problem = fault.New(fault.Unsupported, prefix+"/constants.pkl", "TorchScript archive (torch.jit.save): refused, its code is not a checkpoint")
		return nil
	case problem != nil:
		c.Problem = problem
		if perr != nil || main == nil {
			c.Kind = OtherZip
		}
		return nil
	case main == nil:
		c.Kind = OtherZip
		c.Problem = fault.New(fault.Malformed, "", "zip has no %s/data.pkl: not a torch archive", prefix)
		return nil
	}
	if f := byName[prefix+"/byteorder"]; f != nil {
		b, err := readSmall(recs[f], 16)
		if err != nil {
			c.Problem = err
			return nil
		}
		switch string(b) {
		case "little", "big":
			c.ByteOrder = string(b)
		default:
			c.Problem = fault.New(fault.Malformed, f.Name, "byteorder record %q, want little or big", b)
			return nil
		}
	}
	for _, f := range zr.File {
		if key, ok := strings.CutPrefix(f.Name, prefix+"/data/"); ok {
			c.records[key] = recs[f]
		}
	}
	return nil
}

// newRecord describes an entry whose data starts at file offset off.
func (c *Container) newRecord(f *zip.File, off int64) *Record {
	return &Record{Entry: f.Name, Size: int64(f.UncompressedSize64), ra: c.ra, off: off,
		csize: int64(f.CompressedSize64), deflated: f.Method == zip.Deflate, crc: f.CRC32, hasCRC: true}
}

// scanEntry pre-scans one zip entry as a pickle stream, verifying its CRC. rec is nil when the
// entry's local header could not be read.
func (c *Container) scanEntry(f *zip.File, rec *Record) *Stream {
	var refusal error
	switch {
	case rec == nil:
		refusal = fault.New(fault.Malformed, f.Name, "local header unreadable")
	case rec.Size > c.lim.MaxPickleBytes:
		refusal = fault.New(fault.Limit, f.Name, "pickle of %d bytes exceeds limit max-pickle-bytes %d", rec.Size, c.lim.MaxPickleBytes)
	}
	if refusal != nil {
		s := &Stream{Entry: f.Name, Offset: -1, Scan: &unpickler.Scan{}, Err: refusal}
		c.Streams = append(c.Streams, s)
		return s
	}
	r, _ := rec.Open()
	pos := rec.off
	if rec.deflated {
		pos = -1
	}
	tap := &errTap{r: r}
	s := c.scan(bufio.NewReaderSize(tap, 64<<10), rec.Size, f.Name, pos)
	if s.Err != nil && fault.KindOf(s.Err) == fault.Internal && tap.err != nil && fault.KindOf(tap.err) != fault.Internal {
		// The pre-scanner reports any read failure but EOF as Internal, also when the record
		// reader refused the bytes (a corrupt deflate stream, data shorter than declared, a
		// CRC mismatch): keep the reader's classification so such a file exits 4, not 1.
		s.Err = tap.err
	}
	if s.Err == nil {
		if s.Scan.Length != rec.Size {
			s.Err = fault.At(fault.Malformed, f.Name, s.Scan.Length, "%d bytes after STOP", rec.Size-s.Scan.Length)
		} else if _, err := io.Copy(io.Discard, r); err != nil {
			s.Err = err
		}
		if s.Err != nil {
			s.Raw = nil
		}
	}
	return s
}

// errTap remembers the last error its reader returned other than io.EOF.
type errTap struct {
	r   io.Reader
	err error
}

func (t *errTap) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		t.err = err
	}
	return n, err
}

// isPickleEntry reports whether an entry should be scanned as a pickle: a .pkl name, or stored
// content that starts with a PROTO opcode.
func isPickleEntry(ra io.ReaderAt, f *zip.File) bool {
	if strings.HasSuffix(strings.ToLower(f.Name), ".pkl") {
		return true
	}
	if f.UncompressedSize64 < 2 {
		return false
	}
	r, err := f.OpenRaw()
	if err != nil {
		return false
	}
	if f.Method == zip.Deflate {
		r = flate.NewReader(r)
	}
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return false
	}
	return b[0] == 0x80 && b[1] <= 5
}

func checkEntryName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty entry name")
	case strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || (len(name) > 1 && name[1] == ':'):
		return fmt.Errorf("absolute or non-portable entry name")
	case strings.Contains(name, "\x00"):
		return fmt.Errorf("NUL in entry name")
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." || part == "." {
			return fmt.Errorf("path traversal in entry name")
		}
	}
	return nil
}

// commonPrefix returns the inner folder, taken (as torch does) from the first entry, and refuses
// an archive with any entry outside it.
func commonPrefix(files []*zip.File) (string, error) {
	if len(files) == 0 {
		return "", fault.New(fault.Malformed, "", "empty zip archive")
	}
	first := files[0].Name
	i := strings.IndexByte(first, '/')
	if i <= 0 {
		return "", fault.New(fault.Malformed, first, "first entry is not inside a folder: not a torch archive")
	}
	prefix := first[:i]
	for _, f := range files {
		if !strings.HasPrefix(f.Name, prefix+"/") {
			return prefix, fault.New(fault.Malformed, f.Name, "entry outside the archive folder %q", prefix)
		}
	}
	return prefix, nil
}

// readSmall reads a whole small entry (version, byteorder).
func readSmall(rec *Record, max int64) ([]byte, error) {
	if rec.Size > max {
		return nil, fault.New(fault.Malformed, rec.Entry, "record of %d bytes, want at most %d", rec.Size, max)
	}
	r, err := rec.Open()
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

type span struct {
	start, end int64
	name       string
}

// checkOverlap refuses entries whose bytes overlap another entry's (overlapping-entry zip bombs
// and polyglots).
func checkOverlap(ranges []span) error {
	sorted := slices.SortedFunc(slices.Values(ranges), func(a, b span) int { return cmpInt64(a.start, b.start) })
	for i := 1; i < len(sorted); i++ {
		if sorted[i].start < sorted[i-1].end {
			return fault.New(fault.Malformed, sorted[i].name, "entry overlaps entry %q", sorted[i-1].name)
		}
	}
	return nil
}

// checkLocalHeader compares the local file header with the central directory: the name, method
// and flags must agree (CVE-2025-1944: scanners read one name, torch the other). It returns the
// offset of the entry's data, read from the same header, so each entry costs one read.
func checkLocalHeader(ra io.ReaderAt, cd cdEntry, f *zip.File) (int64, error) {
	h := make([]byte, 30+len(f.Name))
	if _, err := ra.ReadAt(h, cd.headerOffset); err != nil {
		return 0, fault.Wrap(fault.Malformed, f.Name, err, "local header at %d", cd.headerOffset)
	}
	if binary.LittleEndian.Uint32(h[0:]) != 0x04034b50 {
		return 0, fault.At(fault.Malformed, f.Name, cd.headerOffset, "no local header signature")
	}
	flags := binary.LittleEndian.Uint16(h[6:])
	method := binary.LittleEndian.Uint16(h[8:])
	nameLen := int(binary.LittleEndian.Uint16(h[26:]))
	extraLen := int64(binary.LittleEndian.Uint16(h[28:]))
	// The data offset is known even when the header disagrees, so a payload in a forged archive
	// can still be scanned and reported.
	off := cd.headerOffset + 30 + int64(nameLen) + extraLen
	if name := h[30:]; nameLen != len(f.Name) || !bytes.Equal(name, []byte(f.Name)) {
		return off, fault.At(fault.Malformed, f.Name, cd.headerOffset, "local header name differs from the central directory's %q", f.Name)
	}
	if method != f.Method {
		return off, fault.At(fault.Malformed, f.Name, cd.headerOffset, "local header method %d, central directory %d", method, f.Method)
	}
	if flags&^allowedFlags != f.Flags&^allowedFlags {
		return off, fault.At(fault.Malformed, f.Name, cd.headerOffset, "local header flags %#04x, central directory %#04x", flags, f.Flags)
	}
	return off, nil
}

// Record is one storage's bytes inside the container.
type Record struct {
	Entry    string
	Size     int64 // uncompressed bytes
	ra       io.ReaderAt
	off      int64 // file offset of the (possibly compressed) data
	csize    int64
	deflated bool
	crc      uint32
	hasCRC   bool
}

// Stored reports whether the record's bytes sit uncompressed in the file, readable at random.
func (r *Record) Stored() bool { return !r.deflated }

// ReaderAt returns random access to a stored record's bytes.
func (r *Record) ReaderAt() *io.SectionReader { return io.NewSectionReader(r.ra, r.off, r.Size) }

// Open streams the record's uncompressed bytes. Decompression is bounded by the declared size
// (a zip bomb costs nothing), and the CRC is checked when the last byte has been read. torch
// writes CRC 0 when saved with CRC disabled; such records are not checked.
func (r *Record) Open() (io.Reader, error) {
	var src io.Reader = io.NewSectionReader(r.ra, r.off, r.csize)
	if r.deflated {
		src = flate.NewReader(src)
	}
	cr := &checkedReader{r: src, left: r.Size, rec: r}
	if r.hasCRC && r.crc != 0 {
		cr.h = crc32.NewIEEE()
	}
	return cr, nil
}

// NeedsCheck reports whether reading the record whole verifies anything (a CRC, or a deflate
// stream's integrity).
func (r *Record) NeedsCheck() bool { return r.deflated || (r.hasCRC && r.crc != 0) }

// Check reads the whole record once to verify its CRC and size.
func (r *Record) Check() error {
	rd, err := r.Open()
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, rd)
	return err
}

type checkedReader struct {
	r    io.Reader
	left int64
	rec  *Record
	h    interface {
		io.Writer
		Sum32() uint32
	}
}

func (c *checkedReader) Read(p []byte) (int, error) {
	if c.left == 0 {
		// Expect the source to be exhausted too: a deflate stream longer than declared is refused.
		var one [1]byte
		if n, _ := c.r.Read(one[:]); n > 0 {
			return 0, fault.New(fault.Malformed, c.rec.Entry, "more data than the declared %d bytes", c.rec.Size)
		}
		if c.h != nil && c.h.Sum32() != c.rec.crc {
			return 0, fault.New(fault.Malformed, c.rec.Entry, "CRC-32 mismatch: data %08x, directory %08x", c.h.Sum32(), c.rec.crc)
		}
		c.h = nil
		return 0, io.EOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if c.h != nil {
		c.h.Write(p[:n])
	}
	if err == io.EOF {
		if c.left > 0 {
			return n, fault.New(fault.Malformed, c.rec.Entry, "data ends %d bytes short of the declared %d", c.left, c.rec.Size)
		}
		err = nil
	}
	if err != nil && fault.KindOf(err) == fault.Internal && c.rec.deflated {
		err = fault.Wrap(fault.Malformed, c.rec.Entry, err, "deflate stream")
	}
	return n, err
}

// Storage returns the record holding the bytes of the storage with the given key.
func (c *Container) Storage(key string) (*Record, error) {
	r, ok := c.records[key]
	if !ok {
		return nil, fault.New(fault.Malformed, "", "storage %q referenced by the pickle has no record", key)
	}
	return r, nil
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

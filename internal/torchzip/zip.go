package torchzip

import (
	"archive/zip"
	"bufio"
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strings"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/unpickler"
)

// Flags a torch archive may carry: bit 3 (sizes in a data descriptor) and bit 11 (UTF-8 names).
const (
	flagDataDescriptor = 0x0008
	allowedFlags       = flagDataDescriptor | 0x0800
)

// dosDirectory is the MS-DOS directory bit of the external attributes, by which miniz
// (mz_zip_reader_is_file_a_directory) takes an entry for a directory.
const dosDirectory = 0x10

// openZip validates the archive and locates data.pkl, the byteorder record and the storages.
// An archive the strict directory reader refuses is still searched for pickles, through every
// local header in the file, so that a payload in an ambiguous archive is reported as unsafe.
func (c *Container) openZip() error {
	d, err := readDirectory(c.ra, c.size, c.lim.MaxZipEntries)
	// Structure problems are collected first; pickle-looking entries are scanned regardless so
	// that a payload in a malformed archive is still reported as unsafe.
	var recs []*Record
	var problem error
	if err == nil {
		if recs, problem = c.checkEntries(d); problem == nil {
			err = crossCheck(c.ra, c.size, d, recs)
		}
	}
	if err != nil {
		// No one reading of the directory: any reader may find other entries.
		c.Kind = OtherZip
		c.Problem = err
		c.sweepLocalHeaders()
		return nil
	}
	setProblem := func(e error) {
		if problem == nil {
			problem = e
		}
	}

	prefix, perr := commonPrefix(d.entries)
	if perr != nil {
		setProblem(perr)
	}
	c.Prefix = prefix
	// torch finds records through miniz, whose lookup ignores ASCII case: index them that way.
	byName := map[string]int{}
	torchScript := false
	for i, e := range d.entries {
		folded := foldName(e.name)
		byName[folded] = i
		if strings.HasPrefix(folded, foldName(prefix+"/code/")) {
			torchScript = true
		}
	}
	lookup := func(name string) (int, bool) {
		i, ok := byName[foldName(prefix+"/"+name)]
		return i, ok
	}
	if _, ok := lookup("constants.pkl"); ok {
		torchScript = true
	}
	if torchScript {
		c.Kind = TorchScript
	}

	// Scan data.pkl first, then every other entry that holds a pickle.
	main, hasMain := lookup("data.pkl")
	if hasMain && perr == nil {
		c.Main = c.scanEntry(d.entries[main].name, recs[main])
	}
	for i, e := range d.entries {
		if hasMain && i == main || strings.HasPrefix(foldName(e.name), foldName(prefix+"/data/")) && perr == nil && !torchScript {
			continue
		}
		if isPickleEntry(e.name, recs[i]) {
			s := c.scanEntry(e.name, recs[i])
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
		if perr != nil || !hasMain {
			c.Kind = OtherZip
		}
		return nil
	case !hasMain:
		c.Kind = OtherZip
		c.Problem = fault.New(fault.Malformed, "", "zip has no %s/data.pkl: not a torch archive", prefix)
		return nil
	}
	if i, ok := lookup("byteorder"); ok {
		b, err := readSmall(recs[i], 16)
		if err != nil {
			c.Problem = err
			return nil
		}
		switch string(b) {
		case "little", "big":
			c.ByteOrder = string(b)
		default:
			c.Problem = fault.New(fault.Malformed, d.entries[i].name, "byteorder record %q, want little or big", b)
			return nil
		}
	}
	if err := checkVersion(lookup, d.entries, recs); err != nil {
		c.Problem = err
		return nil
	}
	dataDir := foldName(prefix + "/data/")
	for i, e := range d.entries {
		if key, ok := strings.CutPrefix(foldName(e.name), dataDir); ok {
			c.records[key] = recs[i]
		}
	}
	return nil
}

// Format versions torch 1.13 reads (caffe2/serialize/versions.h).
const (
	minFormatVersion = 1
	maxFormatVersion = 10
)

// checkVersion reads the archive's format version as torch's PyTorchStreamReader does before
// anything else (.data/version, else version, parsed with std::stoull) and refuses an archive
// torch would refuse: no record, no number, or a version it does not read.
func checkVersion(lookup func(string) (int, bool), entries []cdEntry, recs []*Record) error {
	i, ok := lookup(".data/version")
	if !ok {
		if i, ok = lookup("version"); !ok {
			return fault.New(fault.Malformed, "", "zip has no version record: torch refuses it")
		}
	}
	b, err := readSmall(recs[i], 64)
	if err != nil {
		return err
	}
	v, ok := parseStoull(string(b))
	if !ok || v < minFormatVersion || v > maxFormatVersion {
		return fault.New(fault.Malformed, entries[i].name, "format version %q: torch reads versions %d to %d", b, minFormatVersion, maxFormatVersion)
	}
	return nil
}

// parseStoull parses the leading number of s as C++'s std::stoull does: leading white space,
// an optional sign (a negative value wraps around), at least one digit, and anything after it
// ignored. It reports false where stoull throws.
func parseStoull(s string) (uint64, bool) {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg, s = s[0] == '-', s[1:]
	}
	var v uint64
	n := 0
	for ; n < len(s) && '0' <= s[n] && s[n] <= '9'; n++ {
		d := uint64(s[n] - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	if n == 0 {
		return 0, false
	}
	if neg {
		v = -v
	}
	return v, true
}

// checkEntries checks every entry of the directory and its local header, and returns the
// records of the entries whose local header could be read (by directory index) with the first
// problem found.
func (c *Container) checkEntries(d *directory) ([]*Record, error) {
	var problem error
	setProblem := func(e error) {
		if problem == nil {
			problem = e
		}
	}
	seen := map[string]string{}
	var ranges []span
	recs := make([]*Record, len(d.entries))
	for i := range d.entries {
		e := &d.entries[i]
		if err := checkEntryName(e.name); err != nil {
			setProblem(fault.New(fault.Malformed, e.name, "%v", err))
		}
		if prev, dup := seen[foldName(e.name)]; dup {
			setProblem(fault.New(fault.Malformed, e.name, "duplicate entry name (also %q; torch looks names up case-insensitively)", prev))
		}
		seen[foldName(e.name)] = e.name
		if err := checkEntryFields(e); err != nil {
			setProblem(err)
		}
		off, err := checkLocalHeader(c.ra, e)
		if err != nil {
			setProblem(err)
		}
		if off <= 0 {
			continue
		}
		recs[i] = c.newRecord(e, off)
		end := off + int64(e.csize)
		if end < off || end > d.start {
			setProblem(fault.New(fault.Malformed, e.name, "entry data [%d, +%d) runs past the start of the central directory (%d)", off, e.csize, d.start))
			continue
		}
		ranges = append(ranges, span{e.headerOffset, end, e.name})
	}
	if err := checkOverlap(ranges); err != nil {
		setProblem(err)
	}
	return recs, problem
}

// foldName is miniz's case folding for name lookups: ASCII letters only.
func foldName(name string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, name)
}

// checkEntryFields refuses what the directory says about an entry that torch would read
// differently or not at all.
func checkEntryFields(e *cdEntry) error {
	switch {
	case e.flags&^allowedFlags != 0:
		return fault.New(fault.Malformed, e.name, "general-purpose flags %#04x (encryption or unknown bits) refused", e.flags)
	case e.method != zip.Store && e.method != zip.Deflate:
		return fault.New(fault.Unsupported, e.name, "compression method %d refused (only stored and deflate)", e.method)
	case e.external&dosDirectory != 0 || strings.HasSuffix(e.name, "/"):
		// miniz takes such an entry for a directory and extracts nothing from it: torch would
		// read uninitialized memory where we read the entry's bytes.
		return fault.New(fault.Malformed, e.name, "entry marked as a directory (attributes %#x)", e.external)
	case e.method == zip.Store && e.csize != e.usize, e.usize > 0 && e.csize == 0:
		// miniz refuses both; reading a stored record by its uncompressed size would run
		// past the bytes it holds.
		return fault.New(fault.Malformed, e.name, "compressed size %d does not hold uncompressed size %d (method %d)", e.csize, e.usize, e.method)
	}
	return nil
}

// crossCheck opens the archive with archive/zip and requires its reading to be ours, entry by
// entry: names, flags, method, CRC, sizes and where the data starts.
func crossCheck(ra io.ReaderAt, size int64, d *directory, recs []*Record) error {
	zr, err := zip.NewReader(ra, size)
	if err != nil {
		return fault.Wrap(fault.Malformed, "", err, "archive/zip refuses the archive")
	}
	if len(zr.File) != len(d.entries) {
		return fault.New(fault.Malformed, "", "zip directory lists %d entries, archive/zip read %d", len(d.entries), len(zr.File))
	}
	for i, f := range zr.File {
		e := &d.entries[i]
		off, err := f.DataOffset()
		if err != nil || recs[i] == nil || f.Name != e.name || f.Flags != e.flags || f.Method != e.method || f.CRC32 != e.crc ||
			f.CompressedSize64 != e.csize || f.UncompressedSize64 != e.usize || off != recs[i].off {
			return fault.New(fault.Malformed, e.name, "archive/zip reads entry %d differently (%q at %d)", i, f.Name, off)
		}
	}
	return nil
}

// newRecord describes an entry whose data starts at file offset off.
func (c *Container) newRecord(e *cdEntry, off int64) *Record {
	return &Record{Entry: e.name, Size: int64(e.usize), ra: c.ra, off: off,
		csize: int64(e.csize), deflated: e.method == zip.Deflate, crc: e.crc, hasCRC: true}
}

// scanEntry pre-scans one zip entry as a pickle stream, verifying its CRC. rec is nil when the
// entry's local header could not be read.
func (c *Container) scanEntry(name string, rec *Record) *Stream {
	var refusal error
	switch {
	case rec == nil:
		refusal = fault.New(fault.Malformed, name, "local header unreadable")
	case rec.Size > c.lim.MaxPickleBytes:
		refusal = fault.New(fault.Limit, name, "pickle of %d bytes exceeds limit max-pickle-bytes %d", rec.Size, c.lim.MaxPickleBytes)
	}
	if refusal != nil {
		s := &Stream{Entry: name, Offset: -1, Scan: &unpickler.Scan{}, Err: refusal}
		c.Streams = append(c.Streams, s)
		return s
	}
	r, _ := rec.Open()
	pos := rec.off
	if rec.deflated {
		pos = -1
	}
	s := c.scanRecord(r, rec.Size, name, pos)
	if s.Err == nil {
		if s.Scan.Length != rec.Size {
			s.Err = fault.At(fault.Malformed, name, s.Scan.Length, "%d bytes after STOP", rec.Size-s.Scan.Length)
		} else if _, err := io.Copy(io.Discard, r); err != nil {
			s.Err = err
		}
		if s.Err != nil {
			s.Raw = nil
		}
	}
	return s
}

// scanRecord pre-scans the pickle read from r, a record's (or a deflate stream's) bytes. The
// pre-scanner reports any read failure but EOF as Internal, also when the reader refused the
// bytes (a corrupt deflate stream, data shorter than declared, a CRC mismatch): such a failure
// is bad input, so the file exits 4, not 1.
func (c *Container) scanRecord(r io.Reader, avail int64, entry string, pos int64) *Stream {
	tap := &errTap{r: r}
	s := c.scan(bufio.NewReaderSize(tap, 64<<10), avail, entry, pos)
	if s.Err == nil || fault.KindOf(s.Err) != fault.Internal || tap.err == nil {
		return s
	}
	var corrupt flate.CorruptInputError
	switch {
	case fault.KindOf(tap.err) != fault.Internal:
		s.Err = tap.err
	case errors.As(tap.err, &corrupt) || errors.Is(tap.err, io.ErrUnexpectedEOF):
		s.Err = fault.Wrap(fault.Malformed, entry, tap.err, "deflate stream")
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

// isPickleEntry reports whether an entry should be scanned as a pickle: a .pkl name, or content
// that starts with a PROTO opcode. rec is nil when the entry's local header was unreadable.
func isPickleEntry(name string, rec *Record) bool {
	if strings.HasSuffix(foldName(name), ".pkl") {
		return true
	}
	if rec == nil || rec.Size < 2 {
		return false
	}
	r, _ := rec.Open()
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
func commonPrefix(entries []cdEntry) (string, error) {
	if len(entries) == 0 {
		return "", fault.New(fault.Malformed, "", "empty zip archive")
	}
	first := entries[0].name
	i := strings.IndexByte(first, '/')
	if i <= 0 {
		return "", fault.New(fault.Malformed, first, "first entry is not inside a folder: not a torch archive")
	}
	prefix := first[:i]
	for _, e := range entries {
		if !strings.HasPrefix(e.name, prefix+"/") {
			return prefix, fault.New(fault.Malformed, e.name, "entry outside the archive folder %q", prefix)
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

// checkLocalHeader compares the local file header with the central directory: name, method and
// flags must agree (CVE-2025-1944: scanners read one name, torch the other), and so must the CRC
// and sizes unless they are deferred to a data descriptor; the extra field must be as clean as
// the directory's. It returns the offset of the entry's data, which every reader computes from
// the local header's lengths.
func checkLocalHeader(ra io.ReaderAt, e *cdEntry) (int64, error) {
	h := make([]byte, localLen+len(e.name))
	if _, err := ra.ReadAt(h, e.headerOffset); err != nil {
		return 0, fault.Wrap(fault.Malformed, e.name, err, "local header at %d", e.headerOffset)
	}
	b := readBuf(h)
	if b.uint32() != sigLocal {
		return 0, fault.At(fault.Malformed, e.name, e.headerOffset, "no local header signature")
	}
	b.sub(2) // version needed
	flags, method := b.uint16(), b.uint16()
	b.sub(4) // modification time and date
	crc, csize32, usize32 := b.uint32(), b.uint32(), b.uint32()
	nameLen, extraLen := int(b.uint16()), int(b.uint16())
	// The data offset is known even when the header disagrees, so a payload in a forged archive
	// can still be scanned and reported.
	off := e.headerOffset + localLen + int64(nameLen) + int64(extraLen)
	mismatch := func(what string, local, central any) error {
		return fault.At(fault.Malformed, e.name, e.headerOffset, "local header %s %v, central directory %v", what, local, central)
	}
	if name := string(b); nameLen != len(e.name) || name != e.name {
		return off, fault.At(fault.Malformed, e.name, e.headerOffset, "local header name differs from the central directory's %q", e.name)
	}
	if method != e.method {
		return off, mismatch("method", method, e.method)
	}
	if flags != e.flags {
		return off, mismatch("flags", flags, e.flags)
	}
	extra := make([]byte, extraLen)
	if _, err := ra.ReadAt(extra, e.headerOffset+localLen+int64(nameLen)); err != nil {
		return off, fault.Wrap(fault.Malformed, e.name, err, "local header extra field")
	}
	fields, err := extraFields(extra)
	if err != nil {
		return off, fault.Wrap(fault.Malformed, e.name, err, "local header extra field")
	}
	if flags&flagDataDescriptor != 0 {
		return off, nil
	}
	usize, csize := uint64(usize32), uint64(csize32)
	if err := applyZip64(fields[zip64ExtraID], &usize, &csize, nil); err != nil {
		return off, fault.Wrap(fault.Malformed, e.name, err, "local header")
	}
	switch {
	case crc != e.crc:
		return off, mismatch("CRC", crc, e.crc)
	case csize != e.csize || usize != e.usize:
		return off, mismatch("sizes", [2]uint64{csize, usize}, [2]uint64{e.csize, e.usize})
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
	if c.Kind != Legacy {
		key = foldName(key) // records of a zip are found as miniz finds them
	}
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

// sweepLocalHeaders scans, in an archive the strict reader refused, every pickle some reader
// could find in it: whatever follows each local header signature in the file, read both as
// stored bytes (up to the end of the file) and as a deflate stream, since the directory that
// would say which is not to be trusted. Every reader finds an entry's data through a local
// header, and a pickle ends at its STOP, so this sees at least what any reader's sizes would
// give it. At most max-zip-entries headers are read, and the streams scanned stop once they
// have consumed four times the file's size or two pickle limits; each header costs at least
// sweepHeaderCost of that budget, so a file made of signatures alone cannot make it read
// (and allocate a decoder for) millions of them.
func (c *Container) sweepLocalHeaders() {
	budget := min(4*c.size, 2*c.lim.MaxPickleBytes) + 1<<20
	sig := []byte("PK\x03\x04")
	chunk := make([]byte, 1<<20+len(sig)-1)
	headers := 0
	for base := int64(0); base < c.size && headers < c.lim.MaxZipEntries && budget > 0; base += 1 << 20 {
		n, _ := c.ra.ReadAt(chunk, base)
		for i := 0; i+len(sig) <= n && headers < c.lim.MaxZipEntries && budget > 0; {
			j := bytes.Index(chunk[i:n], sig)
			if j < 0 {
				break
			}
			headers++
			budget -= max(c.sweepHeader(base+int64(i+j)), sweepHeaderCost)
			i += j + 1
		}
	}
}

// sweepHeaderCost is the least a swept header is charged: about what its deflate reader and
// buffer allocate.
const sweepHeaderCost = 64 << 10

// sweepHeader scans the data after the local header at off as a stored and as a deflated
// pickle, and returns the bytes the scans consumed.
func (c *Container) sweepHeader(off int64) int64 {
	var h [localLen]byte
	if _, err := c.ra.ReadAt(h[:], off); err != nil {
		return 0
	}
	b := readBuf(h[26:])
	data := off + localLen + int64(b.uint16()) + int64(b.uint16())
	if data >= c.size {
		return 0
	}
	entry := fmt.Sprintf("local header@%d", off)
	var used int64
	avail := min(c.size-data, c.lim.MaxPickleBytes)
	if looksLikePickle(firstByte(c.ra, data)) {
		used += swept(c.scan(newSource(c.ra, data, avail), avail, entry, data))
	}
	inflated := bufio.NewReaderSize(flate.NewReader(io.NewSectionReader(c.ra, data, c.size-data)), 64<<10)
	if first, err := inflated.Peek(1); err == nil && looksLikePickle(first[0]) {
		used += swept(c.scanRecord(inflated, c.lim.MaxPickleBytes, entry+" (deflated)", -1))
	}
	return used
}

// swept marks a stream the sweep found: in a refused archive only the globals a stream names
// make it unsafe. A refused opcode (EXT4, PERSID, a buffer) is everywhere in tensor bytes read
// as a pickle, and none of them runs anything in torch without a global, so it is reported as
// malformed. It returns the bytes the stream consumed.
func swept(s *Stream) int64 {
	if fault.KindOf(s.Err) == fault.Unsafe {
		s.Err = fault.Wrap(fault.Malformed, s.Entry, s.Err, "not a pickle torch could run")
	}
	return s.Scan.Length
}

package torchzip

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/testkit"
	"github.com/ptsafe/converter/internal/unpickler"
)

// The builders below write zip structures field by field, so that a test can write what no
// well-behaved writer would: two ZIP64 fields, two directories, a locator that disagrees.

// rec is one stored record of a hand-built archive.
type rec struct {
	name string
	data []byte
}

func le16(b []byte, v uint16) []byte { return binary.LittleEndian.AppendUint16(b, v) }
func le32(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }
func le64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }

// hdr overrides what a header says about its record; zero values mean "the truth".
type hdr struct {
	csize, usize, off uint32
	crc               *uint32
	extra             []byte
}

func localHeader(r rec, h hdr) []byte {
	b := headerFields(le32(nil, sigLocal), r, h)
	return append(append(b, r.name...), h.extra...)
}

func centralHeader(r rec, off int, h hdr) []byte {
	b := headerFields(le16(le32(nil, sigCentral), 20), r, h) // version made by, then the local fields
	b = append(b, make([]byte, 10)...)                       // comment length, disk, attributes
	b = le32(b, or32(h.off, off))
	return append(append(b, r.name...), h.extra...)
}

// headerFields appends the fields the local and central headers share, from the version needed
// to extract through the extra field's length.
func headerFields(b []byte, r rec, h hdr) []byte {
	b = le16(b, 20)
	b = le16(b, 0) // flags
	b = le16(b, 0) // stored
	b = le32(b, 0) // time, date
	crc := crc32.ChecksumIEEE(r.data)
	if h.crc != nil {
		crc = *h.crc
	}
	b = le32(b, crc)
	b = le32(b, or32(h.csize, len(r.data)))
	b = le32(b, or32(h.usize, len(r.data)))
	b = le16(b, uint16(len(r.name)))
	return le16(b, uint16(len(h.extra)))
}

func or32(v uint32, def int) uint32 {
	if v != 0 {
		return v
	}
	return uint32(def)
}

func zip64Field(values ...uint64) []byte {
	b := le16(nil, zip64ExtraID)
	b = le16(b, uint16(8*len(values)))
	for _, v := range values {
		b = le64(b, v)
	}
	return b
}

func eocdRecord(count, size, off int, comment string) []byte {
	b := le32(nil, sigEOCD)
	b = le32(b, 0) // disks
	b = le16(b, uint16(count))
	b = le16(b, uint16(count))
	b = le32(b, uint32(size))
	b = le32(b, uint32(off))
	b = le16(b, uint16(len(comment)))
	return append(b, comment...)
}

func end64(at, count, size, off int) []byte {
	b := le32(nil, sigEOCD64)
	b = le64(b, 44)
	b = le32(b, 45<<16|45)
	b = le64(b, 0) // disks
	b = le64(b, uint64(count))
	b = le64(b, uint64(count))
	b = le64(b, uint64(size))
	b = le64(b, uint64(off))
	b = le32(b, sigLocator64)
	b = le32(b, 0)
	b = le64(b, uint64(at))
	return le32(b, 1)
}

// bodyOf writes the local headers and data of recs after prefix and returns where each starts.
func bodyOf(prefix []byte, recs []rec) ([]byte, []int) {
	b := bytes.Clone(prefix)
	var offs []int
	for _, r := range recs {
		offs = append(offs, len(b))
		b = append(append(b, localHeader(r, hdr{})...), r.data...)
	}
	return b, offs
}

// plainZip is a clean archive of recs: the control every hostile variant departs from.
func plainZip(recs []rec) []byte {
	body, offs := bodyOf(nil, recs)
	var cd []byte
	for i, r := range recs {
		cd = append(cd, centralHeader(r, offs[i], hdr{})...)
	}
	return append(append(body, cd...), eocdRecord(len(recs), len(cd), len(body), "")...)
}

// torchRecs are the records of a minimal torch archive whose data.pkl is pkl.
func torchRecs(pkl string) []rec {
	return []rec{{"archive/data.pkl", []byte(pkl)}, {"archive/version", []byte("3\n")}}
}

const (
	benignPkl = "\x80\x02}q\x00." // {}
	// payloadPkl calls posix.system: never run, only scanned.
	payloadPkl = "\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."
)

// dupZip64 is differential 1: data.pkl's directory entry carries two ZIP64 fields; miniz and
// archive/zip take the first offset (the benign pickle), a reader taking the last the other.
func dupZip64(other string) []byte {
	recs := torchRecs(benignPkl)
	body, offs := bodyOf(nil, recs)
	alt := rec{recs[0].name, []byte(other)}
	altOff := len(body)
	body = append(append(body, localHeader(alt, hdr{})...), alt.data...)
	extra := append(zip64Field(uint64(len(recs[0].data)), uint64(offs[0])), zip64Field(uint64(len(alt.data)), uint64(altOff))...)
	cd := centralHeader(recs[0], 0, hdr{csize: sat32, off: sat32, extra: extra})
	cd = append(cd, centralHeader(recs[1], offs[1], hdr{})...)
	return append(append(body, cd...), eocdRecord(2, len(cd), len(body), "")...)
}

// twoDirs is differential 2: the end record's directory starts with an entry archive/zip
// rejects (a saturated size with no ZIP64 field), and archive/zip then finds a second
// directory in the gap before the end record ("prepended data").
func twoDirs(other string) []byte {
	recs, alt := torchRecs(benignPkl), torchRecs(other)
	body, offs := bodyOf(nil, recs)
	body, altOffs := bodyOf(body, alt)
	cdA := centralHeader(rec{"archive/junk", nil}, 0, hdr{csize: sat32})
	for i, r := range recs {
		cdA = append(cdA, centralHeader(r, offs[i], hdr{})...)
	}
	var cdB []byte
	for i, r := range alt {
		cdB = append(cdB, centralHeader(r, altOffs[i], hdr{})...)
	}
	aOff := len(body)
	out := append(append(body, cdA...), cdB...)
	return append(out, eocdRecord(len(recs)+1, len(cdA), aOff, "")...)
}

// locatorDisagrees is differential 3: a ZIP64 locator whose record names one directory while
// the unsaturated 32-bit end record names another; miniz reads the first, archive/zip the other.
func locatorDisagrees(other string) []byte {
	recs, alt := torchRecs(other), torchRecs(benignPkl)
	body, offs := bodyOf(nil, recs)
	body, altOffs := bodyOf(body, alt)
	var cdA, cdB []byte
	for i, r := range recs {
		cdA = append(cdA, centralHeader(r, offs[i], hdr{})...)
	}
	for i, r := range alt {
		cdB = append(cdB, centralHeader(r, altOffs[i], hdr{})...)
	}
	aOff, bOff := len(body), len(body)+len(cdA)
	out := append(append(body, cdA...), cdB...)
	out = append(out, end64(len(out), len(recs), len(cdA), aOff)...)
	return append(out, eocdRecord(len(alt), len(cdB), bOff, "")...)
}

// withZip64End adds a consistent ZIP64 end record and locator to a plain archive, as torch's
// writer always does.
func withZip64End(recs []rec) []byte {
	b := plainZip(recs)
	end := b[len(b)-eocdLen:]
	rb := readBuf(end[10:])
	count, size, off := int(rb.uint16()), int(rb.uint32()), int(rb.uint32())
	out := append(bytes.Clone(b[:len(b)-eocdLen]), end64(len(b)-eocdLen, count, size, off)...)
	return append(out, end...)
}

// legacyFile returns torch's own legacy fixture.
func legacyFile(t *testing.T) []byte {
	b, err := os.ReadFile(filepath.Join(testkit.FixtureDir(), "dtypes_legacy.pt"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tarLegacy is differential 4: a legacy checkpoint whose sys_info pickle (which torch ignores)
// is a long string laid out so that the first 512 bytes are a valid V7 tar header, no ustar
// magic. torch.load opens it with tarfile and never reads the legacy pickles. With storages
// set, an empty first member is followed by a "storages" member holding it, written over the
// legacy pickles that follow: what torch's tar loader would run.
func tarLegacy(t *testing.T, storages []byte) []byte {
	legacy := legacyFile(t)
	c := openBytes(t, legacy)
	head := legacy[:c.Streams[2].Offset]
	rest := legacy[c.Streams[2].Offset+c.Streams[2].Scan.Length:]
	text := bytes.Repeat([]byte("a"), 600)
	start := len(head) + 7 // PROTO 2, BINUNICODE and its length
	put := func(at int, v string) { copy(text[at-start:], v) }
	put(100, "0000644\x00")
	put(108, "0000000\x00")
	put(116, "0000000\x00")
	put(124, "00000000000\x00")
	put(136, "00000000000\x00")
	put(148, "        ")
	put(156, "0")
	put(157, string(make([]byte, 355)))
	sysInfo := append(le32([]byte("\x80\x02X"), uint32(len(text))), text...)
	sysInfo = append(sysInfo, '.')
	out := append(append(bytes.Clone(head), sysInfo...), rest...)
	if storages != nil {
		member := ustarTar(t, map[string][]byte{"storages": storages}, "storages")
		out = append(out[:tarBlock], member...)
	}
	var sum int
	for i, b := range out[:tarBlock] {
		if i < 148 || i >= 156 {
			sum += int(b)
		}
	}
	copy(out[148:], fmt.Sprintf("%06o\x00 ", sum+8*' '))
	return out
}

// tarStorages is a tar checkpoint's "storages" member: one FloatStorage of 2 elements, then a
// views pickle that is a payload (a later pickle of the member).
func tarStorages() []byte {
	b := []byte("\x80\x02K\x01.")                                                                 // num_storages = 1
	b = append(b, "\x80\x02X\x01\x00\x00\x000X\x03\x00\x00\x00cpuctorch\nFloatStorage\n\x87."...) // args
	b = le64(b, 2)
	b = append(b, make([]byte, 8)...)
	return append(b, payloadPkl...) // storage_views
}

// ustarTar writes a tar with the given members through archive/tar (ustar magic).
func ustarTar(t *testing.T, members map[string][]byte, order ...string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range order {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(members[name])), Format: tar.FormatUSTAR}); err != nil {
			t.Fatal(err)
		}
		tw.Write(members[name])
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// v7 removes the ustar magic of a tar's first header and fixes its checksum: a V7 header.
func v7(b []byte) []byte {
	out := bytes.Clone(b)
	copy(out[257:265], make([]byte, 8))
	copy(out[148:156], "        ")
	sum := 0
	for _, c := range out[:tarBlock] {
		sum += int(c)
	}
	copy(out[148:], fmt.Sprintf("%06o\x00 ", sum))
	return out
}

// TestOneReading builds files that torch 1.13 reads differently from a naive reader (the four
// differentials of issue 9 and the smaller findings beside them), each with a benign twin
// where it helps, and checks that Open refuses them, and that a payload in any reading is
// found (so the file is judged unsafe, never merely malformed).
func TestOneReading(t *testing.T) {
	cases := []struct {
		name, why string
		file      func(t *testing.T) []byte
		kind      Kind
		problem   fault.Kind // Internal: accepted
		dangerous bool       // a dangerous global must be among the globals found
		check     func(t *testing.T, c *Container)
	}{
		{name: "control-plain", why: "a clean hand-built archive is accepted",
			file: func(*testing.T) []byte { return plainZip(torchRecs(benignPkl)) }, kind: Zip},
		{name: "control-zip64-end", why: "torch always writes a ZIP64 end record and locator; consistent, they are accepted",
			file: func(*testing.T) []byte { return withZip64End(torchRecs(benignPkl)) }, kind: Zip},
		{name: "dup-zip64-extra", why: "miniz takes the first ZIP64 offset, our old reader the last",
			file: func(*testing.T) []byte { return dupZip64(payloadPkl) }, kind: OtherZip, problem: fault.Malformed, dangerous: true},
		{name: "dup-zip64-extra-benign", why: "the twin with two benign pickles is refused, not unsafe",
			file: func(*testing.T) []byte { return dupZip64(benignPkl) }, kind: OtherZip, problem: fault.Malformed},
		{name: "two-directories", why: "archive/zip falls back to a second directory before the end record",
			file: func(*testing.T) []byte { return twoDirs(payloadPkl) }, kind: OtherZip, problem: fault.Malformed, dangerous: true},
		{name: "zip64-locator-disagrees", why: "miniz uses the ZIP64 end record whenever its locator is there",
			file: func(*testing.T) []byte { return locatorDisagrees(payloadPkl) }, kind: OtherZip, problem: fault.Malformed, dangerous: true},
		{name: "zip64-locator-elsewhere", why: "zipfile expects the ZIP64 end record right before its locator; miniz follows the pointer",
			file: func(*testing.T) []byte {
				b := withZip64End(torchRecs(benignPkl))
				loc := len(b) - eocdLen - locatorLen
				binary.LittleEndian.PutUint64(b[loc+8:], binary.LittleEndian.Uint64(b[loc+8:])-1)
				return b
			}, kind: OtherZip, problem: fault.Malformed},
		{name: "tar-legacy-polyglot", why: "torch.load tries tarfile first: a legacy file that is also a V7 tar is read as the tar",
			file: func(t *testing.T) []byte { return tarLegacy(t, nil) }, kind: Tar, problem: fault.Malformed,
			check: func(t *testing.T, c *Container) {
				if len(c.Streams) < 5 {
					t.Errorf("%d streams; want the legacy reading's five scanned as well", len(c.Streams))
				}
			}},
		{name: "tar-legacy-polyglot-payload", why: "the tar's storages member holds a payload in bytes the legacy reading calls sys_info",
			file: func(t *testing.T) []byte { return tarLegacy(t, tarStorages()) }, kind: Tar, problem: fault.Malformed, dangerous: true},
		{name: "stored-declares-more", why: "a stored record read by its uncompressed size runs past its bytes (miniz refuses it)",
			file: func(*testing.T) []byte {
				recs := append(torchRecs(benignPkl), rec{"archive/data/0", make([]byte, 8)})
				body, offs := bodyOf(nil, recs)
				var cd []byte
				for i, r := range recs {
					h := hdr{}
					if i == 2 {
						h.usize = 16
					}
					cd = append(cd, centralHeader(r, offs[i], h)...)
				}
				return append(append(body, cd...), eocdRecord(len(recs), len(cd), len(body), "")...)
			}, kind: Zip, problem: fault.Malformed},
		{name: "byteorder-upper-case", why: "miniz finds BYTEORDER when torch asks for byteorder",
			file: func(*testing.T) []byte {
				return plainZip(append(torchRecs(benignPkl), rec{"archive/BYTEORDER", []byte("big")}))
			}, kind: Zip,
			check: func(t *testing.T, c *Container) {
				if c.ByteOrder != "big" {
					t.Errorf("byte order %q, want big", c.ByteOrder)
				}
			}},
		{name: "data-pkl-upper-case", why: "miniz finds DATA.PKL when torch asks for data.pkl",
			file: func(*testing.T) []byte {
				return plainZip([]rec{{"archive/DATA.PKL", []byte(payloadPkl)}, {"archive/version", []byte("3\n")}})
			}, kind: Zip, dangerous: true,
			check: func(t *testing.T, c *Container) {
				if c.Main == nil {
					t.Error("DATA.PKL not taken for data.pkl")
				}
			}},
		{name: "storage-upper-case", why: "torch asks for data/ab, miniz finds data/AB",
			file: func(*testing.T) []byte {
				return plainZip(append(torchRecs(benignPkl), rec{"archive/data/AB", make([]byte, 4)}))
			}, kind: Zip,
			check: func(t *testing.T, c *Container) {
				if r, err := c.Storage("ab"); err != nil || r.Size != 4 {
					t.Errorf("Storage(ab): %v", err)
				}
			}},
		{name: "directory-attribute", why: "miniz extracts nothing from an entry whose attributes say directory: torch reads uninitialized memory",
			file: func(*testing.T) []byte {
				b := plainZip(append(torchRecs(benignPkl), rec{"archive/data/0", make([]byte, 4)}))
				cd := bytes.LastIndex(b, binary.LittleEndian.AppendUint32(nil, sigCentral))
				binary.LittleEndian.PutUint32(b[cd+38:], 0x58)
				return b
			}, kind: Zip, problem: fault.Malformed},
		{name: "directory-name", why: "miniz takes an entry whose name ends in a slash for a directory",
			file: func(*testing.T) []byte {
				return plainZip(append(torchRecs(benignPkl), rec{"archive/data/", make([]byte, 4)}))
			}, kind: Zip, problem: fault.Malformed},
		{name: "end-record-comment", why: "zipfile looks for the end record inside a comment; torch writes none",
			file: func(*testing.T) []byte {
				b := plainZip(torchRecs(benignPkl))
				binary.LittleEndian.PutUint16(b[len(b)-2:], 4)
				return append(b, "note"...)
			}, kind: OtherZip, problem: fault.Malformed},
		{name: "two-end-records", why: "readers that search the tail differently pick different end records",
			file: func(*testing.T) []byte {
				recs := torchRecs(benignPkl)
				decoy := eocdRecord(0, 0, 0, "")
				recs[1].data = append(append([]byte("3\n"), decoy[:20]...), 0x20, 0) // comment length reaching the end
				b := plainZip(recs)
				return b
			}, kind: OtherZip, problem: fault.Malformed},
		{name: "prepended-data", why: "archive/zip and zipfile shift every offset by bytes before the archive; miniz does not",
			file: func(*testing.T) []byte {
				b := plainZip(torchRecs(benignPkl))
				return append([]byte("PK\x03\x04junk"), b...)
			}, kind: OtherZip, problem: fault.Malformed},
		{name: "directory-trailing-bytes", why: "miniz counts entries, zipfile reads the directory's size",
			file: func(*testing.T) []byte {
				recs := torchRecs(benignPkl)
				body, offs := bodyOf(nil, recs)
				var cd []byte
				for i, r := range recs {
					cd = append(cd, centralHeader(r, offs[i], hdr{})...)
				}
				cd = append(cd, make([]byte, 46)...)
				return append(append(body, cd...), eocdRecord(len(recs), len(cd), len(body), "")...)
			}, kind: OtherZip, problem: fault.Malformed},
		{name: "extra-field-stray-bytes", why: "miniz refuses a partial extra record, archive/zip ignores it",
			file: func(*testing.T) []byte {
				recs := torchRecs(benignPkl)
				body, offs := bodyOf(nil, recs)
				cd := centralHeader(recs[0], offs[0], hdr{extra: []byte{1, 2}})
				cd = append(cd, centralHeader(recs[1], offs[1], hdr{})...)
				return append(append(body, cd...), eocdRecord(len(recs), len(cd), len(body), "")...)
			}, kind: OtherZip, problem: fault.Malformed},
		{name: "local-crc-differs", why: "a local header must say what the directory says when there is no data descriptor",
			file: func(*testing.T) []byte {
				recs := torchRecs(benignPkl)
				bad := uint32(1)
				b := localHeader(recs[0], hdr{crc: &bad})
				b = append(b, recs[0].data...)
				off1 := len(b)
				b = append(append(b, localHeader(recs[1], hdr{})...), recs[1].data...)
				cd := append(centralHeader(recs[0], 0, hdr{}), centralHeader(recs[1], off1, hdr{})...)
				return append(append(b, cd...), eocdRecord(2, len(cd), off1+localLen+len(recs[1].name)+2, "")...)
			}, kind: Zip, problem: fault.Malformed},
		{name: "no-version-record", why: "torch's reader refuses an archive without one",
			file: func(*testing.T) []byte { return plainZip(torchRecs(benignPkl)[:1]) }, kind: Zip, problem: fault.Malformed},
		{name: "version-not-a-number", why: "torch cannot parse it and refuses the archive",
			file: func(*testing.T) []byte {
				return plainZip([]rec{{"archive/data.pkl", []byte(benignPkl)}, {"archive/version", []byte("S\n")}})
			}, kind: Zip, problem: fault.Malformed},
		{name: "version-too-new", why: "torch 1.13 reads format versions 1 to 10",
			file: func(*testing.T) []byte {
				return plainZip([]rec{{"archive/data.pkl", []byte(benignPkl)}, {"archive/version", []byte("11")}})
			}, kind: Zip, problem: fault.Malformed},
		{name: "version-trailing-junk", why: "std::stoull reads the leading number and ignores the rest",
			file: func(*testing.T) []byte {
				return plainZip([]rec{{"archive/data.pkl", []byte(benignPkl)}, {"archive/version", []byte(" +3 junk")}})
			}, kind: Zip},
		{name: "dot-data-version-first", why: "torch reads .data/version before version",
			file: func(*testing.T) []byte {
				return plainZip([]rec{{"archive/data.pkl", []byte(benignPkl)}, {"archive/.data/version", []byte("3\n")}, {"archive/version", []byte("x")}})
			}, kind: Zip},
		{name: "sweep-bounded-by-signatures", why: "a refused file of 200,000 local header signatures is swept within its budget, not header by header",
			file: func(t *testing.T) []byte {
				block := append(append([]byte("PK\x03\x04"), make([]byte, 26)...), '.')
				return bytes.Repeat(block, 200_000)
			}, kind: OtherZip, problem: fault.Malformed,
			check: func(t *testing.T, c *Container) {
				size := int64(31 * 200_000)
				if most := (4*size+1<<20)/sweepHeaderCost + 1; int64(len(c.Streams)) > most {
					t.Errorf("%d streams scanned; want at most %d", len(c.Streams), most)
				}
			}},
		{name: "sweep-ignores-refused-opcodes", why: "in a refused archive, tensor bytes that read as EXT4 are no payload",
			file: func(*testing.T) []byte {
				b := plainZip(append(torchRecs(benignPkl), rec{"archive/data/0", []byte("\x84\x01\x00\x00\x00.")}))
				return append([]byte("PK\x03\x04junk"), b...)
			}, kind: OtherZip, problem: fault.Malformed,
			check: func(t *testing.T, c *Container) {
				for _, s := range c.Streams {
					if fault.KindOf(s.Err) == fault.Unsafe {
						t.Errorf("stream %s: %v; want no unsafe verdict from a refused opcode", s.Entry, s.Err)
					}
				}
			}},
		{name: "bare-pickle-short-binunicode-first", why: "Python runs a pickle that starts without PROTO",
			file: func(*testing.T) []byte {
				return []byte("\x8c\x05posix\x8c\x06system\x93\x8c\x02id\x85R.")
			}, kind: Pickle, problem: fault.Unsupported, dangerous: true},
		{name: "bare-pickle-frame-first", why: "a FRAME opcode may lead a protocol-4 stream",
			file: func(*testing.T) []byte {
				p := "\x8c\x05posix\x8c\x06system\x93\x8c\x02id\x85R."
				return append(le64([]byte{0x95}, uint64(len(p))), p...)
			}, kind: Pickle, problem: fault.Unsupported, dangerous: true},
		{name: "tar-later-pickle", why: "torch's tar loader runs every pickle of the storages member, not only the first",
			file: func(t *testing.T) []byte {
				return ustarTar(t, map[string][]byte{"storages": tarStorages()}, "storages")
			}, kind: Tar, problem: fault.Unsupported, dangerous: true},
		{name: "tar-tensors-later-pickle", why: "the tensors member: past one tensor's raw geometry, the next argument pickle is a payload",
			file: func(t *testing.T) []byte {
				b := []byte("\x80\x02K\x02.")                                 // num_tensors = 2
				b = append(b, "\x80\x02X\x01\x00\x00\x001K\x00K\x00\x87."...) // (key, storage id, type)
				b = le32(le32(b, 1), 0)                                       // ndim 1, padding
				b = le64(le64(le64(b, 2), 1), 0)                              // size, stride, offset
				b = append(b, payloadPkl...)
				return ustarTar(t, map[string][]byte{"tensors": b}, "tensors")
			}, kind: Tar, problem: fault.Unsupported, dangerous: true},
		{name: "tar-v7-no-magic", why: "tarfile opens a V7 header without ustar magic",
			file: func(t *testing.T) []byte {
				return v7(ustarTar(t, map[string][]byte{"pickle": []byte(payloadPkl)}, "pickle"))
			}, kind: Tar, problem: fault.Unsupported, dangerous: true},
		{name: "npy-protocol-0-object", why: "an object .npy may hold a protocol-0 pickle",
			file: func(*testing.T) []byte {
				header := "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
				b := le16([]byte("\x93NUMPY\x01\x00"), uint16(len(header)))
				return append(append(b, header...), "cposix\nsystem\n(S'id'\ntR."...)
			}, kind: Numpy, problem: fault.Unsupported, dangerous: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := openBytes(t, tc.file(t))
			if c.Kind != tc.kind {
				t.Errorf("kind %s, want %s (%s)", c.Kind, tc.kind, tc.why)
			}
			switch {
			case tc.problem == fault.Internal && c.Problem != nil:
				t.Errorf("refused: %v; want it accepted (%s)", c.Problem, tc.why)
			case tc.problem != fault.Internal && fault.KindOf(c.Problem) != tc.problem:
				t.Errorf("problem %v; want a %s refusal (%s)", c.Problem, tc.problem, tc.why)
			}
			dangerous := false
			for _, g := range c.Globals() {
				dangerous = dangerous || g.Class == unpickler.Dangerous
			}
			if dangerous != tc.dangerous {
				t.Errorf("dangerous global found: %t, want %t (%s); globals %+v", dangerous, tc.dangerous, tc.why, c.Globals())
			}
			if tc.check != nil {
				tc.check(t, c)
			}
			t.Logf("%s: %v", c.Kind, c.Problem)
		})
	}
}

// TestPythonTarHeader checks the header test against what tarfile's nti accepts: the checksum
// field's spellings and the all-zero and short blocks it refuses.
func TestPythonTarHeader(t *testing.T) {
	block := func(field string) []byte {
		b := bytes.Repeat([]byte{'x'}, tarBlock)
		copy(b[148:156], "        ")
		sum := 0
		for _, c := range b {
			sum += int(c)
		}
		copy(b[148:156], fmt.Sprintf(field, sum))
		return b
	}
	cases := []struct {
		name  string
		block []byte
		want  bool
	}{
		{"octal-nul-space", block("%06o\x00 "), true},
		{"octal-spaces", block(" %06o "), true},
		{"python-0o-prefix", block("0o%05o\x00"), true},
		{"plus-sign", block("+%06o\x00"), true},
		{"wrong-sum", block("%06o1\x00"), false},
		{"decimal-digits", block("%06d\x00"), false},
		{"all-zero", make([]byte, tarBlock), false},
		{"short", block("%06o\x00 ")[:511], false},
	}
	for _, tc := range cases {
		if got := isPythonTar(tc.block); got != tc.want {
			t.Errorf("%s: isPythonTar %t, want %t", tc.name, got, tc.want)
		}
	}
}

// TestCrossCheck feeds crossCheck a directory that differs from the archive in one field at a
// time, standing in for a reading of ours that archive/zip does not share: each must be caught.
func TestCrossCheck(t *testing.T) {
	b := plainZip(torchRecs(benignPkl))
	ra := bytes.NewReader(b)
	read := func(t *testing.T) (*directory, []*Record) {
		d, err := readDirectory(ra, int64(len(b)), 10)
		if err != nil {
			t.Fatal(err)
		}
		c := &Container{ra: ra}
		recs, problem := c.checkEntries(d)
		if problem != nil {
			t.Fatal(problem)
		}
		return d, recs
	}
	if d, recs := read(t); crossCheck(ra, int64(len(b)), d, recs) != nil {
		t.Fatal("the control archive fails the cross-check")
	}
	cases := map[string]func(d *directory, recs []*Record){
		"name":        func(d *directory, _ []*Record) { d.entries[1].name = "archive/VERSION" },
		"flags":       func(d *directory, _ []*Record) { d.entries[0].flags = 0x0800 },
		"crc":         func(d *directory, _ []*Record) { d.entries[0].crc++ },
		"sizes":       func(d *directory, _ []*Record) { d.entries[1].usize++ },
		"data-offset": func(_ *directory, recs []*Record) { recs[1].off++ },
		"entry-count": func(d *directory, _ []*Record) { d.entries = d.entries[:1] },
	}
	for name, change := range cases {
		d, recs := read(t)
		change(d, recs)
		if err := crossCheck(ra, int64(len(b)), d, recs[:len(d.entries)]); fault.KindOf(err) != fault.Malformed {
			t.Errorf("%s: crossCheck %v; want a Malformed refusal", name, err)
		}
	}
}

package torchzip

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/testkit"
	"github.com/ptsafe/converter/internal/unpickler"
)

// tzEntry is one record of a test archive.
type tzEntry = testkit.ZipEntry

// edit returns a copy of the fixture's records changed by fn.
func edit(t testing.TB, fixture string, fn func([]tzEntry) []tzEntry) []byte {
	return testkit.WriteZip(t, fn(testkit.FixtureEntries(t, fixture)))
}

func entryIndex(es []tzEntry, name string) int {
	for i, e := range es {
		if e.Name == name {
			return i
		}
	}
	panic("no entry " + name)
}

// patchFirst replaces the first occurrence of old (the local header's copy of a name; the
// central directory comes after it) with new, of the same length.
func patchFirst(t testing.TB, b []byte, old, new string) []byte {
	t.Helper()
	i := bytes.Index(b, []byte(old))
	if i < 0 || len(old) != len(new) {
		t.Fatalf("cannot patch %q", old)
	}
	out := bytes.Clone(b)
	copy(out[i:], new)
	return out
}

// bombStream returns a raw deflate stream (one fixed-Huffman block) that inflates to n zero
// bytes, n-1 a multiple of 258: a literal 0, then <length 258, distance 1> pairs. It is
// assembled directly because compressing a gigabyte to build it would dominate the test.
func bombStream(n int64) []byte {
	var out []byte
	var acc uint64
	var nbits uint
	put := func(v uint64, bits uint) { // LSB-first, as deflate packs bits
		acc |= v << nbits
		nbits += bits
		for nbits >= 8 {
			out = append(out, byte(acc))
			acc >>= 8
			nbits -= 8
		}
	}
	rev := func(code uint64, bits uint) uint64 { // Huffman codes are sent MSB-first
		var r uint64
		for i := uint(0); i < bits; i++ {
			r = r<<1 | (code>>i)&1
		}
		return r
	}
	put(1, 1)            // BFINAL
	put(1, 2)            // BTYPE 01: fixed Huffman
	put(rev(0x30, 8), 8) // literal 0
	for i := int64(0); i < (n-1)/258; i++ {
		put(rev(0xC5, 8), 8) // length code 285: 258 bytes
		put(0, 5)            // distance code 0: distance 1
	}
	put(0, 7) // end of block (256)
	put(0, 7) // flush
	return out
}

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r io.ReaderAt
	n atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

func openBytes(t testing.TB, b []byte) *Container {
	t.Helper()
	c, err := Open(bytes.NewReader(b), int64(len(b)), limits.Default(), &unpickler.Policy{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return c
}

// TestContainerChecks builds archives that differ from a real torch.save file in one detail
// each, and checks what Open makes of them: the kind it reports and how it refuses.
func TestContainerChecks(t *testing.T) {
	u32 := func(v uint32) *uint32 { return &v }
	pkl := []byte("\x80\x02}q\x00.") // an empty dict: a harmless pickle
	legacy, err := os.ReadFile(filepath.Join(testkit.FixtureDir(), "dtypes_legacy.pt"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		why      string
		file     func(t *testing.T) []byte
		kind     Kind
		problem  fault.Kind // Internal: no problem expected
		checkRec func(t *testing.T, c *Container)
	}{
		{
			name: "fixture-rezipped", why: "the control: our writer's archive of a torch file is accepted",
			file: func(t *testing.T) []byte { return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry { return e }) },
			kind: Zip,
		},
		{
			name: "duplicate-entry-name", why: "two records with one name: scanners read one, torch the other",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					return append(e, tzEntry{Name: "archive/data/0", Data: make([]byte, 24)})
				})
			},
			kind: Zip, problem: fault.Malformed,
		},
		{
			name: "names-differ-only-in-case", why: "torch (miniz) looks names up case-insensitively",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					return append(e, tzEntry{Name: "archive/DATA.pkl", Data: pkl})
				})
			},
			kind: Zip, problem: fault.Malformed,
		},
		{
			name: "entry-outside-inner-folder", why: "torch refuses records outside the archive prefix; a scanner may read them",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					return append(e, tzEntry{Name: "other/data.pkl", Data: pkl})
				})
			},
			kind: OtherZip, problem: fault.Malformed,
		},
		{
			name: "dotdot-name", why: "path traversal on extraction (modelaudit path_traversal.zip)",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					return append(e, tzEntry{Name: "archive/../../etc/cron.d/x", Data: []byte("x")})
				})
			},
			kind: Zip, problem: fault.Malformed,
		},
		{
			name: "absolute-name", why: "an absolute path escapes any extraction directory",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					return append(e, tzEntry{Name: "/archive/evil", Data: []byte("x")})
				})
			},
			kind: OtherZip, problem: fault.Malformed,
		},
		{
			name: "local-header-name-differs", why: "CVE-2025-1944: the scanner trusts one name, the loader the other",
			file: func(t *testing.T) []byte {
				b := edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry { return e })
				return patchFirst(t, b, "archive/data/0", "archive/data/1")
			},
			kind: Zip, problem: fault.Malformed,
		},
		{
			name: "encrypted-flag", why: "encrypted records cannot be scanned (picklescan malicious1_0x1.zip)",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					e[entryIndex(e, "archive/data/0")].Flags = 0x1
					return e
				})
			},
			kind: Zip, problem: fault.Malformed,
		},
		{
			name: "unknown-flag-bit", why: "a flag we do not understand may change how the bytes are read",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					e[entryIndex(e, "archive/data.pkl")].Flags = 0x2000
					return e
				})
			},
			kind: Zip, problem: fault.Malformed,
		},
		{
			name: "bzip2-method", why: "only stored and deflate are read by torch; anything else would be read differently",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					e[entryIndex(e, "archive/data/0")].Method = 12
					return e
				})
			},
			kind: Zip, problem: fault.Unsupported,
		},
		{
			name: "storage-crc-mismatch", why: "a flipped storage byte must fail the conversion, not pass silently",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					e[entryIndex(e, "archive/data/0")].CRC = u32(0xdeadbeef)
					return e
				})
			},
			kind: Zip,
			checkRec: func(t *testing.T, c *Container) {
				rec, _ := c.Storage("0")
				if err := rec.Check(); fault.KindOf(err) != fault.Malformed {
					t.Fatalf("Check: %v; want a Malformed CRC mismatch", err)
				}
			},
		},
		{
			name: "storage-crc-zero", why: "torch.serialization.set_crc32_options(False) writes CRC 0 and torch loads it",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					for i := range e {
						e[i].CRC = u32(0)
					}
					return e
				})
			},
			kind: Zip,
			checkRec: func(t *testing.T, c *Container) {
				rec, _ := c.Storage("0")
				if rec.NeedsCheck() {
					t.Fatal("a stored CRC-0 record claims to need a check")
				}
				if err := rec.Check(); err != nil {
					t.Fatalf("Check: %v", err)
				}
			},
		},
		{
			name: "data-pkl-shorter-than-declared", why: "a truncated deflated pickle is bad input (exit 4), not an internal error (exit 1)",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					i := entryIndex(e, "archive/data.pkl")
					e[i].Method, e[i].USize = zip.Deflate, int64(len(e[i].Data))+100
					return e
				})
			},
			kind: Zip,
			checkRec: func(t *testing.T, c *Container) {
				if c.Main == nil || fault.KindOf(c.Main.Err) != fault.Malformed {
					t.Fatalf("data.pkl stream %+v; want a Malformed stream error", c.Main)
				}
			},
		},
		{
			name: "torchscript-constants-pkl", why: "torch.jit.save archives carry executable TorchScript",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					return append(e, tzEntry{Name: "archive/constants.pkl", Data: []byte("\x80\x02).")})
				})
			},
			kind: TorchScript, problem: fault.Unsupported,
		},
		{
			name: "second-pkl", why: "a pickle torch never loads is where a payload hides from a data.pkl-only scanner",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					return append(e, tzEntry{Name: "archive/extra.pkl", Data: pkl})
				})
			},
			kind: Zip, problem: fault.Unsupported,
		},
		{
			name: "byteorder-big", why: "big-endian saves (s390x) are converted with a byte swap",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					return append(e, tzEntry{Name: "archive/byteorder", Data: []byte("big")})
				})
			},
			kind: Zip,
			checkRec: func(t *testing.T, c *Container) {
				if c.ByteOrder != "big" {
					t.Fatalf("ByteOrder %q, want big", c.ByteOrder)
				}
			},
		},
		{
			name: "byteorder-garbage", why: "an unknown byte order cannot be guessed: refusing beats emitting wrong weights",
			file: func(t *testing.T) []byte {
				return edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
					return append(e, tzEntry{Name: "archive/byteorder", Data: []byte("middle")})
				})
			},
			kind: Zip, problem: fault.Malformed,
		},
		{
			name: "plain-pickle-named-bin", why: "files are identified by magic bytes, not by their .bin extension",
			file: func(t *testing.T) []byte { return []byte("\x80\x02cposix\nsystem\nX\x02\x00\x00\x00idq\x00\x85R.") },
			kind: Pickle, problem: fault.Unsupported,
			checkRec: func(t *testing.T, c *Container) {
				gs := c.Globals()
				if len(gs) != 1 || gs[0].Class != unpickler.Dangerous {
					t.Fatalf("globals %+v; want posix.system classified dangerous", gs)
				}
			},
		},
		{
			name: "7z-header", why: "a 7z archive (picklescan malicious1.7z) is refused by kind, not parsed as anything",
			file: func(t *testing.T) []byte { return append([]byte("7z\xbc\xaf\x27\x1c\x00\x04"), make([]byte, 64)...) },
			kind: SevenZip, problem: fault.Unsupported,
		},
		{
			name: "legacy-magic-not-literal", why: "a magic number computed by a call is a payload wearing the legacy format",
			file: func(t *testing.T) []byte {
				// int('1950a86a20f9469cfc6c', 16): torch would evaluate it; we accept only a literal.
				magic := []byte("\x80\x02cbuiltins\nint\nX\x14\x00\x00\x001950a86a20f9469cfc6cK\x10\x86R.")
				return append(magic, legacy[15:]...)
			},
			kind: Pickle, problem: fault.Malformed,
		},
		{
			name: "legacy-fixture", why: "the control for the legacy cases: torch's own legacy file opens",
			file: func(t *testing.T) []byte { return legacy },
			kind: Legacy,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ct := openBytes(t, c.file(t))
			if ct.Kind != c.kind {
				t.Errorf("kind %s, want %s (%s)", ct.Kind, c.kind, c.why)
			}
			switch {
			case c.problem == fault.Internal && ct.Problem != nil:
				t.Fatalf("refused: %v; want it accepted (%s)", ct.Problem, c.why)
			case c.problem != fault.Internal && ct.Problem == nil:
				t.Fatalf("accepted; want a %s refusal (%s)", c.problem, c.why)
			case c.problem != fault.Internal && fault.KindOf(ct.Problem) != c.problem:
				t.Fatalf("refused as %s (%v); want %s (%s)", fault.KindOf(ct.Problem), ct.Problem, c.problem, c.why)
			}
			if c.checkRec != nil {
				c.checkRec(t, ct)
			}
			t.Logf("%s: %v", ct.Kind, ct.Problem)
		})
	}
}

// TestZipBombBounded declares a 24-byte storage whose deflate stream inflates to 1 GiB of
// zeros (a 4 MB file): reading the record must fail after inflating little more than the
// declared size, which the compressed bytes read from the file prove.
func TestZipBombBounded(t *testing.T) {
	small := bombStream(258*4 + 1)
	if got, err := io.ReadAll(flate.NewReader(bytes.NewReader(small))); err != nil || len(got) != 258*4+1 || bytes.Count(got, []byte{0}) != len(got) {
		t.Fatalf("bomb generator: %d bytes, %v; want %d zeros", len(got), err, 258*4+1)
	}
	stream := bombStream(1<<30 + 1)
	b := edit(t, "root_tensor.pt", func(e []tzEntry) []tzEntry {
		i := entryIndex(e, "archive/data/0")
		e[i].Method, e[i].Raw, e[i].USize = zip.Deflate, stream, int64(len(e[i].Data))
		return e
	})
	cr := &countingReaderAt{r: bytes.NewReader(b)}
	c, err := Open(cr, int64(len(b)), limits.Default(), &unpickler.Policy{})
	if err != nil || c.Problem != nil {
		t.Fatalf("Open: %v, %v", err, c.Problem)
	}
	rec, err := c.Storage("0")
	if err != nil {
		t.Fatal(err)
	}
	before := cr.n.Load()
	err = rec.Check()
	if fault.KindOf(err) != fault.Malformed {
		t.Fatalf("Check: %v; want Malformed (more data than declared)", err)
	}
	t.Log(err)
	// Each compressed byte here stands for ~160 inflated ones; the reader may buffer ahead, but
	// must not go through the stream.
	if read := cr.n.Load() - before; read > 64<<10 {
		t.Fatalf("read %d compressed bytes of %d to refuse a 24-byte record", read, len(stream))
	}
}

// TestLegacyStorageChecks walks the raw storage area of torch's own legacy file with the
// element counts torch's pickle declares, then with a count and a tail that do not match.
func TestLegacyStorageChecks(t *testing.T) {
	good, err := os.ReadFile(filepath.Join(testkit.FixtureDir(), "dtypes_legacy.pt"))
	if err != nil {
		t.Fatal(err)
	}
	locate := func(t *testing.T, b []byte) error {
		c := openBytes(t, b)
		if c.Kind != Legacy || c.Problem != nil {
			t.Fatalf("kind %s, problem %v; want a legacy file", c.Kind, c.Problem)
		}
		pids := &unpickler.PersistentIDs{Legacy: true}
		pol := &unpickler.Policy{}
		if _, err := unpickler.Load(c.Main.Raw, c.Main.Entry, pol, pids, limits.Default()); err != nil {
			t.Fatal(err)
		}
		v, err := unpickler.Load(c.Keys.Raw, c.Keys.Entry, pol, &unpickler.PersistentIDs{}, limits.Default())
		if err != nil {
			t.Fatal(err)
		}
		keys, err := unpickler.StringList(v)
		if err != nil {
			t.Fatal(err)
		}
		st := pids.Storages()
		return c.LocateLegacy(keys, func(k string) (int64, int64, bool) {
			s, ok := st[k]
			if !ok {
				return 0, 0, false
			}
			return s.NBytes, int64(s.DType.Size()), true
		})
	}
	if err := locate(t, good); err != nil {
		t.Fatalf("torch's legacy file: %v", err)
	}
	dataStart := func() int64 {
		c := openBytes(t, good)
		return c.Keys.Offset + c.Keys.Scan.Length
	}()
	cases := []struct {
		name, why string
		file      []byte
	}{
		{"trailing-bytes", "bytes after the last storage are somewhere torch never reads: a hiding place",
			append(bytes.Clone(good), "trailing"...)},
		{"element-count-mismatch", "torch's readFileRaw checks the count; reading on would shift every later storage",
			func() []byte {
				b := bytes.Clone(good)
				n := binary.LittleEndian.Uint64(b[dataStart:])
				binary.LittleEndian.PutUint64(b[dataStart:], n+1)
				return b
			}()},
		{"truncated-storage", "a storage running past the end of the file",
			good[:len(good)-3]},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := locate(t, c.file); fault.KindOf(err) != fault.Malformed {
				t.Fatalf("LocateLegacy: %v; want Malformed (%s)", err, c.why)
			}
		})
	}
}

// TestManyStreamsRetainLittle opens a bare-pickle file of 20,000 two-byte pickles: every
// stream is scanned (a payload may hide in any of them), and what the container keeps must be
// proportional to the file, not 64 KiB of buffer per stream (1.3 GB here before the fix).
func TestManyStreamsRetainLittle(t *testing.T) {
	const n = 20_000
	b := bytes.Repeat([]byte("N."), n)
	c := openBytes(t, b)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if len(c.Streams) != n || c.Kind != Pickle || fault.KindOf(c.Problem) != fault.Unsupported {
		t.Fatalf("%d streams, kind %s, problem %v; want %d streams of a refused bare pickle", len(c.Streams), c.Kind, c.Problem, n)
	}
	if ms.HeapAlloc > 256<<20 {
		t.Fatalf("%d MiB of heap live after opening a %d-byte file", ms.HeapAlloc>>20, len(b))
	}
	runtime.KeepAlive(c)
}

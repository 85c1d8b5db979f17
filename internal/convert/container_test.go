package convert

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/testkit"
	"github.com/ptsafe/converter/internal/torchzip"
	"github.com/ptsafe/converter/internal/unpickler"
)

// cvEntry is one record of a re-written torch archive.
type cvEntry = testkit.ZipEntry

// cvConvert converts data written to a temporary file and returns the manifest and error; a
// failed conversion must leave no output.
func cvConvert(t *testing.T, data []byte, name string) (*Manifest, error) {
	t.Helper()
	dir := t.TempDir()
	src, dst := filepath.Join(dir, name), filepath.Join(dir, "out.safetensors")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := File(context.Background(), src, dst, Options{})
	if err != nil {
		if _, statErr := os.Stat(dst); !os.IsNotExist(statErr) {
			t.Errorf("output exists after a failed conversion (%v)", err)
		}
		return m, err
	}
	if _, err := Verify(context.Background(), dst, src, Options{}); err != nil {
		t.Fatalf("verify --source: %v", err)
	}
	return m, nil
}

// mustJSON returns v as JSON.
func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wantDigests reads the per-tensor SHA-256 torch recorded for a fixture.
func wantDigests(t *testing.T, fixture string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testkit.FixtureDir(), fixture[:len(fixture)-len(".pt")]+".expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var e expected
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, tt := range e.Tensors {
		out[tt.Name] = tt.SHA256
	}
	return out
}

func sameDigests(t *testing.T, m *Manifest, want map[string]string) {
	t.Helper()
	if len(m.Tensors) != len(want) {
		t.Errorf("%d tensors; want %d", len(m.Tensors), len(want))
	}
	for _, tt := range m.Tensors {
		if want[tt.Name] != tt.SHA256 {
			t.Errorf("tensor %q sha256 %s; torch recorded %s", tt.Name, tt.SHA256, want[tt.Name])
		}
	}
}

// TestDeflatedFixturesConvert re-zips torch fixtures with every record deflated (as a user
// re-compressing a checkpoint would; torch loads these) and requires the tensors torch
// recorded, strided views and shared storages included.
func TestDeflatedFixturesConvert(t *testing.T) {
	for _, fixture := range []string{"dtypes.pt", "module_state_dict.pt", "views.pt", "tied.pt", "overlap.pt", "training_checkpoint.pt"} {
		t.Run(fixture, func(t *testing.T) {
			es := testkit.FixtureEntries(t, fixture)
			for i := range es {
				es[i].Method = zip.Deflate
			}
			m, err := cvConvert(t, testkit.WriteZip(t, es), "model.pt")
			if err != nil {
				t.Fatalf("convert: %v", err)
			}
			sameDigests(t, m, wantDigests(t, fixture))
		})
	}
}

// TestByteOrderRecord rewrites torch fixtures as a big-endian machine would have saved them
// (every storage byte-swapped per element, a "big" byteorder record) and requires the same
// little-endian tensors torch recorded; "little" changes nothing.
func TestByteOrderRecord(t *testing.T) {
	for _, fixture := range []string{"dtypes.pt", "module_state_dict.pt", "views.pt"} {
		t.Run(fixture, func(t *testing.T) {
			orig, err := cvConvert(t, testkit.WriteZip(t, testkit.FixtureEntries(t, fixture)), "model.pt")
			if err != nil {
				t.Fatal(err)
			}
			unit := map[string]int{} // storage key -> swap unit
			for _, tt := range orig.Tensors {
				d, ok := dtype.Parse(tt.DType)
				if !ok {
					t.Fatalf("dtype %q", tt.DType)
				}
				unit[tt.Storage] = d.SwapUnit()
			}
			for _, order := range []string{"big", "little"} {
				es := testkit.FixtureEntries(t, fixture)
				for i, e := range es {
					key, ok := cutPrefix(e.Name, "archive/data/")
					if !ok || order == "little" {
						continue
					}
					swapBytes(es[i].Data, unit[key])
				}
				es = append(es, cvEntry{Name: "archive/byteorder", Data: []byte(order)})
				m, err := cvConvert(t, testkit.WriteZip(t, es), "model.pt")
				if err != nil {
					t.Fatalf("%s: %v", order, err)
				}
				sameDigests(t, m, wantDigests(t, fixture))
			}
		})
	}
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

// TestContainerRefusals converts files that fail a container check only a conversion can
// make (CRC, sizes, the raw area of legacy files) or where the exit code matters (dangerous
// content outside a valid checkpoint is unsafe, exit 3, not malformed).
func TestContainerRefusals(t *testing.T) {
	u32 := func(v uint32) *uint32 { return &v }
	legacy, err := os.ReadFile(filepath.Join(testkit.FixtureDir(), "dtypes_legacy.pt"))
	if err != nil {
		t.Fatal(err)
	}
	legacyDataStart := func() int64 {
		c, err := torchzip.Open(bytes.NewReader(legacy), int64(len(legacy)), testkit.FuzzLimits(), &unpickler.Policy{})
		if err != nil || c.Keys == nil {
			t.Fatalf("legacy fixture: %v", err)
		}
		return c.Keys.Offset + c.Keys.Scan.Length
	}()
	rezip := func(fixture string, fn func(es []cvEntry) []cvEntry) []byte {
		return testkit.WriteZip(t, fn(testkit.FixtureEntries(t, fixture)))
	}
	cases := []struct {
		name, file string
		data       []byte
		want       fault.Kind
		scanToo    bool // Scan (which reads no tensor bytes) must already refuse it
		why        string
	}{
		{name: "storage-crc-mismatch", file: "model.pt", want: fault.Malformed,
			why: "a corrupted storage must fail the conversion even though Scan never reads it",
			data: rezip("root_tensor.pt", func(es []cvEntry) []cvEntry {
				es[1].CRC = u32(crc32.ChecksumIEEE(es[1].Data) ^ 1)
				return es
			})},
		{name: "deflated-storage-crc-mismatch", file: "model.pt", want: fault.Malformed,
			why: "the CRC is checked on the inflated bytes too",
			data: rezip("views.pt", func(es []cvEntry) []cvEntry {
				for i := range es {
					es[i].Method = zip.Deflate
					if es[i].Name == "archive/data/0" {
						es[i].CRC = u32(crc32.ChecksumIEEE(es[i].Data) ^ 1)
					}
				}
				return es
			})},
		{name: "record-size-not-numel-times-itemsize", file: "model.pt", want: fault.Malformed, scanToo: true,
			why: "torch >= 2.10 checks it; reading a short record as a tensor would read past it",
			data: rezip("root_tensor.pt", func(es []cvEntry) []cvEntry {
				es[1].Data = es[1].Data[:20]
				return es
			})},
		{name: "zip-bomb-storage", file: "model.pt", want: fault.Malformed,
			why: "a record inflating past its declared size fails without being inflated",
			data: func() []byte {
				es := testkit.FixtureEntries(t, "root_tensor.pt")
				// Deflate 24 MiB of zeros, then declare the storage's 24 bytes.
				var c bytes.Buffer
				fw, _ := flate.NewWriter(&c, flate.BestSpeed)
				fw.Write(make([]byte, 24<<20))
				fw.Close()
				var buf bytes.Buffer
				zw := zip.NewWriter(&buf)
				for _, e := range es {
					h := &zip.FileHeader{Name: e.Name, Method: zip.Store, CRC32: crc32.ChecksumIEEE(e.Data),
						CompressedSize64: uint64(len(e.Data)), UncompressedSize64: uint64(len(e.Data))}
					body := e.Data
					if e.Name == "archive/data/0" {
						h.Method, h.CompressedSize64, h.CRC32, body = zip.Deflate, uint64(c.Len()), 0, c.Bytes()
					}
					w, _ := zw.CreateRaw(h)
					w.Write(body)
				}
				zw.Close()
				return buf.Bytes()
			}()},
		{name: "plain-pickle-named-bin-with-payload", file: "pytorch_model.bin", want: fault.Unsafe, scanToo: true,
			why:  "a bare pickle is no checkpoint, but its os.system call is what must be reported (exit 3)",
			data: []byte("\x80\x02cposix\nsystem\nX\x02\x00\x00\x00idq\x00\x85R.")},
		{name: "plain-pickle-named-bin-harmless", file: "pytorch_model.bin", want: fault.Unsupported, scanToo: true,
			why:  "a harmless bare pickle is refused as not a checkpoint (exit 4)",
			data: []byte("\x80\x02}q\x00.")},
		{name: "legacy-magic-not-literal-with-payload", file: "model.pt", want: fault.Unsafe, scanToo: true,
			why:  "dangerous content in a file that only looks legacy is unsafe, not hidden behind malformed",
			data: append([]byte("\x80\x02cos\nsystem\nX\x02\x00\x00\x00idq\x00\x85R."), legacy[15:]...)},
		{name: "legacy-trailing-bytes", file: "model.pt", want: fault.Malformed,
			why:  "bytes after the last storage are somewhere torch never reads: a hiding place",
			data: append(bytes.Clone(legacy), "trailing"...)},
		{name: "legacy-storage-count-mismatch", file: "model.pt", want: fault.Malformed,
			why: "the element count before a storage must match the pickle's, as torch's readFileRaw checks",
			data: func() []byte {
				b := bytes.Clone(legacy)
				n := binary.LittleEndian.Uint64(b[legacyDataStart:])
				binary.LittleEndian.PutUint64(b[legacyDataStart:], n-1)
				return b
			}()},
		{name: "7z", file: "model.pt", want: fault.Unsupported, scanToo: true,
			why:  "a 7z archive is refused by its magic bytes",
			data: append([]byte("7z\xbc\xaf\x27\x1c\x00\x04"), make([]byte, 64)...)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cm, err := cvConvert(t, c.data, c.file)
			if err == nil {
				t.Fatalf("converted; want %s (%s)", c.want, c.why)
			}
			if got := fault.KindOf(err); got != c.want {
				t.Fatalf("error kind %s (%v); want %s (%s)", got, err, c.want, c.why)
			}
			// The refusal comes with the file's report, so that no caller scans it again.
			sum := sha256.Sum256(c.data)
			if cm == nil || cm.Error == nil || cm.Error.Type != c.want || cm.Error.Detail != err.Error() ||
				cm.Verdict != verdictOf(err) || cm.Output != nil || cm.Source.SHA256 != hex.EncodeToString(sum[:]) {
				t.Fatalf("convert: manifest %+v; want one with the %s verdict and error, the source's digest and no output", cm, c.want)
			}
			if !c.scanToo {
				return
			}
			src := filepath.Join(t.TempDir(), c.file)
			os.WriteFile(src, c.data, 0o600)
			m, err := Scan(context.Background(), src, Options{})
			if m == nil || fault.KindOf(err) != c.want {
				t.Fatalf("scan: %v; want a manifest and a %s error", err, c.want)
			}
			if m.Error == nil || m.Error.Type != c.want {
				t.Fatalf("scan: %+v; want a %s error (%s)", m.Error, c.want, c.why)
			}
			// What the scan reports, the refused conversion reports, but for the path.
			m.Source.Path = cm.Source.Path
			if got, want := mustJSON(t, cm), mustJSON(t, m); got != want {
				t.Errorf("convert's manifest:\n%s\nscan's:\n%s", got, want)
			}
		})
	}
}

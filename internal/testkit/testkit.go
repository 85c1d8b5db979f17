// Package testkit holds what the tests of several packages share: paths to the fixtures and
// the shared corpus, fuzz seeds and limits, and a writer of test zip archives. Production code
// must never import it.
package testkit

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
)

// MaxSeedBytes skips the few multi-megabyte corpus files as fuzz seeds: the fuzzer mutates
// inputs of that size too slowly to be useful, and every container shape they hold is also
// present in a small file.
const MaxSeedBytes = 512 << 10

// root is the repository root: two levels above this file's directory, or, when the build
// recorded no usable path (-trimpath), the nearest directory above the working directory (a
// test's package directory) that holds a go.mod.
var root = sync.OnceValue(func() string {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		dir := filepath.Join(filepath.Dir(file), "..", "..")
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		panic("testkit: " + err.Error())
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			panic("testkit: no go.mod above the working directory")
		}
		dir = parent
	}
})

// FixtureDir returns testdata/torch, the checkpoints torch itself wrote.
func FixtureDir() string { return filepath.Join(root(), "testdata", "torch") }

// CorpusDir returns the shared corpus of real and hostile third-party checkpoints,
// ../shared/corpus next to the repository (its SOURCES.md gives each file's origin and
// expected verdict). It may be absent.
func CorpusDir() string { return filepath.Join(root(), "..", "shared", "corpus") }

// Fixtures returns the paths of the torch fixtures (*.pt), failing t if there are none.
func Fixtures(t testing.TB) []string {
	t.Helper()
	fixtures, _ := filepath.Glob(filepath.Join(FixtureDir(), "*.pt"))
	if len(fixtures) == 0 {
		t.Fatal("no torch fixtures found")
	}
	return fixtures
}

// SeedFiles returns the paths of every torch fixture, then of every corpus entry; an absent
// corpus adds nothing.
func SeedFiles(t testing.TB) []string {
	t.Helper()
	corpus, _ := filepath.Glob(filepath.Join(CorpusDir(), "*"))
	return append(Fixtures(t), corpus...)
}

// FileSeeds returns the contents of every regular file SeedFiles lists of at most maxBytes.
func FileSeeds(t testing.TB, maxBytes int64) [][]byte {
	t.Helper()
	var seeds [][]byte
	for _, path := range SeedFiles(t) {
		st, err := os.Stat(path)
		if err != nil || !st.Mode().IsRegular() || st.Size() > maxBytes {
			continue
		}
		if b, err := os.ReadFile(path); err == nil {
			seeds = append(seeds, b)
		}
	}
	return seeds
}

// FuzzLimits are small enough that one fuzz input can never cost much, and large enough that
// the real fixtures pass.
func FuzzLimits() limits.Limits {
	l := limits.Default()
	l.MaxFileBytes = 4 << 20
	l.MaxPickleBytes = 1 << 20
	l.MaxTensors = 1000
	l.MaxDims = 16
	l.MaxOutputBytes = 16 << 20
	l.MaxNesting = 64
	l.MaxMemo = 1 << 12
	l.MaxMarks = 256
	l.MaxLongBytes = 64
	l.MaxWalkNodes = 100_000
	l.MaxZipEntries = 1000
	l.Timeout = 20 * time.Second
	return l
}

// Watchdog crashes the fuzz worker with every goroutine's stack when one input runs longer
// than d, so that the fuzzer records a hang as a failing input instead of stalling.
func Watchdog(d time.Duration) (stop func()) {
	timer := time.AfterFunc(d, func() {
		debug.SetTraceback("all")
		panic("fuzz input ran longer than " + d.String())
	})
	return func() { timer.Stop() }
}

// CheckClassified fails t unless err is nil or a classified fault about the input (unsafe,
// malformed, unsupported or over a limit); what names the step that returned it.
func CheckClassified(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var fe *fault.Error
	if !errors.As(err, &fe) {
		t.Fatalf("%s: unclassified error %T: %v", what, err, err)
	}
	switch fe.Kind {
	case fault.Unsafe, fault.Malformed, fault.Unsupported, fault.Limit:
	default:
		t.Fatalf("%s: error of kind %s on bad input: %v", what, fe.Kind, err)
	}
}

// ZipEntry is one record of a test archive. Data is the uncompressed content; Raw, when set,
// is written as the record's bytes instead of compressing Data (size and CRC still describe
// Data unless USize or CRC override them).
type ZipEntry struct {
	Name   string
	Data   []byte
	Raw    []byte
	Method uint16 // zip.Store or zip.Deflate (Data is deflated), or any other, written as is
	Flags  uint16
	CRC    *uint32 // overrides the CRC-32 of Data when set
	USize  int64   // declared uncompressed size when > 0
}

// FixtureEntries reads the records of a torch-written fixture, in archive order.
func FixtureEntries(t testing.TB, name string) []ZipEntry {
	t.Helper()
	zr, err := zip.OpenReader(filepath.Join(FixtureDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	var out []ZipEntry
	for _, f := range zr.File {
		r, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		out = append(out, ZipEntry{Name: f.Name, Data: b})
	}
	return out
}

// WriteZip writes entries with full control of method, flags, CRC and declared size.
func WriteZip(t testing.TB, entries []ZipEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		body := e.Raw
		if body == nil {
			body = e.Data
			if e.Method == zip.Deflate {
				var c bytes.Buffer
				fw, _ := flate.NewWriter(&c, flate.BestCompression)
				fw.Write(e.Data)
				fw.Close()
				body = c.Bytes()
			}
		}
		h := &zip.FileHeader{Name: e.Name, Method: e.Method, Flags: e.Flags,
			CRC32: crc32.ChecksumIEEE(e.Data), CompressedSize64: uint64(len(body)), UncompressedSize64: uint64(len(e.Data))}
		if e.CRC != nil {
			h.CRC32 = *e.CRC
		}
		if e.USize > 0 {
			h.UncompressedSize64 = uint64(e.USize)
		}
		w, err := zw.CreateRaw(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(body)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

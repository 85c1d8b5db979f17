package torchzip

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/unpickler"
)

// fuzzCorpusDir is the shared corpus of real and hostile checkpoints, next to the repository.
const fuzzCorpusDir = "../../../shared/corpus"

// maxSeedBytes skips the few multi-megabyte corpus files as seeds: the fuzzer mutates inputs
// of that size too slowly to be useful, and every container shape they hold is also present in
// a small file.
const maxSeedBytes = 512 << 10

func fuzzLimits() limits.Limits {
	l := limits.Default()
	l.MaxPickleBytes = 1 << 20
	l.MaxTensors = 1000
	l.MaxDims = 16
	l.MaxNesting = 64
	l.MaxMemo = 1 << 12
	l.MaxMarks = 256
	l.MaxWalkNodes = 100_000
	l.MaxZipEntries = 1000
	return l
}

// fuzzFileSeeds returns every torch fixture and every corpus file (zips included) up to
// maxSeedBytes; the corpus is skipped silently when absent.
func fuzzFileSeeds(t testing.TB) [][]byte {
	fixtures, _ := filepath.Glob("../../testdata/torch/*.pt")
	if len(fixtures) == 0 {
		t.Fatal("no torch fixtures found")
	}
	corpus, _ := filepath.Glob(filepath.Join(fuzzCorpusDir, "*"))
	var seeds [][]byte
	for _, path := range append(fixtures, corpus...) {
		st, err := os.Stat(path)
		if err != nil || !st.Mode().IsRegular() || st.Size() > maxSeedBytes {
			continue
		}
		if b, err := os.ReadFile(path); err == nil {
			seeds = append(seeds, b)
		}
	}
	return seeds
}

// FuzzContainer opens arbitrary bytes as a checkpoint container. Open must never panic or fail
// with anything but a classified Problem (a bytes.Reader has no I/O errors), and whatever it
// accepts must be internally consistent: a zip has its data.pkl scanned, a legacy file all five
// pickles, and every storage record reads back within its declared size.
func FuzzContainer(f *testing.F) {
	for _, s := range fuzzFileSeeds(f) {
		f.Add(s)
	}
	lim := fuzzLimits()
	f.Fuzz(func(t *testing.T, data []byte) {
		// A hang crashes the worker with every goroutine's stack, so the fuzzer records it.
		watchdog := time.AfterFunc(10*time.Second, func() {
			debug.SetTraceback("all")
			panic("fuzz input ran longer than 10s")
		})
		defer watchdog.Stop()
		c, err := Open(bytes.NewReader(data), int64(len(data)), lim, &unpickler.Policy{})
		if err != nil {
			t.Fatalf("Open: I/O error from a bytes.Reader: %v", err)
		}
		if c == nil {
			t.Fatal("Open returned a nil Container")
		}
		checkClassified(t, "Problem", c.Problem)
		for _, s := range c.Streams {
			if s.Scan == nil {
				t.Fatalf("stream %s has no Scan", s.Entry)
			}
			if s.Err != nil {
				checkClassified(t, "stream "+s.Entry, s.Err)
				if s.Raw != nil {
					t.Fatalf("stream %s refused but still has raw bytes", s.Entry)
				}
			} else if int64(len(s.Raw)) != s.Scan.Length {
				t.Fatalf("stream %s: %d raw bytes, Scan.Length %d", s.Entry, len(s.Raw), s.Scan.Length)
			}
		}
		if c.Problem != nil {
			return
		}
		switch c.Kind {
		case Zip:
			if c.Main == nil {
				t.Fatal("zip accepted without a data.pkl stream")
			}
			for key, rec := range c.records {
				if rec.Size > 1<<20 {
					continue // deflate can claim up to ~1000x its input; bounded, but slow to fuzz
				}
				if err := rec.Check(); err != nil {
					checkClassified(t, "record "+key, err)
				}
				if rec.Stored() {
					if _, err := io.Copy(io.Discard, rec.ReaderAt()); err != nil {
						t.Fatalf("stored record %s: %v", key, err)
					}
				}
			}
		case Legacy:
			if c.Main == nil || c.Keys == nil || len(c.Streams) != 5 {
				t.Fatalf("legacy file accepted with %d streams", len(c.Streams))
			}
			// Walk the raw area as if every key held bytes of one-byte elements: it must end in
			// a classified error or cover the file exactly.
			if err := c.LocateLegacy([]string{"0", "1"}, func(string) (int64, int64, bool) { return 4, 1, true }); err != nil {
				checkClassified(t, "LocateLegacy", err)
			}
		default:
			t.Fatalf("container of kind %s accepted", c.Kind)
		}
	})
}

// checkClassified fails unless err is nil or a fault about the input.
func checkClassified(t *testing.T, what string, err error) {
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

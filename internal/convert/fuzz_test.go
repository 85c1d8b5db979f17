package convert

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
)

// fuzzCorpusDir is the shared corpus of real and hostile checkpoints, next to the repository.
const fuzzCorpusDir = "../../../shared/corpus"

// fuzzMaxSeedBytes skips the few multi-megabyte corpus files as seeds: the fuzzer mutates
// inputs of that size too slowly to be useful.
const fuzzMaxSeedBytes = 512 << 10

func fuzzOptions() Options {
	l := limits.Default()
	l.MaxFileBytes = 4 << 20
	l.MaxPickleBytes = 1 << 20
	l.MaxTensors = 1000
	l.MaxDims = 16
	l.MaxOutputBytes = 16 << 20
	l.MaxNesting = 64
	l.MaxMemo = 1 << 12
	l.MaxMarks = 256
	l.MaxWalkNodes = 100_000
	l.MaxZipEntries = 1000
	l.Timeout = 20 * time.Second
	return Options{Limits: l}
}

// FuzzScan runs the whole scan and convert path over arbitrary bytes written to a file. Neither
// may panic; every refusal must be classified; File must leave nothing at the output path (nor a
// temporary file) when it fails; a file File converts must pass Verify against its source; and
// Scan and File must agree on the verdict.
func FuzzScan(f *testing.F) {
	fixtures, _ := filepath.Glob("../../testdata/torch/*.pt")
	if len(fixtures) == 0 {
		f.Fatal("no torch fixtures found")
	}
	corpus, _ := filepath.Glob(filepath.Join(fuzzCorpusDir, "*")) // absent dir: no seeds
	for _, path := range append(fixtures, corpus...) {
		st, err := os.Stat(path)
		if err != nil || !st.Mode().IsRegular() || st.Size() > fuzzMaxSeedBytes {
			continue
		}
		if b, err := os.ReadFile(path); err == nil {
			f.Add(b)
		}
	}
	opts := fuzzOptions()
	f.Fuzz(func(t *testing.T, data []byte) {
		timer := time.AfterFunc(30*time.Second, func() {
			debug.SetTraceback("all")
			panic("fuzz input ran longer than 30s")
		})
		defer timer.Stop()
		ctx := context.Background()
		srcDir, outDir := t.TempDir(), t.TempDir()
		src := filepath.Join(srcDir, "input.pt")
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		sm, err := Scan(ctx, src, opts)
		if err != nil {
			t.Fatalf("Scan failed to run: %v", err)
		}
		if sm.Verdict != "safe" && (sm.Error == nil || sm.Error.Type == "internal") {
			t.Fatalf("Scan verdict %s without a classified error: %+v", sm.Verdict, sm.Error)
		}

		dst := filepath.Join(outDir, "out.safetensors")
		_, err = File(ctx, src, dst, opts)
		if err != nil {
			var fe *fault.Error
			if !errors.As(err, &fe) || fe.Kind == fault.Internal || fe.Kind == fault.Canceled {
				t.Fatalf("File: unclassified or internal error on bad input: %v", err)
			}
			if left, _ := os.ReadDir(outDir); len(left) != 0 {
				t.Fatalf("File failed (%v) and left %s in the output directory", err, left[0].Name())
			}
			if sm.Verdict == "unsafe" && fe.Kind != fault.Unsafe {
				t.Fatalf("Scan says unsafe, File fails with %s: %v", fe.Kind, err)
			}
			if sm.Verdict == "malformed" && fe.Kind == fault.Unsafe {
				t.Fatalf("Scan says malformed, File fails as unsafe: %v", err)
			}
			return
		}
		if sm.Verdict != "safe" {
			t.Fatalf("File converted a file Scan judged %s (%+v)", sm.Verdict, sm.Error)
		}
		if left, _ := os.ReadDir(outDir); len(left) != 1 {
			t.Fatalf("output directory holds %d entries after a conversion, want 1", len(left))
		}
		if _, err := Verify(ctx, dst, src, opts); err != nil {
			t.Fatalf("Verify of a converted file against its source: %v", err)
		}
	})
}

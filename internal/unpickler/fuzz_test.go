package unpickler

import (
	"archive/zip"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
)

// fuzzCorpusDir is the shared corpus of real and hostile checkpoints, next to the repository.
const fuzzCorpusDir = "../../../shared/corpus"

// fuzzLimits are small enough that one fuzz input can never cost much, and large enough that
// the real fixtures pass.
func fuzzLimits() limits.Limits {
	l := limits.Default()
	l.MaxPickleBytes = 1 << 20
	l.MaxTensors = 1000
	l.MaxDims = 16
	l.MaxNesting = 64
	l.MaxMemo = 1 << 12
	l.MaxMarks = 256
	l.MaxLongBytes = 64
	l.MaxWalkNodes = 100_000
	return l
}

// fuzzPickleSeeds returns pickle streams to seed the VM fuzzer: every data.pkl of the torch
// fixtures, and every stream of the corpus files that start like a pickle (a legacy file is
// split into its back-to-back pickles).
func fuzzPickleSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	fixtures, _ := filepath.Glob("../../testdata/torch/*.pt")
	if len(fixtures) == 0 {
		t.Fatal("no torch fixtures found")
	}
	corpus, _ := filepath.Glob(filepath.Join(fuzzCorpusDir, "*")) // absent dir: no seeds
	for _, path := range append(fixtures, corpus...) {
		data, err := os.ReadFile(path)
		if err != nil || len(data) == 0 {
			continue
		}
		if zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data))); err == nil {
			for _, f := range zr.File {
				if !strings.HasSuffix(f.Name, ".pkl") || f.UncompressedSize64 > 1<<20 {
					continue
				}
				if r, err := f.Open(); err == nil {
					b, _ := io.ReadAll(r)
					seeds = append(seeds, b)
				}
			}
			continue
		}
		if data[0] != 0x80 && !strings.ContainsRune("(c]}).NILJKMSTUVXFG\x88\x89", rune(data[0])) {
			continue
		}
		// Split back-to-back pickles (the legacy format holds five) with the pre-scanner itself.
		for off := 0; off < len(data) && len(seeds) < 10_000; {
			rest := data[off:]
			sc, _, err := Prescan(bytes.NewReader(rest), int64(len(rest)), "seed", limits.Default(), &Policy{})
			if err != nil || sc.Length == 0 {
				seeds = append(seeds, rest[:min(len(rest), 1<<16)])
				break
			}
			seeds = append(seeds, rest[:sc.Length])
			off += int(sc.Length)
		}
	}
	return seeds
}

// checkFault fails the test unless err is a classified fault about the input.
func checkFault(t *testing.T, step string, err error) {
	t.Helper()
	var fe *fault.Error
	if !errors.As(err, &fe) {
		t.Fatalf("%s: unclassified error %T: %v", step, err, err)
	}
	switch fe.Kind {
	case fault.Unsafe, fault.Malformed, fault.Unsupported, fault.Limit:
	default:
		t.Fatalf("%s: error of kind %s on bad input: %v", step, fe.Kind, err)
	}
}

// FuzzPrescanVM runs the pre-scanner over arbitrary bytes and, when it accepts them, the
// restricted VM and the object-graph walk. None of them may panic, hang or allocate beyond the
// limits; every refusal must be a classified fault. A panic that the VM's recover() catches is
// a failure too: the pre-scanner promises gopickle never sees a stream that makes it panic.
func FuzzPrescanVM(f *testing.F) {
	for _, s := range fuzzPickleSeeds(f) {
		f.Add(s)
	}
	lim := fuzzLimits()
	f.Fuzz(func(t *testing.T, data []byte) {
		defer fuzzWatchdog(10 * time.Second)()
		sc, raw, err := Prescan(bytes.NewReader(data), int64(len(data)), "fuzz", lim, &Policy{})
		if sc == nil {
			t.Fatal("Prescan returned a nil Scan")
		}
		if sc.Length < 0 || sc.Length > int64(len(data)) {
			t.Fatalf("Scan.Length %d outside [0, %d]", sc.Length, len(data))
		}
		if err != nil {
			checkFault(t, "Prescan", err)
			return
		}
		if !bytes.Equal(raw, data[:sc.Length]) {
			t.Fatalf("Prescan returned %d bytes that are not the stream's first %d", len(raw), sc.Length)
		}
		for _, legacy := range []bool{false, true} {
			root, err := Load(raw, "fuzz", &Policy{}, &PersistentIDs{Legacy: legacy}, lim)
			if err != nil {
				var fe *fault.Error
				if errors.As(err, &fe) && fe.Err == nil && strings.HasPrefix(fe.Msg, "pickle VM: ") {
					t.Fatalf("gopickle panicked on a pre-scanned stream: %v", err)
				}
				checkFault(t, "Load", err)
				continue
			}
			if _, err := Flatten(root, "", "fuzz", lim); err != nil {
				checkFault(t, "Flatten", err)
			}
			if _, err := StringList(root); err != nil && fault.KindOf(err) != fault.Internal {
				t.Fatalf("StringList: classified error where a plain one is expected: %v", err)
			}
		}
	})
}

// fuzzWatchdog crashes the fuzz worker with every goroutine's stack when one input runs longer
// than d, so that the fuzzer records a hang as a failing input instead of stalling.
func fuzzWatchdog(d time.Duration) (stop func()) {
	timer := time.AfterFunc(d, func() {
		debug.SetTraceback("all")
		panic("fuzz input ran longer than " + d.String())
	})
	return func() { timer.Stop() }
}

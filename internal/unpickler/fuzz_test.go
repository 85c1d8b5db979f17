package unpickler

import (
	"archive/zip"
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/testkit"
)

// fuzzPickleSeeds returns pickle streams to seed the VM fuzzer: every data.pkl of the torch
// fixtures, and every stream of the corpus files that start like a pickle (a legacy file is
// split into its back-to-back pickles).
func fuzzPickleSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	for _, path := range testkit.SeedFiles(t) {
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

// FuzzPrescanVM runs the pre-scanner over arbitrary bytes and, when it accepts them, the
// restricted VM, the bounded formatter and the object-graph walk. None of them may panic, hang or allocate beyond the
// limits; every refusal must be a classified fault. A panic that the VM's recover() catches is
// a failure too: the pre-scanner promises gopickle never sees a stream that makes it panic.
func FuzzPrescanVM(f *testing.F) {
	for _, s := range fuzzPickleSeeds(f) {
		f.Add(s)
	}
	lim := testkit.FuzzLimits()
	f.Fuzz(func(t *testing.T, data []byte) {
		defer testkit.Watchdog(10 * time.Second)()
		sc, raw, err := Prescan(bytes.NewReader(data), int64(len(data)), "fuzz", lim, &Policy{})
		if sc == nil {
			t.Fatal("Prescan returned a nil Scan")
		}
		if sc.Length < 0 || sc.Length > int64(len(data)) {
			t.Fatalf("Scan.Length %d outside [0, %d]", sc.Length, len(data))
		}
		if err != nil {
			testkit.CheckClassified(t, "Prescan", err)
			return
		}
		if !bytes.Equal(raw, data[:sc.Length]) {
			t.Fatalf("Prescan returned %d bytes that are not the stream's first %d", len(raw), sc.Length)
		}
		for _, legacy := range []bool{false, true} {
			root, err := Load(raw, "fuzz", &Policy{}, &PersistentIDs{Legacy: legacy}, lim)
			if err != nil {
				var fe *fault.Error
				if errors.As(err, &fe) && fe.Err == nil && strings.HasPrefix(fe.Msg, "pickle VM panicked: ") {
					t.Fatalf("gopickle panicked on a pre-scanned stream: %v", err)
				}
				testkit.CheckClassified(t, "Load", err)
				continue
			}
			d := Describe(root)
			if len(d) > MaxDescribeBytes {
				t.Fatalf("Describe returned %d bytes, bound %d", len(d), MaxDescribeBytes)
			}
			// Dropping the memo stores nothing reads must not change what gopickle builds.
			if all, err := load(raw, "fuzz", &Policy{}, &PersistentIDs{Legacy: legacy}, lim, false); err != nil {
				t.Fatalf("loads without its dead memo stores, not with them: %v", err)
			} else if da := Describe(all); da != d {
				t.Fatalf("loads as %s without its dead memo stores, as %s with them", d, da)
			}
			if _, err := Flatten(root, "", "fuzz", lim); err != nil {
				testkit.CheckClassified(t, "Flatten", err)
			}
			if _, err := StringList(root); err != nil && fault.KindOf(err) != fault.Internal {
				t.Fatalf("StringList: classified error where a plain one is expected: %v", err)
			}
		}
	})
}

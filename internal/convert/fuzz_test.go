package convert

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/testkit"
)

// FuzzScan runs the whole scan and convert path over arbitrary bytes written to a file. Neither
// may panic; every refusal must be classified; File must leave nothing at the output path (nor a
// temporary file) when it fails; a file File converts must pass Verify against its source; and
// Scan and File must agree on the verdict.
func FuzzScan(f *testing.F) {
	for _, b := range testkit.FileSeeds(f, testkit.MaxSeedBytes) {
		f.Add(b)
	}
	opts := Options{Limits: testkit.FuzzLimits()}
	f.Fuzz(func(t *testing.T, data []byte) {
		defer testkit.Watchdog(30 * time.Second)()
		ctx := context.Background()
		srcDir, outDir := t.TempDir(), t.TempDir()
		src := filepath.Join(srcDir, "input.pt")
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		sm, err := Scan(ctx, src, opts)
		if sm == nil {
			t.Fatalf("Scan failed to run: %v", err)
		}
		if sm.Verdict != "safe" && (sm.Error == nil || sm.Error.Type == fault.Internal || fault.KindOf(err) != sm.Error.Type) {
			t.Fatalf("Scan verdict %s without a classified error: %+v, %v", sm.Verdict, sm.Error, err)
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

package torchzip

import (
	"archive/zip"
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/testkit"
	"github.com/ptsafe/converter/internal/unpickler"
)

// FuzzContainer opens arbitrary bytes as a checkpoint container. Open must never panic or fail
// with anything but a classified Problem (a bytes.Reader has no I/O errors), and whatever it
// accepts must be internally consistent: a zip has its data.pkl scanned, a legacy file all five
// pickles, and every storage record reads back within its declared size. It must also be read
// the one way other readers read it: an accepted zip gives archive/zip the same data.pkl and
// records, byte for byte (found by miniz's case-insensitive lookup), and an accepted legacy
// file is no tar that Python's tarfile (which torch.load tries first) would open.
func FuzzContainer(f *testing.F) {
	for _, s := range testkit.FileSeeds(f, testkit.MaxSeedBytes) {
		f.Add(s)
	}
	lim := testkit.FuzzLimits()
	f.Fuzz(func(t *testing.T, data []byte) {
		// A hang crashes the worker with every goroutine's stack, so the fuzzer records it.
		defer testkit.Watchdog(10 * time.Second)()
		c, err := Open(bytes.NewReader(data), int64(len(data)), lim, &unpickler.Policy{})
		if err != nil {
			t.Fatalf("Open: I/O error from a bytes.Reader: %v", err)
		}
		if c == nil {
			t.Fatal("Open returned a nil Container")
		}
		testkit.CheckClassified(t, "Problem", c.Problem)
		for _, s := range c.Streams {
			if s.Scan == nil {
				t.Fatalf("stream %s has no Scan", s.Entry)
			}
			if s.Err != nil {
				testkit.CheckClassified(t, "stream "+s.Entry, s.Err)
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
			checkArchiveZip(t, data, c)
			for key, rec := range c.records {
				if rec.Size > 1<<20 {
					continue // deflate can claim up to ~1000x its input; bounded, but slow to fuzz
				}
				if err := rec.Check(); err != nil {
					testkit.CheckClassified(t, "record "+key, err)
				}
				if rec.Stored() {
					if _, err := io.Copy(io.Discard, rec.ReaderAt()); err != nil {
						t.Fatalf("stored record %s: %v", key, err)
					}
				}
			}
		case Legacy:
			if isPythonTar(data) {
				t.Fatal("legacy file accepted that tarfile opens: torch.load would read the tar")
			}
			if c.Main == nil || c.Keys == nil || len(c.Streams) != 5 {
				t.Fatalf("legacy file accepted with %d streams", len(c.Streams))
			}
			// Walk the raw area as if every key held bytes of one-byte elements: it must end in
			// a classified error or cover the file exactly.
			if err := c.LocateLegacy([]string{"0", "1"}, func(string) (int64, int64, bool) { return 4, 1, true }); err != nil {
				testkit.CheckClassified(t, "LocateLegacy", err)
			}
		default:
			t.Fatalf("container of kind %s accepted", c.Kind)
		}
	})
}

// checkArchiveZip reads an accepted archive with archive/zip, which must open it and find in
// data.pkl and in every storage record the bytes our reader gives.
func checkArchiveZip(t *testing.T, data []byte, c *Container) {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("accepted an archive archive/zip refuses: %v", err)
	}
	byName := map[string]*zip.File{}
	for _, f := range zr.File {
		byName[foldName(f.Name)] = f
	}
	read := func(name string) []byte {
		f := byName[foldName(c.Prefix+"/"+name)]
		if f == nil {
			t.Fatalf("archive/zip has no %s/%s", c.Prefix, name)
		}
		r, err := f.Open()
		if err != nil {
			t.Fatalf("archive/zip opens %s: %v", f.Name, err)
		}
		b, _ := io.ReadAll(io.LimitReader(r, 1<<20+1)) // bytes, even when a check fails at EOF
		return b
	}
	if got := read("data.pkl"); c.Main.Err == nil && !bytes.Equal(got, c.Main.Raw) {
		t.Fatalf("archive/zip reads a data.pkl of %d bytes, we scanned %d others", len(got), len(c.Main.Raw))
	}
	for key, rec := range c.records {
		if rec.Size > 1<<20 {
			continue
		}
		r, _ := rec.Open()
		ours, err := io.ReadAll(r)
		if err != nil {
			continue // a refused record is read by no one
		}
		if got := read("data/" + key); !bytes.Equal(got, ours) {
			t.Fatalf("record %s: archive/zip reads other bytes", key)
		}
	}
}

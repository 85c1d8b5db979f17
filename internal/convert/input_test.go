//go:build unix

package convert

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/testkit"
)

// TestSpecialInputsRefused gives every entry point an input that is not a regular file. A FIFO
// with no writer would block a plain open for ever (the test would time out); a device's open
// routine must not run; each is refused as unsupported, naming what it is, and no output is
// left.
func TestSpecialInputsRefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "model.pt")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	link := filepath.Join(dir, "link.pt")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(testkit.FixtureDir(), "dtypes.pt")
	cases := []struct{ name, path, what string }{
		{"fifo", fifo, "named pipe"},
		{"symlink to a fifo", link, "named pipe"},
		{"character device", os.DevNull, "character device"},
		{"directory", dir, "directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			check := func(op string, err error) {
				t.Helper()
				if fault.KindOf(err) != fault.Unsupported || !strings.Contains(err.Error(), "not a regular file: it is a "+c.what) {
					t.Errorf("%s: %v; want an unsupported fault naming a %s", op, err, c.what)
				}
			}
			_, err := OpenInput(c.path)
			check("OpenInput", err)
			_, err = File(context.Background(), c.path, filepath.Join(out, "model.safetensors"), Options{})
			check("File", err)
			_, err = Scan(context.Background(), c.path, Options{})
			check("Scan", err)
			_, err = Verify(context.Background(), c.path, "", Options{})
			check("Verify", err)
			_, err = Verify(context.Background(), good, c.path, Options{})
			check("Verify --source", err)
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("output directory holds %s", ents[0].Name())
			}
		})
	}
}

// TestPendingFile checks the output's life: a unique private temporary name beside the
// destination, nothing at the destination until Commit, the file in place (0644) after it, and
// nothing at all after Discard.
func TestPendingFile(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "model.safetensors")
	a, err := CreatePending(dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Discard()
	b, err := CreatePending(dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Name() == b.Name() || filepath.Dir(a.Name()) != dir {
		t.Errorf("temporary names %s and %s: want two distinct names in %s", a.Name(), b.Name(), dir)
	}
	if st, err := a.Stat(); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("temporary file mode %v (%v), want 0600 until committed", st.Mode(), err)
	}
	b.Discard()
	if _, err := os.Lstat(b.Name()); !os.IsNotExist(err) {
		t.Errorf("discarded file still exists: %v", err)
	}
	if _, err := a.WriteString("data"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dst); !os.IsNotExist(err) {
		t.Errorf("destination exists before Commit: %v", err)
	}
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	a.Discard() // after Commit: a no-op, the output stays
	got, err := os.ReadFile(dst)
	if err != nil || string(got) != "data" {
		t.Fatalf("destination after Commit: %q, %v", got, err)
	}
	if st, _ := os.Stat(dst); st.Mode().Perm() != 0o644 {
		t.Errorf("committed mode %v, want 0644", st.Mode())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the output", len(ents))
	}
}

// TestFileNeverReplacesUnlessOverwrite converts onto a file that exists (as one created while a
// conversion runs would): without Overwrite the file is left alone and the error matches
// fs.ErrExist; with it the output replaces the file.
func TestFileNeverReplacesUnlessOverwrite(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "model.safetensors")
	if err := os.WriteFile(dst, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := File(context.Background(), "../../testdata/torch/dtypes.pt", dst, Options{})
	if !errors.Is(err, fs.ErrExist) {
		t.Errorf("File onto an existing file: %v; want an error matching fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "keep" {
		t.Errorf("the existing file now holds %q", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the existing file", len(ents))
	}
	if _, err := File(context.Background(), "../../testdata/torch/dtypes.pt", dst, Options{Overwrite: true}); err != nil {
		t.Fatalf("File with Overwrite: %v", err)
	}
	if got, _ := os.ReadFile(dst); string(got) == "keep" {
		t.Error("Overwrite left the existing file")
	}
}

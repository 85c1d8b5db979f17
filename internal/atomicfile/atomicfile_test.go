package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// assertOnly fails unless dir holds exactly the named entries: no temporary file is left behind.
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if len(got) != len(names) {
		t.Fatalf("directory holds %v; want %v", got, names)
	}
	for i := range got {
		if got[i] != names[i] {
			t.Fatalf("directory holds %v; want %v", got, names)
		}
	}
}

// TestWriteFile covers both modes on a new and an existing destination.
func TestWriteFile(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		existing string // "" none
		mode     Mode
		want     string
		exist    bool // the error matches fs.ErrExist
	}{
		{name: "replace, new", mode: Replace, want: "new"},
		{name: "replace, existing", existing: "old", mode: Replace, want: "new"},
		{name: "no-replace, new", mode: NoReplace, want: "new"},
		{name: "no-replace, existing", existing: "old", mode: NoReplace, want: "old", exist: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			dst := filepath.Join(dir, "m.json")
			if c.existing != "" {
				write(t, dst, c.existing)
			}
			err := WriteFile(dst, []byte("new"), 0o640, c.mode)
			switch {
			case c.exist && !errors.Is(err, fs.ErrExist):
				t.Fatalf("WriteFile: %v; want an error matching fs.ErrExist", err)
			case !c.exist && err != nil:
				t.Fatalf("WriteFile: %v", err)
			}
			if got := read(t, dst); got != c.want {
				t.Errorf("destination holds %q, want %q", got, c.want)
			}
			if !c.exist {
				st, _ := os.Stat(dst)
				if st.Mode().Perm() != 0o640 {
					t.Errorf("mode %v, want 0640 whatever the umask", st.Mode().Perm())
				}
			}
			assertOnly(t, dir, "m.json")
		})
	}
}

// TestNoReplaceLosesTheRace: a file created at the destination after Create (by another process
// that checked at the same time) is never overwritten.
func TestNoReplaceLosesTheRace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dst := filepath.Join(dir, "out")
	f, err := Create(dst, 0o644, NoReplace)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	f.WriteString("mine")
	write(t, dst, "theirs")
	if err := f.Commit(); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Commit: %v; want an error matching fs.ErrExist", err)
	}
	if got := read(t, dst); got != "theirs" {
		t.Errorf("destination holds %q; the concurrent writer's file was replaced", got)
	}
	assertOnly(t, dir, "out")
}

// TestLinkFallback drives the link(2) path that file systems without RENAME_NOREPLACE take.
func TestLinkFallback(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tmp, dst := filepath.Join(dir, "tmp"), filepath.Join(dir, "dst")
	write(t, tmp, "a")
	write(t, dst, "b")
	if err := linkNoReplace(tmp, dst); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("link over an existing file: %v; want fs.ErrExist", err)
	}
	if got := read(t, dst); got != "b" {
		t.Errorf("destination holds %q, want b", got)
	}
	os.Remove(dst)
	if err := linkNoReplace(tmp, dst); err != nil {
		t.Fatal(err)
	}
	if got := read(t, dst); got != "a" {
		t.Errorf("destination holds %q, want a", got)
	}
	assertOnly(t, dir, "dst")
}

// TestUniqueTemporaryNames: two writers of one destination never share a temporary file (a
// fixed NAME.tmp would let one truncate the other's bytes).
func TestUniqueTemporaryNames(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dst := filepath.Join(dir, "model.safetensors")
	a, err := Create(dst, 0o644, Replace)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Abort()
	b, err := Create(dst, 0o644, Replace)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Abort()
	if a.Name() == b.Name() {
		t.Fatalf("both writers got %s", a.Name())
	}
	for _, f := range []*File{a, b} {
		if filepath.Dir(f.Name()) != dir {
			t.Errorf("temporary file %s is not in the destination's directory", f.Name())
		}
	}
	a.WriteString("a")
	b.WriteString("b")
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, dst); got != "b" {
		t.Errorf("destination holds %q; want the last committed writer's b", got)
	}
	assertOnly(t, dir, "model.safetensors")
}

// TestAbort: an aborted file leaves nothing; Abort after Commit keeps the committed file, so a
// deferred Abort is safe; a second Commit is an error.
func TestAbort(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dst := filepath.Join(dir, "out")
	f, err := Create(dst, 0o644, Replace)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("partial")
	if err := f.Abort(); err != nil {
		t.Fatal(err)
	}
	assertOnly(t, dir)

	f, err = Create(dst, 0o644, Replace)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("done")
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := f.Abort(); err != nil {
		t.Errorf("Abort after Commit: %v", err)
	}
	if err := f.Commit(); err == nil {
		t.Error("a second Commit succeeded")
	}
	if got := read(t, dst); got != "done" {
		t.Errorf("destination holds %q after Abort, want done", got)
	}
}

// TestDestinationIsADirectory: replacing a directory fails, and leaves no temporary file.
func TestDestinationIsADirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dst := filepath.Join(dir, "sub")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []Mode{Replace, NoReplace} {
		if err := WriteFile(dst, []byte("x"), 0o644, mode); err == nil {
			t.Errorf("mode %d: replaced a directory", mode)
		}
	}
	assertOnly(t, dir, "sub")
}

// TestSymlinkDestination: the link itself is replaced (Replace) or counts as existing
// (NoReplace); the file it points to is never written through.
func TestSymlinkDestination(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	target, link := filepath.Join(dir, "target"), filepath.Join(dir, "link")
	write(t, target, "precious")
	if err := os.Symlink(target, link); err != nil {
		t.Skipf("symlinks: %v", err)
	}
	if err := WriteFile(link, []byte("x"), 0o644, NoReplace); !errors.Is(err, fs.ErrExist) {
		t.Errorf("NoReplace over a symlink: %v; want fs.ErrExist", err)
	}
	if err := WriteFile(link, []byte("x"), 0o644, Replace); err != nil {
		t.Fatal(err)
	}
	if got := read(t, target); got != "precious" {
		t.Errorf("the symlink's target now holds %q", got)
	}
	if st, _ := os.Lstat(link); st.Mode()&fs.ModeSymlink != 0 {
		t.Error("the symlink is still a symlink after Replace")
	}
}

func TestCreateInMissingDirectory(t *testing.T) {
	t.Parallel()
	dst := filepath.Join(t.TempDir(), "missing", "out")
	if _, err := Create(dst, 0o644, Replace); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create: %v; want fs.ErrNotExist", err)
	}
}

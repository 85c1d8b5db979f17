package store_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/ptsafe/converter/internal/store"
)

// write creates the files of a tree: path -> content.
func write(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		name := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func symlink(t *testing.T, target, name string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}

// walk lists what Walk passes: "path size" for a file, "path: reason" for a skipped entry.
func walk(t *testing.T, tree store.Tree) []string {
	t.Helper()
	var got []string
	err := tree.Walk(context.Background(), func(o store.Object, err error) error {
		var skip *store.SkipError
		switch {
		case errors.As(err, &skip):
			got = append(got, o.Path+": "+skip.Reason)
		case err != nil:
			return err
		default:
			got = append(got, fmt.Sprintf("%s %d", o.Path, o.Size))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// A Hugging Face cache: the snapshot's files are links into ../../blobs/, which are inside the
// tree when the tree is the model's cache directory, and outside it when it is the snapshot.
func TestLocalWalkHuggingFaceCache(t *testing.T) {
	t.Parallel()
	cache := t.TempDir()
	write(t, cache, map[string]string{
		"blobs/aaa":      "config",
		"blobs/bbb":      "weights!",
		"refs/main":      "abc",
		"snapshots/.tmp": "",
	})
	symlink(t, "../../blobs/aaa", filepath.Join(cache, "snapshots/abc/config.json"))
	symlink(t, "../../blobs/bbb", filepath.Join(cache, "snapshots/abc/pytorch_model.bin"))

	whole, err := store.NewLocal(cache)
	if err != nil {
		t.Fatal(err)
	}
	got := walk(t, whole)
	want := []string{"blobs/aaa 6", "blobs/bbb 8", "refs/main 3", "snapshots/.tmp 0",
		"snapshots/abc/config.json 6", "snapshots/abc/pytorch_model.bin 8"}
	if !slices.Equal(got, want) {
		t.Errorf("cache walk:\n got %q\nwant %q", got, want)
	}

	snap, err := store.NewLocal(filepath.Join(cache, "snapshots/abc"))
	if err != nil {
		t.Fatal(err)
	}
	got = walk(t, snap)
	want = []string{"config.json: symlink leaves the tree", "pytorch_model.bin: symlink leaves the tree"}
	if !slices.Equal(got, want) {
		t.Errorf("snapshot walk:\n got %q\nwant %q", got, want)
	}
}

func TestLocalWalkSkips(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	outside := t.TempDir()
	write(t, root, map[string]string{"a/x": "1", "a.txt": "22", "b/c/d": "333"})
	write(t, outside, map[string]string{"secret": "s"})
	symlink(t, filepath.Join(outside, "secret"), filepath.Join(root, "leak"))
	symlink(t, outside, filepath.Join(root, "leakdir"))
	symlink(t, "..", filepath.Join(root, "b/c/up"))    // back to b: a loop
	symlink(t, "self", filepath.Join(root, "self"))    // a link to itself
	symlink(t, "missing", filepath.Join(root, "gone")) // dangling
	symlink(t, "b/c", filepath.Join(root, "z"))        // a directory inside: followed
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	tree, err := store.NewLocal(root)
	if err != nil {
		t.Fatal(err)
	}
	got := walk(t, tree)
	want := []string{
		"a.txt 2", // before a/x: '.' sorts before '/'
		"a/x 1",
		"b/c/d 3",
		"b/c/up: symlink loop",
		"fifo: not a regular file (p---------)",
		"gone: symlink target does not exist",
		"leak: symlink leaves the tree",
		"leakdir: symlink leaves the tree",
		"self: symlink loop or unreadable link: EvalSymlinks: too many links",
		"z/d 3",
		"z/up/c: symlink loop", // z/up is b, not yet on z's path; its c is z again
	}
	if !slices.Equal(got, want) {
		t.Errorf("walk:\n got %q\nwant %q", got, want)
	}
}

func TestLocalWalkMissingRoot(t *testing.T) {
	t.Parallel()
	tree, err := store.NewLocal(filepath.Join(t.TempDir(), "none"))
	if err != nil {
		t.Fatalf("NewLocal of a directory still to be created: %v", err)
	}
	if err := tree.Walk(context.Background(), func(store.Object, error) error { return nil }); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Walk of a missing root = %v, want fs.ErrNotExist", err)
	}
	if _, err := tree.Stat(context.Background(), "x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat in a missing root = %v, want fs.ErrNotExist", err)
	}
}

func TestNewLocalRefusesAFile(t *testing.T) {
	t.Parallel()
	name := filepath.Join(t.TempDir(), "f")
	write(t, filepath.Dir(name), map[string]string{"f": ""})
	if _, err := store.NewLocal(name); err == nil {
		t.Error("NewLocal of a regular file: no error")
	}
}

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func TestLocalPut(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "dest") // created by the first Put
	tree, err := store.NewLocal(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		path    string
		content string
		size    int64
		sha     string
		wantErr bool
	}{
		{"new file in new directories", "a/b/config.json", "{}", 2, sum("{}"), false},
		{"replaces a file", "a/b/config.json", "{1}", 3, "", false},
		{"short read", "short", "ab", 3, "", true},
		{"longer than said", "long", "abcd", 3, "", true},
		{"wrong digest", "bad", "ab", 2, sum("xy"), true},
		{"path with ..", "../escape", "ab", 2, "", true},
	} {
		err := tree.Put(ctx, tc.path, strings.NewReader(tc.content), tc.size, tc.sha)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: Put = %v, want error %v", tc.name, err, tc.wantErr)
			continue
		}
		if tc.wantErr {
			if _, err := tree.Stat(ctx, tc.path); err == nil {
				t.Errorf("%s: a failed Put left a file", tc.name)
			}
			continue
		}
		r, err := tree.Open(ctx, tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r)
		r.Close()
		if string(b) != tc.content {
			t.Errorf("%s: content %q, want %q", tc.name, b, tc.content)
		}
	}
	// No temporary file is left behind by the failed Puts.
	if got := walk(t, tree); !slices.Equal(got, []string{"a/b/config.json 3"}) {
		t.Errorf("tree after the Puts: %q", got)
	}
}

// Put replaces a symlink at the name with a regular file and leaves the link's target alone.
func TestLocalPutReplacesSymlink(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root, outside := t.TempDir(), t.TempDir()
	write(t, outside, map[string]string{"target": "keep"})
	symlink(t, filepath.Join(outside, "target"), filepath.Join(root, "out"))
	tree, _ := store.NewLocal(root)
	if err := tree.Put(ctx, "out", strings.NewReader("new"), 3, ""); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "target")); string(b) != "keep" {
		t.Errorf("symlink target written through: %q", b)
	}
	if st, err := os.Lstat(filepath.Join(root, "out")); err != nil || !st.Mode().IsRegular() {
		t.Errorf("output is not a regular file: %v %v", st.Mode(), err)
	}
}

func TestLocalOpenStatRemove(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root, outside := t.TempDir(), t.TempDir()
	write(t, root, map[string]string{"blobs/b": "data"})
	write(t, outside, map[string]string{"secret": "s"})
	symlink(t, "blobs/b", filepath.Join(root, "link"))
	symlink(t, filepath.Join(outside, "secret"), filepath.Join(root, "leak"))
	tree, _ := store.NewLocal(root)

	if o, err := tree.Stat(ctx, "link"); err != nil || o.Size != 4 {
		t.Errorf("Stat of a link inside = %+v, %v; want size 4", o, err)
	}
	if _, err := tree.Open(ctx, "leak"); err == nil {
		t.Error("Open of a link leaving the tree: no error")
	}
	if _, err := tree.Stat(ctx, "blobs"); err == nil {
		t.Error("Stat of a directory: no error")
	}
	if err := tree.Remove(ctx, "link"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "blobs/b")); err != nil {
		t.Errorf("Remove of a link removed its target: %v", err)
	}
	if err := tree.Remove(ctx, "link"); err != nil {
		t.Errorf("Remove of a missing file = %v, want nil", err)
	}
	if name, ok := tree.LocalPath("blobs/b"); !ok || name != filepath.Join(mustReal(t, root), "blobs", "b") {
		t.Errorf("LocalPath = %q, %v", name, ok)
	}
	if _, ok := tree.LocalPath("../x"); ok {
		t.Error("LocalPath of ../x: ok")
	}
}

func mustReal(t *testing.T, p string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ptsafe/converter/internal/atomicfile"
	"github.com/ptsafe/converter/internal/ctxio"
	"github.com/ptsafe/converter/internal/fault"
)

// Local is a directory of the local file system as a Tree.
//
// Walk follows a symlink only when its resolved target stays inside the root: a Hugging Face
// cache snapshot links every file into ../../blobs/, which must be read, while a link to
// /etc or to an ancestor directory must not be. Put writes regular files only, through a
// temporary file in the same directory (see atomicfile), so that a crash leaves the old
// file or the new one at the name, never a mix.
type Local struct {
	dir  string // as the user wrote it, for String
	root string // absolute, with the symlinks of its existing part resolved
}

// NewLocal returns the tree rooted at dir. dir need not exist yet (a destination is created by
// the first Put, and a dry run creates nothing); an existing dir must be a directory.
func NewLocal(dir string) (*Local, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", dir, err)
	}
	root, err := resolveExisting(abs)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", dir, err)
	}
	if st, err := os.Stat(root); err == nil && !st.IsDir() {
		return nil, fmt.Errorf("tree %s: not a directory", dir)
	}
	return &Local{dir: dir, root: root}, nil
}

// resolveExisting resolves the symlinks of the longest existing prefix of the absolute path
// abs and appends the rest unchanged.
func resolveExisting(abs string) (string, error) {
	real, err := filepath.EvalSymlinks(abs)
	if err == nil {
		return real, nil
	}
	parent := filepath.Dir(abs)
	if !errors.Is(err, fs.ErrNotExist) || parent == abs {
		return "", err
	}
	p, err := resolveExisting(parent)
	if err != nil {
		return "", err
	}
	return filepath.Join(p, filepath.Base(abs)), nil
}

// String returns the directory as given to NewLocal.
func (l *Local) String() string { return l.dir }

// Root is the tree's directory: absolute, with the symlinks of its existing part resolved.
func (l *Local) Root() string { return l.root }

// LocalPath returns the file name of path under the root; ok is false only for a path that is
// not a valid relative slash path.
func (l *Local) LocalPath(p string) (string, bool) {
	if !validPath(p) {
		return "", false
	}
	return filepath.Join(l.root, filepath.FromSlash(p)), true
}

func validPath(p string) bool { return p != "." && fs.ValidPath(p) }

// name is LocalPath for the methods that return an error.
func (l *Local) name(p string) (string, error) {
	name, ok := l.LocalPath(p)
	if !ok {
		return "", fmt.Errorf("%q: not a relative slash-separated path", p)
	}
	return name, nil
}

// Walk calls fn for every regular file under the root in lexical order of Path. A symlink is
// followed when its target resolves inside the root and is not a directory on the path from
// the root to the link (a loop); any other link, and a device, FIFO or socket, is passed with
// a *SkipError.
func (l *Local) Walk(ctx context.Context, fn func(Object, error) error) error {
	st, err := os.Stat(l.root)
	if err != nil {
		return fmt.Errorf("walk %s: %w", l.dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("walk %s: not a directory", l.dir)
	}
	return l.walkDir(ctx, "", l.root, []string{l.root}, fn)
}

// child is one entry of a directory, resolved.
type child struct {
	rel  string      // slash path relative to the root
	st   fs.FileInfo // of the target for a followed symlink
	real string      // resolved path, for a directory
	skip *SkipError
	read *ReadError
}

// sortKey orders a directory before a file whose name extends it ("a/x" sorts after "a.txt",
// as '/' sorts after '.'), so that a depth-first walk yields Paths in lexical order.
func (c child) sortKey() string {
	if c.skip == nil && c.read == nil && c.st.IsDir() {
		return c.rel + "/"
	}
	return c.rel
}

// walkDir walks the directory real (the resolved path of rel); stack holds the resolved
// directories from the root down to it, which a symlink must not point back into.
func (l *Local) walkDir(ctx context.Context, rel, real string, stack []string, fn func(Object, error) error) error {
	entries, err := os.ReadDir(real)
	switch {
	case err != nil && rel == "":
		return fmt.Errorf("walk %s: %w", l.dir, err)
	case err != nil: // one directory the walk cannot read need not hide the rest of the tree
		return fn(Object{Path: rel}, &ReadError{Path: rel, Err: fault.PathFree(err)})
	}
	children := make([]child, 0, len(entries))
	for _, e := range entries {
		children = append(children, l.resolve(path.Join(rel, e.Name()), filepath.Join(real, e.Name()), e, stack))
	}
	slices.SortFunc(children, func(a, b child) int { return strings.Compare(a.sortKey(), b.sortKey()) })
	for _, c := range children {
		if err := ctx.Err(); err != nil {
			return err
		}
		switch {
		case c.skip != nil:
			err = fn(Object{Path: c.rel}, c.skip)
		case c.read != nil:
			err = fn(Object{Path: c.rel}, c.read)
		case c.st.IsDir():
			err = l.walkDir(ctx, c.rel, c.real, append(stack, c.real), fn)
		default:
			err = fn(Object{Path: c.rel, Size: c.st.Size(), ModTime: c.st.ModTime()}, nil)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// resolve describes one directory entry, following it when it is a symlink that may be.
func (l *Local) resolve(rel, name string, e fs.DirEntry, stack []string) child {
	c := child{rel: rel, real: name}
	skip := func(reason string) child {
		c.skip = &SkipError{Path: rel, Reason: reason}
		return c
	}
	if e.Type()&fs.ModeSymlink != 0 {
		target, err := filepath.EvalSymlinks(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return skip("symlink target does not exist")
		case err != nil: // EvalSymlinks reports a loop as "too many links"
			return skip("symlink loop or unreadable link: " + fault.PathFree(err).Error())
		case !l.inside(target):
			return skip("symlink leaves the tree")
		}
		c.real = target
	}
	st, err := os.Stat(c.real)
	switch {
	case errors.Is(err, fs.ErrNotExist): // removed since the directory was listed
		return skip("removed while the tree was listed")
	case err != nil:
		c.read = &ReadError{Path: rel, Err: fault.PathFree(err)}
		return c
	}
	c.st = st
	switch {
	case st.IsDir():
		if slices.Contains(stack, c.real) {
			return skip("symlink loop")
		}
	case !st.Mode().IsRegular():
		return skip("not a regular file (" + st.Mode().Type().String() + ")")
	}
	return c
}

// inside reports whether the resolved path real is the root or below it.
func (l *Local) inside(real string) bool {
	r, err := filepath.Rel(l.root, real)
	return err == nil && r != ".." && !strings.HasPrefix(r, ".."+string(filepath.Separator))
}

// Stat describes the regular file at p, following a symlink that stays inside the root.
func (l *Local) Stat(_ context.Context, p string) (Object, error) {
	name, err := l.check(p)
	if err != nil {
		return Object{}, err
	}
	st, err := os.Stat(name)
	if err != nil {
		return Object{}, err
	}
	if !st.Mode().IsRegular() {
		return Object{}, fmt.Errorf("%s: not a regular file", p)
	}
	return Object{Path: p, Size: st.Size(), ModTime: st.ModTime()}, nil
}

// check returns the name of p after making sure that, if it exists, it resolves inside the
// root: a link swapped since Walk cannot make Open read outside the tree.
func (l *Local) check(p string) (string, error) {
	name, err := l.name(p)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(name)
	if err != nil {
		return "", err
	}
	if !l.inside(real) {
		return "", fmt.Errorf("%s: symlink leaves the tree", p)
	}
	return name, nil
}

// Open opens the regular file at p for reading.
func (l *Local) Open(_ context.Context, p string) (io.ReadCloser, error) {
	name, err := l.check(p)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file", p)
	}
	return f, nil
}

// Put writes size bytes from r to p as a new regular file (0644), creating the parent
// directories, through a temporary file that is renamed over p only when exactly size bytes,
// with the SHA-256 sha256hex when it is given, were written and synced.
func (l *Local) Put(ctx context.Context, p string, r io.Reader, size int64, sha256hex string) error {
	name, err := l.name(p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	f, err := atomicfile.Create(name, 0o644, atomicfile.Replace)
	if err != nil {
		return err
	}
	defer f.Abort()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(ctxio.Reader(ctx, r), size+1))
	if err != nil {
		return fmt.Errorf("put %s: %w", p, err)
	}
	if n != size {
		return fmt.Errorf("put %s: read %d bytes, want %d", p, n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); sha256hex != "" && got != sha256hex {
		return fmt.Errorf("put %s: SHA-256 %s, want %s", p, got, sha256hex)
	}
	return f.Commit()
}

// Remove deletes the file at p (a symlink itself, never its target); a missing file is not an
// error.
func (l *Local) Remove(_ context.Context, p string) error {
	name, err := l.name(p)
	if err != nil {
		return err
	}
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Package atomicfile writes files so that the destination path holds either what it held before
// or the complete new file, never a partial one, even across a crash.
//
// A File is a temporary file with a unique name in the destination's directory, so that two
// writers never share it and the final move never crosses file systems. Commit makes the bytes
// durable, gives the file its permissions, moves it to the destination and syncs the directory,
// so that the new name survives a crash as well. In NoReplace mode Commit never overwrites
// anything: a destination that exists at that moment, even one a concurrent writer created after
// the caller last looked, makes Commit fail with an error matching fs.ErrExist.
//
// It never writes through the destination: a symlink at the destination is replaced (Replace)
// or counts as existing (NoReplace), its target is left alone.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Mode says what Commit does when the destination exists.
type Mode int

const (
	// Replace atomically replaces an existing destination.
	Replace Mode = iota
	// NoReplace fails with an error matching fs.ErrExist if the destination exists.
	NoReplace
)

// File is a temporary file that becomes its destination on Commit. Write to it through the
// embedded *os.File, then call Commit or Abort, never Close; Abort after Commit does nothing, so
// `defer f.Abort()` cleans up every early return.
type File struct {
	*os.File
	dst      string
	perm     fs.FileMode
	mode     Mode
	volatile bool
	done     bool
}

// Create makes a temporary file for dst in dst's directory, named ".BASE.RANDOM.tmp" so that a
// directory listing shows what it is for. perm is applied on Commit, unaffected by the umask.
func Create(dst string, perm fs.FileMode, mode Mode) (*File, error) {
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*.tmp")
	if err != nil {
		return nil, err
	}
	return &File{File: f, dst: dst, perm: perm, mode: mode}, nil
}

// Volatile makes Commit skip every fsync, of the file and of its directory: for a staging copy
// read once and deleted, whose loss in a crash costs nothing, the move stays atomic but need
// not be durable.
func (f *File) Volatile() { f.volatile = true }

// Commit syncs and closes the file, sets its permissions and moves it to the destination, then
// syncs the directory. On an error before the move the temporary file is removed and the
// destination is untouched. An error syncing the directory is returned although the file is
// already in place: the move happened but may not survive a crash.
func (f *File) Commit() error {
	if f.done {
		return fmt.Errorf("commit %s: already committed or aborted", f.dst)
	}
	f.done = true
	err := f.Chmod(f.perm)
	if err == nil && !f.volatile {
		err = f.Sync()
	}
	if cerr := f.File.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = move(f.Name(), f.dst, f.mode)
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	if f.volatile {
		return nil
	}
	return SyncDir(filepath.Dir(f.dst))
}

// Abort closes and removes the temporary file, leaving the destination untouched. It does
// nothing after Commit or a previous Abort.
func (f *File) Abort() error {
	if f.done {
		return nil
	}
	f.done = true
	f.File.Close()
	return os.Remove(f.Name())
}

// WriteFile writes data to dst through a File: the whole of data or nothing appears at dst.
func WriteFile(dst string, data []byte, perm fs.FileMode, mode Mode) error {
	f, err := Create(dst, perm, mode)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Commit()
}

// SyncDir makes the creation, removal or renaming of entries in dir durable. A file system that
// cannot sync a directory (EINVAL, ENOTSUP) has nothing to sync, which is not an error.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return err
	}
	return nil
}

func move(tmp, dst string, mode Mode) error {
	if mode == Replace {
		return os.Rename(tmp, dst)
	}
	return renameNoReplace(tmp, dst)
}

// linkNoReplace moves tmp to dst with link(2), which never replaces an existing dst, then
// removes tmp: the portable no-replace move, for systems or file systems without
// renameat2(RENAME_NOREPLACE).
func linkNoReplace(tmp, dst string) error {
	if err := os.Link(tmp, dst); err != nil {
		return err
	}
	return os.Remove(tmp)
}

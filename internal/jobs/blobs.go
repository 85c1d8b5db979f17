package jobs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ptsafe/converter/internal/atomicfile"
)

// blobs lays out the service's files under one data directory:
//
//	DIR/jobs.db                        the SQLite file (our jobs table and River's queue)
//	DIR/tmp/                           uploads being received
//	DIR/jobs/ID/input                  the uploaded checkpoint, until the job finishes
//	DIR/jobs/ID/output.safetensors     the verified output (renamed into place by the converter)
//	DIR/jobs/ID/manifest.json          the conversion manifest (renamed into place)
//
// A job's directory is removed with the job. At startup, every file not listed here for the
// job's state (and all of tmp/) is a crash's leftover and removed (localStore.sweep). With an
// S3 store (s3Store) the same layout is scratch space: a job's files are there only while an
// attempt runs on this node.
type blobs struct {
	dir string
	// free reports the bytes still usable on dir's file system (diskFree; tests fake it).
	free func(dir string) (int64, bool, error)
}

func (b blobs) dbPath() string              { return filepath.Join(b.dir, "jobs.db") }
func (b blobs) tmpDir() string              { return filepath.Join(b.dir, "tmp") }
func (b blobs) jobsDir() string             { return filepath.Join(b.dir, "jobs") }
func (b blobs) jobDir(id string) string     { return filepath.Join(b.jobsDir(), id) }
func (b blobs) file(id, name string) string { return filepath.Join(b.jobDir(id), name) }
func (b blobs) input(id string) string      { return b.file(id, nameInput) }
func (b blobs) output(id string) string     { return b.file(id, nameOutput) }
func (b blobs) manifest(id string) string   { return b.file(id, nameManifest) }
func (b blobs) lockPath() string            { return filepath.Join(b.dir, "lock") }

func (b blobs) init() error {
	for _, d := range []string{b.dir, b.tmpDir(), b.jobsDir()} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return fmt.Errorf("create data directory: %w", err)
		}
	}
	return nil
}

// Upload is a request body received into staging storage, not yet owned by a job.
type Upload struct {
	Size   int64
	SHA256 string // lower-case hex
	id     string // of the job it is to become
	// adopt makes it the job's input durably (nil when there is nothing to do); drop removes
	// it. Both are nil once it was adopted or discarded.
	adopt, drop func() error
}

// Discard removes a staged upload that will not become a job.
func (u *Upload) Discard() error {
	if u == nil || u.drop == nil {
		return nil
	}
	err := u.drop()
	u.adopt, u.drop = nil, nil
	return err
}

// keep makes the upload its job's input.
func (u *Upload) keep() error {
	if u.adopt != nil {
		if err := u.adopt(); err != nil {
			return err
		}
	}
	u.adopt, u.drop = nil, nil
	return nil
}

// ErrInsufficientStorage is returned by Stage when receiving an upload would leave the data
// directory with less free space than Config.MinFreeBytes.
var ErrInsufficientStorage = errors.New("insufficient storage")

// noSpace wraps err with ErrInsufficientStorage when it says the disk is full (ENOSPC, a
// quota, or SQLite's SQLITE_FULL), so that every way of running out of room is answered alike.
func noSpace(err error) error {
	if err == nil || errors.Is(err, ErrInsufficientStorage) {
		return err
	}
	if diskFull(err) || strings.Contains(err.Error(), "database or disk is full") {
		return fmt.Errorf("%w: %w", ErrInsufficientStorage, err)
	}
	return err
}

// spaceCheckEvery is how many bytes of an upload are received between two free-space checks.
const spaceCheckEvery = 64 << 20

// ensureSpace fails with ErrInsufficientStorage unless the data directory has need bytes free.
func (b blobs) ensureSpace(need int64) error {
	free, known, err := b.free(b.dir)
	if err != nil {
		return fmt.Errorf("check free space: %w", err)
	}
	if known && free < need {
		return fmt.Errorf("%w: the data directory has %d bytes free, this needs %d", ErrInsufficientStorage, free, need)
	}
	return nil
}

// spaceWriter passes writes to w and checks, every spaceCheckEvery bytes, that the data
// directory keeps minFree bytes free.
type spaceWriter struct {
	w       io.Writer
	b       blobs
	minFree int64
	since   int64
}

func (s *spaceWriter) Write(p []byte) (int, error) {
	if s.since += int64(len(p)); s.since >= spaceCheckEvery {
		s.since = 0
		if err := s.b.ensureSpace(s.minFree + int64(len(p))); err != nil {
			return 0, err
		}
	}
	return s.w.Write(p)
}

// stage streams r into a new temporary file while hashing it; the bytes are never held in
// memory. The file is synced before stage returns. size is the declared length (negative when
// unknown): the upload is refused before any byte is read unless the data directory can take it
// and an output as large and still keep minFree bytes free, and abandoned as soon as it would
// leave less. On error nothing is kept, and the error wraps the reader's error (an
// *http.MaxBytesError stays reachable through errors.As) or ErrInsufficientStorage. It returns
// the upload and its file.
func (b blobs) stage(r io.Reader, size, minFree int64) (*Upload, string, error) {
	if err := b.ensureSpace(minFree + 2*max(size, 0)); err != nil {
		return nil, "", err
	}
	f, err := os.CreateTemp(b.tmpDir(), "upload-*")
	if err != nil {
		return nil, "", fmt.Errorf("create upload file: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(&spaceWriter{w: f, b: b, minFree: minFree}, h), r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, "", noSpace(fmt.Errorf("receive upload: %w", err))
	}
	return &Upload{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, f.Name(), nil
}

// adopt moves the staged upload at path into a new job's directory, durably.
func (b blobs) adopt(path, id string) error {
	if err := os.MkdirAll(b.jobDir(id), 0o750); err != nil {
		return fmt.Errorf("create job directory: %w", err)
	}
	if err := os.Rename(path, b.input(id)); err != nil {
		return fmt.Errorf("store upload: %w", err)
	}
	if err := atomicfile.SyncDir(b.jobDir(id)); err != nil {
		return fmt.Errorf("sync job directory: %w", err)
	}
	if err := atomicfile.SyncDir(b.jobsDir()); err != nil {
		return fmt.Errorf("sync jobs directory: %w", err)
	}
	return nil
}

func ignoreNotExist(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

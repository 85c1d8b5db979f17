package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/ptsafe/converter/internal/fault"
)

// ErrOutputLost means a succeeded job's output or manifest is missing or no longer has the
// digest recorded when it was written. The job is failed with an internal error when this is
// found, so it is never served again.
var ErrOutputLost = errors.New("the job's stored output was lost")

// Artifact is an open, verified file of a succeeded job: a local file whose bytes hashed to
// the digest the job recorded when Open returned it, or an S3 object whose size and recorded
// digest are the job's and which is read only while it stays that object. Read it through its
// methods; Close it when done.
type Artifact struct {
	f       io.ReadSeekCloser
	size    int64
	modTime time.Time
	// location is a short-lived URL the client may fetch the bytes from instead (a presigned
	// S3 GET), or nil.
	location *url.URL
}

// Read reads from the file.
func (a *Artifact) Read(p []byte) (int, error) { return a.f.Read(p) }

// Seek sets the offset of the next Read.
func (a *Artifact) Seek(offset int64, whence int) (int64, error) { return a.f.Seek(offset, whence) }

// Close closes the file.
func (a *Artifact) Close() error { return a.f.Close() }

// Location is a short-lived URL from which a client can fetch the same verified bytes
// without this server (serve --presign), or "" when they are to be read here.
func (a *Artifact) Location() string {
	if a.location == nil {
		return ""
	}
	return a.location.String()
}

// Size is the file's length in bytes.
func (a *Artifact) Size() int64 { return a.size }

// ModTime is when the file was written.
func (a *Artifact) ModTime() time.Time { return a.modTime }

// verifiedFiles remembers which files hashed to their recorded digest, keyed by path and
// checked against the size and modification time they had then, so that repeated downloads of
// a large output do not rehash it while a file changed on disk is hashed again.
type verifiedFiles struct {
	mu    sync.Mutex
	files map[string]fileStamp
}

type fileStamp struct {
	size    int64
	modTime time.Time
}

func (v *verifiedFiles) ok(path string, st fileStamp) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.files[path] == st
}

func (v *verifiedFiles) remember(path string, st fileStamp) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.files == nil {
		v.files = map[string]fileStamp{}
	}
	v.files[path] = st
}

func (v *verifiedFiles) forget(paths ...string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, p := range paths {
		delete(v.files, p)
	}
}

// OpenOutput returns a succeeded conversion job and its verified safetensors file; ErrConflict
// if the job has not succeeded or is a scan, ErrOutputLost (and the job failed) if the file is
// missing or corrupt.
func (s *Service) OpenOutput(ctx context.Context, tenant, id string) (Job, *Artifact, error) {
	r, err := getJob(ctx, s.db, tenant, id)
	if err != nil {
		return Job{}, nil, err
	}
	if r.Mode == ModeScan {
		return s.withExpiry(r.Job), nil, fmt.Errorf("%w: a scan job has no output", ErrConflict)
	}
	return s.openArtifact(ctx, r, "output", nameOutput, r.OutputSize, r.OutputSHA256)
}

// OpenManifest returns a succeeded job and its verified manifest JSON (a scan job's is its
// report), like OpenOutput.
func (s *Service) OpenManifest(ctx context.Context, tenant, id string) (Job, *Artifact, error) {
	r, err := getJob(ctx, s.db, tenant, id)
	if err != nil {
		return Job{}, nil, err
	}
	return s.openArtifact(ctx, r, "manifest", nameManifest, -1, r.manifestSHA256)
}

// OpenReport returns a finished job and its verified scan report, in the manifest's schema: a
// succeeded job's manifest, or the report of a failed job's refused file. Jobs without one
// (unfinished, canceled, or failed before their file was judged) are ErrNoReport. A failed
// job's report that is missing or corrupt is logged and not served (ErrNoReport too: the job
// has failed already).
func (s *Service) OpenReport(ctx context.Context, tenant, id string) (Job, *Artifact, error) {
	r, err := getJob(ctx, s.db, tenant, id)
	if err != nil {
		return Job{}, nil, err
	}
	switch {
	case r.State == StateSucceeded:
		return s.openArtifact(ctx, r, "manifest", nameManifest, -1, r.manifestSHA256)
	case !r.HasReport:
		return s.withExpiry(r.Job), nil, ErrNoReport
	}
	a, err := s.store.open(ctx, id, nameManifest, -1, r.manifestSHA256)
	if err != nil {
		s.metrics.lost.WithLabelValues("report").Inc()
		s.log.Error("stored file lost", slog.String("job_id", id), slog.String("file", "report"), slog.String("error", err.Error()))
		return s.withExpiry(r.Job), nil, fmt.Errorf("%w (it %s)", ErrNoReport, err)
	}
	return s.withExpiry(r.Job), a, nil
}

// openArtifact opens the file name of the succeeded job r, checked against digest (and size,
// unless negative); a file missing or corrupt fails the job as lost.
func (s *Service) openArtifact(ctx context.Context, r row, what, name string, size int64, digest string) (Job, *Artifact, error) {
	id := r.ID
	j := s.withExpiry(r.Job)
	if j.State != StateSucceeded {
		return j, nil, ErrConflict
	}
	a, err := s.store.open(ctx, id, name, size, digest)
	if err != nil {
		s.metrics.lost.WithLabelValues(what).Inc()
		s.log.Error("stored file lost", slog.String("job_id", id), slog.String("file", what), slog.String("error", err.Error()))
		if merr := s.markLost(ctx, id, fmt.Sprintf("its %s %s", what, err)); merr != nil {
			return j, nil, errors.Join(ErrOutputLost, merr)
		}
		return j, nil, fmt.Errorf("%w: %s %s", ErrOutputLost, what, err)
	}
	return j, a, nil
}

// verify opens path and checks that it hashes to want (lower-case hex), unless a file of the
// same size and modification time did already. The bytes hashed are those of the open file, so
// a file replaced after the check is not what is served.
func (l *localStore) verify(path, want string) (*Artifact, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, errors.New("is missing")
	}
	if err != nil {
		return nil, fmt.Errorf("cannot be opened: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot be read: %w", err)
	}
	st := fileStamp{size: fi.Size(), modTime: fi.ModTime()}
	a := &Artifact{f: f, size: st.size, modTime: st.modTime}
	if want == "" || l.verified.ok(path, st) {
		return a, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, st.size)); err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot be read: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		f.Close()
		return nil, fmt.Errorf("has sha-256 %s, not the %s recorded when it was written", got, want)
	}
	l.verified.remember(path, st)
	return a, nil
}

// markLost fails a succeeded job whose files can no longer be served and removes them.
func (s *Service) markLost(ctx context.Context, id, why string) error {
	je := JobError{Type: fault.Internal, Detail: "output lost: " + why}
	if _, err := markFinished(context.WithoutCancel(ctx), s.db, id, StateFailed, je, "", time.Now(), StateSucceeded); err != nil {
		return err
	}
	_ = s.store.remove(context.WithoutCancel(ctx), id, nameOutput, nameManifest)
	s.log.Error("job output lost", slog.String("job_id", id), slog.String("reason", why))
	return nil
}

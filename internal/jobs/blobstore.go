package jobs

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/ptsafe/converter/internal/atomicfile"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
)

// The names of a job's files, under DIR/jobs/ID/ locally and under PREFIX/ID/ in S3. A scan
// report (OpenReport) is the manifest.
const (
	nameInput    = "input"
	nameOutput   = "output.safetensors"
	nameManifest = "manifest.json"
)

// blobStore keeps jobs' files between the steps of their lifecycle: the data directory itself
// (localStore, the default), or an S3 prefix with the data directory as scratch (s3Store). The
// converter always works on local files, at the paths blobs gives.
type blobStore interface {
	// stage receives an upload that is to become job id's input, hashing it as it streams.
	stage(ctx context.Context, id string, r io.Reader, size int64) (*Upload, error)
	// fetch makes job j's input the local file blobs.input(j.ID) for an attempt, checked
	// against its size and SHA-256; release removes what fetch added.
	fetch(ctx context.Context, j Job) (release func(), err error)
	// outputOptions returns opts, the options of a conversion of job's input of inputSize
	// bytes into the local file blobs.output, as the store needs its output written.
	outputOptions(opts convert.Options, inputSize int64) convert.Options
	// keepOutput stores the output an attempt of job id converted into blobs.output(id), as
	// the conversion described it.
	keepOutput(ctx context.Context, id string, out convert.Output) error
	// keepManifest stores data, of that SHA-256, as job id's manifest.
	keepManifest(ctx context.Context, id string, data []byte, sha string) error
	// open returns job id's file name, verified against sha (and size, unless negative).
	open(ctx context.Context, id, name string, size int64, sha string) (*Artifact, error)
	// remove deletes job id's files named (all of them when none is).
	remove(ctx context.Context, id string, names ...string) error
	// sweep removes what no job owns: files of jobs that do not exist, or that a job's state
	// does not own; it returns the succeeded jobs whose files it found missing. states are all
	// the jobs, read after the store's files were created.
	sweep(ctx context.Context, states func(context.Context) (map[string]jobKind, error)) (lost []string, err error)
	// sweepEvery is how often sweep runs while the service runs; 0 means only at Open.
	sweepEvery() time.Duration
	// ready reports whether the store answers (the data directory always does).
	ready(ctx context.Context) error
}

// localStore keeps every file of a job in its directory under the data directory.
type localStore struct {
	*blobs
	minFree  int64
	log      *slog.Logger
	strays   func() // counts a removed stray file
	verified verifiedFiles
}

func (l *localStore) stage(_ context.Context, id string, r io.Reader, size int64) (*Upload, error) {
	u, path, err := l.blobs.stage(r, size, l.minFree)
	if err != nil {
		return nil, err
	}
	u.id = id
	u.adopt = func() error { return l.adopt(path, id) }
	u.drop = func() error { return ignoreNotExist(os.Remove(path)) }
	return u, nil
}

func (l *localStore) fetch(context.Context, Job) (func(), error) { return func() {}, nil }

func (l *localStore) ready(context.Context) error { return nil }

// outputOptions leaves opts as they are: the output is the job's durable file itself, synced
// and read back by the conversion.
func (l *localStore) outputOptions(opts convert.Options, _ int64) convert.Options { return opts }

func (l *localStore) keepOutput(context.Context, string, convert.Output) error { return nil }

// keepManifest writes the manifest in place of any an earlier attempt left, synced.
func (l *localStore) keepManifest(_ context.Context, id string, data []byte, _ string) error {
	return fault.PathFree(atomicfile.WriteFile(l.manifest(id), data, 0o600, atomicfile.Replace))
}

func (l *localStore) open(_ context.Context, id, name string, _ int64, sha string) (*Artifact, error) {
	return l.verify(l.file(id, name), sha)
}

func (l *localStore) remove(_ context.Context, id string, names ...string) error {
	l.verified.forget(l.file(id, nameOutput), l.file(id, nameManifest))
	if len(names) == 0 {
		return os.RemoveAll(l.jobDir(id))
	}
	for _, n := range names {
		if err := ignoreNotExist(os.Remove(l.file(id, n))); err != nil {
			return err
		}
	}
	return nil
}

func (l *localStore) sweepEvery() time.Duration { return 0 }

// sweep deletes what a crash left behind: partial uploads, job directories no job row owns (a
// crash between storing an upload and committing its job), and inside a job's directory every
// file the job's state does not own (a conversion's temporary output, a half-written manifest,
// an input kept past the end of its job). Only at Open: a running conversion's temporary
// output is no job's file either.
func (l *localStore) sweep(ctx context.Context, states func(context.Context) (map[string]jobKind, error)) ([]string, error) {
	l.removeAll(l.tmpDir(), nil)
	all, err := states(ctx)
	if err != nil {
		return nil, err
	}
	dirs, err := os.ReadDir(l.jobsDir())
	if err != nil {
		return nil, err
	}
	var lost []string
	for _, e := range dirs {
		id := e.Name()
		kind, ok := all[id]
		if !ok {
			l.removeStray(l.jobDir(id))
			continue
		}
		own := owned(kind)
		present := l.removeAll(l.jobDir(id), own)
		if kind.state == StateSucceeded && present < len(own) {
			lost = append(lost, id)
		}
	}
	return lost, nil
}

// owned returns the names of the files a job in state kind owns: a failed job's is the
// report of its refused file, when it has one.
func owned(kind jobKind) map[string]bool {
	switch kind.state {
	case StateQueued, StateRunning:
		return map[string]bool{nameInput: true}
	case StateSucceeded:
		if kind.mode == ModeScan {
			return map[string]bool{nameManifest: true}
		}
		return map[string]bool{nameManifest: true, nameOutput: true}
	case StateFailed:
		return map[string]bool{nameManifest: true}
	}
	return nil
}

// removeAll removes the entries of dir not named in keep and returns how many it kept.
func (l *localStore) removeAll(dir string, keep map[string]bool) int {
	entries, err := os.ReadDir(dir)
	if err != nil {
		l.log.Warn("read directory", slog.String("path", dir), slog.String("error", err.Error()))
		return 0
	}
	kept := 0
	for _, e := range entries {
		if keep[e.Name()] {
			kept++
			continue
		}
		l.removeStray(filepath.Join(dir, e.Name()))
	}
	return kept
}

func (l *localStore) removeStray(path string) {
	l.strays()
	if err := os.RemoveAll(path); err != nil {
		l.log.Warn("remove stray file", slog.String("path", path), slog.String("error", err.Error()))
		return
	}
	l.log.Info("removed stray file", slog.String("path", path))
}

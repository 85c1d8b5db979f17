package jobs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/store"
)

// openStore returns the store Config names: the S3 prefix of Config.Store, or the data
// directory.
func (s *Service) openStore(ctx context.Context) (blobStore, error) {
	local := &localStore{blobs: s.blobs, minFree: s.cfg.MinFreeBytes, log: s.log, strays: s.metrics.strays.Inc}
	if s.cfg.Store == "" {
		return local, nil
	}
	tree, err := s3store.New(ctx, s.cfg.Store, s.cfg.StoreConfig)
	if err != nil {
		return nil, fmt.Errorf("job store: %w", err)
	}
	// No scratch file outlives the attempt that made it; the data directory's lock says none
	// runs now.
	local.removeAll(local.tmpDir(), nil)
	local.removeAll(local.jobsDir(), nil)
	grace := s.cfg.StoreGrace
	if grace <= 0 {
		grace = DefaultStoreGrace
	}
	return &s3Store{tree: tree, scratch: local, presign: s.cfg.Presign, grace: grace,
		probe: newCachedCheck(func(ctx context.Context) error {
			if err := tree.Ping(ctx); err != nil {
				return fmt.Errorf("job store %s does not answer: %w", tree, err)
			}
			return nil
		})}, nil
}

// startSweep runs the store's sweep every blobStore.sweepEvery until Stop.
func (s *Service) startSweep(ctx context.Context) {
	every := s.store.sweepEvery()
	if every <= 0 || s.stopSweep != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	s.stopSweep = func() { cancel(); <-done }
	go func() {
		defer close(done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if err := s.sweep(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("sweep of the job store", slog.String("error", err.Error()))
			}
		}
	}()
}

// s3Store keeps a job's files as the objects PREFIX/ID/NAME. Uploads stream to S3 as
// multipart uploads; an attempt fetches the input to the data directory (scratch), converts
// there into a staging copy, and puts the output and manifest back, each verified by size and
// SHA-256, before the job records them. Objects are immutable, so a download is verified by comparing the stored
// object's size, recorded SHA-256 and checksum with the job's; it then reads only that object
// (If-Match on its ETag). The bucket's writers are trusted as the database's are: an object
// replaced with the job's digest copied into its metadata, and no checksum, on a store that
// computes none, would not be told apart.
type s3Store struct {
	tree    *s3store.Tree
	scratch *localStore
	presign time.Duration
	grace   time.Duration
	probe   *cachedCheck // readiness: a listing of at most one key
}

func key(id, name string) string { return id + "/" + name }

// stage streams the upload to PREFIX/ID/input: the object exists only once the whole body
// arrived, and a failed or canceled upload is aborted. The data directory's free space does
// not bound it.
func (b *s3Store) stage(ctx context.Context, id string, r io.Reader, size int64) (*Upload, error) {
	n, sum, err := b.tree.PutStream(ctx, key(id, nameInput), r, size)
	if err != nil {
		return nil, fmt.Errorf("receive upload: %w", err)
	}
	return &Upload{Size: n, SHA256: sum, id: id, drop: func() error {
		return b.remove(context.WithoutCancel(ctx), id, nameInput)
	}}, nil
}

// fetch copies the input object to scratch, checked against the job's size and SHA-256, after
// checking that the data directory can take it and an output as large.
func (b *s3Store) fetch(ctx context.Context, j Job) (func(), error) {
	l := b.scratch
	release := func() {
		if err := os.RemoveAll(l.jobDir(j.ID)); err != nil {
			l.log.Warn("remove scratch files", slog.String("job_id", j.ID), slog.String("error", err.Error()))
		}
	}
	if err := l.ensureSpace(l.minFree + 2*j.InputSize); err != nil {
		return nil, err
	}
	// The job is this attempt's alone: the attempt before it ended, or its node died (maybe
	// mid-upload). Its parts would stay stored, invisible, until the sweep's grace period.
	if _, err := b.tree.AbortIncompleteIn(ctx, j.ID, time.Now()); err != nil {
		return nil, fmt.Errorf("abort a previous attempt's uploads: %w", err)
	}
	if err := os.MkdirAll(l.jobDir(j.ID), 0o750); err != nil {
		return nil, fmt.Errorf("create scratch directory: %w", err)
	}
	if err := b.fetchInput(ctx, j); err != nil {
		release()
		return nil, noSpace(fmt.Errorf("fetch input: %w", err))
	}
	return release, nil
}

// fetchInput copies the input object to scratch; the caller removes the file on error. Only
// the attempt reads it, so it need not be synced.
func (b *s3Store) fetchInput(ctx context.Context, j Job) error {
	rc, err := b.tree.Open(ctx, key(j.ID, nameInput))
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.OpenFile(b.scratch.input(j.ID), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), rc)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != j.InputSize || got != j.InputSHA256 {
		return fmt.Errorf("the stored input has %d bytes of sha-256 %s, not the %d bytes of %s uploaded", n, got, j.InputSize, j.InputSHA256)
	}
	return nil
}

// outputOptions has the conversion write a staging copy, which keepOutput puts and fetch's
// release removes: it need not reach the disk, and is not read back, since the upload checks
// every byte against the digests the conversion took as it wrote them. It takes the part
// digests of the upload PutFile would make of an output as large as the input (one of another
// size is hashed again as it is put).
func (b *s3Store) outputOptions(opts convert.Options, inputSize int64) convert.Options {
	opts.Staging = true
	opts.PartSize = b.tree.FilePartSize(inputSize)
	return opts
}

// keepOutput puts the staging copy with the conversion's digests, which the store checks: a
// copy that differs from what the conversion wrote leaves no object.
func (b *s3Store) keepOutput(ctx context.Context, id string, out convert.Output) error {
	f, err := os.Open(b.scratch.output(id))
	if err != nil {
		return err
	}
	defer f.Close()
	return b.tree.PutFile(ctx, key(id, nameOutput), f, out.Size, out.SHA256, out.PartSize, out.PartSHA256)
}

// keepManifest puts the manifest from memory: it never touches the scratch directory.
func (b *s3Store) keepManifest(ctx context.Context, id string, data []byte, sha string) error {
	return b.tree.PutFile(ctx, key(id, nameManifest), bytes.NewReader(data), int64(len(data)), sha, 0, nil)
}

func (b *s3Store) open(ctx context.Context, id, name string, size int64, sha string) (*Artifact, error) {
	k := key(id, name)
	info, err := b.tree.Head(ctx, k)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("is missing")
	}
	if err != nil {
		return nil, fmt.Errorf("cannot be opened: %w", err)
	}
	if err := mismatch(info, size, sha); err != nil {
		return nil, err
	}
	a := &Artifact{f: &objectReader{ctx: ctx, tree: b.tree, key: k, info: info}, size: info.Size, modTime: info.ModTime}
	if b.presign > 0 && name == nameOutput {
		if a.location, err = b.tree.PresignGet(ctx, k, b.presign); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// mismatch compares a stored object with the size (unless negative) and SHA-256 a job
// recorded for it. The object must carry that SHA-256 in its metadata, as Put records it (an
// object put by anything else has none), and an object stored in one request must also have
// it as its checksum, which the store computed from the bytes it received.
func mismatch(info s3store.Info, size int64, sha string) error {
	if size >= 0 && info.Size != size {
		return fmt.Errorf("has %d bytes, not the %d recorded when it was written", info.Size, size)
	}
	if sha == "" {
		return nil
	}
	if info.SHA256 != sha {
		return fmt.Errorf("carries sha-256 %q, not the %s recorded when it was written", info.SHA256, sha)
	}
	if info.Checksum != "" && !strings.Contains(info.Checksum, "-") {
		raw, _ := hex.DecodeString(sha)
		if want := base64.StdEncoding.EncodeToString(raw); info.Checksum != want {
			return fmt.Errorf("has the checksum %s, not the %s of the sha-256 recorded when it was written", info.Checksum, want)
		}
	}
	return nil
}

func (b *s3Store) remove(ctx context.Context, id string, names ...string) error {
	if len(names) == 0 {
		names = []string{nameInput, nameOutput, nameManifest}
	}
	var errs []error
	for _, n := range names {
		errs = append(errs, b.tree.Remove(ctx, key(id, n)))
	}
	return errors.Join(errs...)
}

func (b *s3Store) ready(ctx context.Context) error { return b.probe.do(ctx) }

// sweepEvery is a tenth of the grace period, from a minute to an hour: each run lists the
// prefix.
func (b *s3Store) sweepEvery() time.Duration { return max(min(b.grace/10, time.Hour), time.Minute) }

// sweep aborts the multipart uploads started more than the grace period ago and removes the
// objects, older than that, that no job owns: under a job id no job has (an upload whose job
// was never recorded, the files of a job deleted while an attempt still wrote them), or that
// their job's state does not own (an input whose removal failed). The listing comes
// before the job states are read, so a job recorded meanwhile is seen. Missing outputs are
// found when they are opened, not here.
func (b *s3Store) sweep(ctx context.Context, states func(context.Context) (map[string]jobKind, error)) ([]string, error) {
	l := b.scratch
	cutoff := time.Now().Add(-b.grace)
	aborted, err := b.tree.AbortIncomplete(ctx, cutoff)
	for range aborted {
		l.strays()
	}
	if err != nil {
		return nil, err
	}
	var old []store.Object
	err = b.tree.Walk(ctx, func(o store.Object, skip error) error {
		if skip == nil && o.ModTime.Before(cutoff) {
			old = append(old, o)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	all, err := states(ctx)
	if err != nil {
		return nil, err
	}
	for _, o := range old {
		id, name, _ := strings.Cut(o.Path, "/")
		if kind, ok := all[id]; ok && owned(kind)[name] {
			continue
		}
		l.strays()
		if err := b.tree.Remove(ctx, o.Path); err != nil {
			return nil, err
		}
		l.log.Info("removed stray object", slog.String("path", o.Path))
	}
	return nil, nil
}

// objectReader reads an object from its current offset, opening it again (If-Match its ETag)
// after a Seek: http.ServeContent seeks to each range it serves.
type objectReader struct {
	ctx  context.Context
	tree *s3store.Tree
	key  string
	info s3store.Info
	off  int64
	body io.ReadCloser
}

func (o *objectReader) Read(p []byte) (int, error) {
	if o.off >= o.info.Size {
		return 0, io.EOF
	}
	if o.body == nil {
		rc, err := o.tree.OpenAt(o.ctx, o.key, o.off, o.info.ETag)
		if err != nil {
			return 0, err
		}
		o.body = rc
	}
	n, err := o.body.Read(p)
	o.off += int64(n)
	return n, err
}

func (o *objectReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += o.off
	case io.SeekEnd:
		offset += o.info.Size
	}
	if offset < 0 {
		return 0, errors.New("seek before the start of the object")
	}
	if offset != o.off {
		o.closeBody()
		o.off = offset
	}
	return offset, nil
}

func (o *objectReader) closeBody() {
	if o.body != nil {
		o.body.Close()
		o.body = nil
	}
}

func (o *objectReader) Close() error {
	o.closeBody()
	return nil
}

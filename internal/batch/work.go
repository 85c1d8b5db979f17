package batch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"golang.org/x/sync/errgroup"
)

// execute does the work plan left: every undecided file is converted or copied, at most
// Workers engine calls at once. Twice as many files are in flight, so that staging the next
// remote sources and copying plain files overlap the conversions. Sets are finished last.
func (r *runner) execute(ctx context.Context, items []*item, sets []*shardSet) {
	var g errgroup.Group
	g.SetLimit(2 * r.opts.Workers)
	for _, it := range items {
		if ctx.Err() != nil {
			break
		}
		switch {
		case it.done:
			if it.rc != nil && it.fresh && it.rc.Outcome == Converted && it.set == nil {
				r.removeSource(it) // converted by an earlier run, perhaps killed before this
			}
		case it.index != nil: // finished with its set
		default:
			g.Go(func() error {
				r.process(ctx, it)
				if cutShort(ctx, it.file) {
					it.file = File{Path: it.obj.Path} // no outcome: the next run does it, as it has no receipt
					return nil
				}
				if it.set == nil {
					r.finish(it)
				}
				return nil
			})
		}
	}
	g.Wait()
	if ctx.Err() != nil {
		return // a set's shards may be unfinished; the next run completes it
	}
	for _, s := range sets {
		r.finishSet(ctx, s)
	}
	r.removeSources(ctx)
}

// cutShort reports whether f is a failure that the run's interruption may have caused: one
// that is no verdict on the file (internal or canceled), recorded after ctx ended.
func cutShort(ctx context.Context, f File) bool {
	return ctx.Err() != nil && f.Outcome == Failed && f.Error != nil &&
		(f.Error.Type == fault.Internal || f.Error.Type == fault.Canceled)
}

// process converts or copies one file.
func (r *runner) process(ctx context.Context, it *item) {
	defer r.addIn(it.obj.Size)
	if !it.candidate {
		r.copyPlain(ctx, it, "")
		return
	}
	dir := ""
	if r.scratch != "" {
		var err error
		if dir, err = os.MkdirTemp(r.scratch, "file-*"); err != nil {
			it.file = File{Path: it.obj.Path, Outcome: Failed, Error: failure(fault.Wrap(fault.Internal, "", err, "scratch directory"))}
			return
		}
		defer os.RemoveAll(dir)
	}
	srcName, err := r.stage(ctx, it, dir)
	if err != nil {
		it.file = File{Path: it.obj.Path, Outcome: Failed, Error: failure(err)}
		return
	}
	r.convert(ctx, it, srcName, dir)
}

// stage returns a local file name for the source: its own in a local tree, else a copy
// downloaded into dir.
func (r *runner) stage(ctx context.Context, it *item, dir string) (string, error) {
	if name, ok := r.src.LocalPath(it.obj.Path); ok {
		return name, nil
	}
	rd, err := r.src.Open(ctx, it.obj.Path)
	if err != nil {
		return "", fault.Wrap(fault.Internal, "", err, "open %s", it.obj.Path)
	}
	defer rd.Close()
	name := filepath.Join(dir, "source")
	f, err := os.Create(name)
	if err != nil {
		return "", fault.Wrap(fault.Internal, "", fault.PathFree(err), "stage %s", it.obj.Path)
	}
	n, err := io.Copy(f, rd)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != it.obj.Size {
		err = fmt.Errorf("read %d bytes, want %d", n, it.obj.Size)
	}
	if err != nil {
		return "", fault.Wrap(fault.Internal, "", fault.PathFree(err), "stage %s", it.obj.Path)
	}
	return name, nil
}

// convert runs the engine on a candidate (a scan in a dry run) and records the outcome. A
// candidate the engine finds holds no pickle data is copied like a plain file.
func (r *runner) convert(ctx context.Context, it *item, srcName, dir string) {
	opts := r.opts.Convert
	opts.SourceName = it.obj.Path
	// Only an output an earlier run wrote may be replaced in place; DEST is the run's own.
	opts.Overwrite = r.dst != nil || it.rc != nil
	outName, local := r.out.LocalPath(it.out)
	if !local {
		outName = filepath.Join(dir, path.Base(it.out))
		opts.Staging = true // uploaded, then deleted: it need never reach the disk
		if fp, ok := r.out.(filePutter); ok {
			opts.PartSize = fp.FilePartSize(it.obj.Size) // the output's size is about the source's
		}
	}

	// The engine slot is free again once the output is written and verified: its sync, the
	// disk's work, then overlaps the next conversion.
	r.engine <- struct{}{}
	release := sync.OnceFunc(func() { <-r.engine })
	opts.Written = release
	var m *convert.Manifest
	var err error
	switch {
	case !r.writes():
		m, err = r.eng.Scan(ctx, srcName, opts)
	default:
		if r.dst == nil {
			if err = r.state.save(ctx, &receipt{Path: it.obj.Path, Size: it.obj.Size, ModTime: it.obj.ModTime,
				ETag: it.obj.ETag, Outcome: pending, Output: it.out}); err != nil {
				r.setRunErr(fmt.Errorf("write receipt: %w", err))
				break
			}
		}
		if !local {
			m, err = r.eng.Convert(ctx, srcName, outName, opts) // into this file's scratch directory
		} else if err = r.dirs.use(filepath.Dir(outName)); err == nil {
			m, err = r.eng.Convert(ctx, srcName, outName, opts)
			r.dirs.release(filepath.Dir(outName), err != nil)
		}
	}
	release()

	if err != nil {
		r.judged(ctx, it, srcName, m, err)
		return
	}
	it.tensors = make([]shardTensor, len(m.Tensors))
	for i, t := range m.Tensors {
		it.tensors[i] = shardTensor{Name: t.Name, Bytes: t.Bytes}
	}
	it.file = File{Path: it.obj.Path, Outcome: Converted, Output: it.out, SourceSHA256: m.Source.SHA256}
	if !r.writes() {
		return
	}
	if !local {
		if err := r.upload(ctx, it.out, outName, m.Output); err != nil {
			it.file = File{Path: it.obj.Path, Outcome: Failed, SourceSHA256: m.Source.SHA256, Error: failure(err)}
			return
		}
	}
	r.addOut(m.Output.Size)
	it.file.OutputSHA256 = m.Output.SHA256
	if it.set != nil {
		return // its receipt waits for the set's index
	}
	r.saveReceipt(ctx, it, Converted)
	it.tensors = nil // recorded; only a shard's are needed later
	r.removeSource(it)
}

// judged records the outcome of a file the engine would not convert: refused when unsafe,
// copied when it holds no pickle data after all, failed otherwise.
func (r *runner) judged(ctx context.Context, it *item, srcName string, m *convert.Manifest, err error) {
	kind := fault.KindOf(err)
	if noPickleData(it.head, it.obj.Size, m, kind) {
		r.copyPlain(ctx, it, srcName)
		return
	}
	it.file = File{Path: it.obj.Path, Outcome: Failed, Error: failure(err)}
	if m != nil {
		it.file.SourceSHA256 = m.Source.SHA256
	}
	if kind == fault.Unsafe {
		it.file.Outcome = Refused
		if m != nil {
			it.file.Globals = offending(m.Globals)
		}
	}
	if kind != fault.Internal && kind != fault.Canceled {
		r.saveReceipt(ctx, it, it.file.Outcome)
	}
}

// filePutter is a DEST that takes a file with the digests the conversion took as it wrote it
// (s3store.Tree), instead of hashing it again.
type filePutter interface {
	// FilePartSize is the part size of an upload of size bytes, 0 for one request.
	FilePartSize(size int64) int64
	// PutFile is Put of f, sent with its SHA-256 and that of each partSize bytes.
	PutFile(ctx context.Context, path string, f io.ReaderAt, size int64, sha256hex string, partSize int64, partSHA256 []string) error
}

// upload puts the converted staging copy at name into DEST at p, checked against the digests
// the conversion took (the staging copy is not read back: this is its check).
func (r *runner) upload(ctx context.Context, p, name string, out *convert.Output) error {
	f, err := os.Open(name)
	if err != nil {
		return fault.Wrap(fault.Internal, "", fault.PathFree(err), "open converted %s", p)
	}
	defer f.Close()
	if fp, ok := r.out.(filePutter); ok {
		err = fp.PutFile(ctx, p, f, out.Size, out.SHA256, out.PartSize, out.PartSHA256)
	} else {
		err = r.out.Put(ctx, p, f, out.Size, out.SHA256)
	}
	if err != nil {
		return fault.Wrap(fault.Internal, "", err, "upload %s", p)
	}
	return nil
}

// copyPlain copies a plain file to DEST as it is, from the local file name when it is set
// (a staged remote source) or else from SOURCE. With no DEST, a plain file has no outcome,
// but a candidate gets a receipt all the same, so that the next run does not ask the engine
// about it again.
func (r *runner) copyPlain(ctx context.Context, it *item, name string) {
	if r.dst == nil {
		it.listed = false
		if it.candidate {
			r.saveReceipt(ctx, it, Copied)
		}
		return
	}
	it.file = File{Path: it.obj.Path, Outcome: Copied, Output: it.obj.Path}
	if !r.writes() {
		return
	}
	var rd io.ReadCloser
	var err error
	if name != "" {
		rd, err = os.Open(name)
	} else {
		rd, err = r.src.Open(ctx, it.obj.Path)
	}
	if err == nil {
		defer rd.Close()
		h := sha256.New()
		err = r.put(ctx, it.obj.Path, io.TeeReader(rd, h), it.obj.Size)
		it.file.SourceSHA256 = hex.EncodeToString(h.Sum(nil))
		it.file.OutputSHA256 = it.file.SourceSHA256
	}
	if err != nil {
		it.file = File{Path: it.obj.Path, Outcome: Failed, Error: failure(fault.Wrap(fault.Internal, "", fault.PathFree(err), "copy %s", it.obj.Path))}
		return
	}
	r.addOut(it.obj.Size)
	r.saveReceipt(ctx, it, Copied)
}

// put stores a copy in DEST. In a local DEST, its directory counts as in use meanwhile, so
// that a failed conversion beside it does not remove the directory under it.
func (r *runner) put(ctx context.Context, p string, rd io.Reader, size int64) error {
	if name, ok := r.dst.LocalPath(p); ok {
		dir := filepath.Dir(name)
		if err := r.dirs.use(dir); err != nil {
			return err
		}
		defer r.dirs.release(dir, false)
	}
	return r.dst.Put(ctx, p, rd, size, "")
}

// saveReceipt records the file's outcome in the state; a failure to is the run's.
func (r *runner) saveReceipt(ctx context.Context, it *item, outcome string) {
	rc := &receipt{Path: it.obj.Path, Size: it.obj.Size, ModTime: it.obj.ModTime, ETag: it.obj.ETag,
		Outcome: outcome, Output: it.file.Output, SourceSHA256: it.file.SourceSHA256,
		OutputSHA256: it.file.OutputSHA256, Error: it.file.Error, Globals: it.file.Globals}
	if it.file.Output != "" {
		o, err := r.out.Stat(ctx, it.file.Output)
		if err != nil {
			r.setRunErr(fmt.Errorf("stat %s: %w", it.file.Output, err))
			return
		}
		rc.OutputSize = o.Size
	}
	if outcome == Converted {
		rc.Tensors = it.tensors // for the index of a set it is, or will be, a shard of
	}
	if err := r.state.save(ctx, rc); err != nil {
		r.setRunErr(fmt.Errorf("write receipt of %s: %w", it.obj.Path, err))
	}
}

// removeSource marks a converted source for deletion with --remove-source, once its output
// is in place. The deletions wait for the end of the run: a symlink and its target (a Hugging
// Face snapshot and its blob) may both be sources, and the link must be converted before the
// target goes.
func (r *runner) removeSource(it *item) {
	if !r.opts.RemoveSource || !r.writes() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.remove = append(r.remove, it.obj.Path)
}

// removeSources deletes the sources marked by removeSource.
func (r *runner) removeSources(ctx context.Context) {
	for _, p := range r.remove {
		if err := r.src.Remove(ctx, p); err != nil {
			r.setRunErr(fmt.Errorf("remove source %s: %w", p, err))
		}
	}
}

// dirs creates the directories outputs are converted into, and removes those that stay
// empty because the conversion failed, so that DEST has no directory for a refused file.
// Counting the users of a directory keeps one conversion from removing the directory
// another is about to write into.
type dirs struct {
	mu    sync.Mutex
	root  string
	users map[string]int
	// keep leaves every directory in place: the units of a planned run write beside each
	// other from several runners (and nodes), which do not know each other's users.
	keep bool
}

func (d *dirs) use(dir string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.users[dir]++
	return os.MkdirAll(dir, 0o755)
}

// release ends a use of dir, removing it and its parents below the root once they are empty
// and unused when the conversion failed.
func (d *dirs) release(dir string, failed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.users[dir]--
	for failed && !d.keep && d.users[dir] == 0 && dir != d.root && strings.HasPrefix(dir, d.root) {
		if os.Remove(dir) != nil { // not empty: in use, or holding other files
			return
		}
		dir = filepath.Dir(dir)
	}
}

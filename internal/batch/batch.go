package batch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/store"
)

// Options configure a run.
type Options struct {
	// Workers is the most engine calls at once; <= 0 means runtime.NumCPU().
	Workers int
	// DryRun classifies and scans everything and writes nothing at all.
	DryRun bool
	// ScanOnly is a scan of a tree: like DryRun, with no destination and no resume state.
	ScanOnly bool
	// Force redoes every file, whatever the receipts of earlier runs say.
	Force bool
	// RemoveSource deletes a converted checkpoint once its output is written and verified (a
	// sharded set's files once its index is written). Refused, failed and copied files stay.
	RemoveSource bool
	// Include and Exclude are doublestar globs on the slash path relative to SOURCE; a glob
	// without "/" also matches the base name. With Include, only matching files are taken.
	Include, Exclude []string
	// Convert are the options of every conversion or scan (allowed globals, limits).
	Convert convert.Options
	// ScratchDir is where remote sources are staged and outputs for a remote DEST are
	// written before their upload; "" means os.TempDir().
	ScratchDir string
	// Progress hears of the work as it goes; nil for none.
	Progress Progress
}

// Progress hears of a run's work. Its methods are never called concurrently.
type Progress interface {
	// Start is called once, after listing: files is how many files will get an outcome
	// (Finish), bytes the size of the sources that will be read. In place and in a scan,
	// where a plain file has no outcome, files is an upper bound: a file that looked like a
	// pickle and turns out to be text or safetensors gets no Finish, only its Advance.
	Start(files int, bytes int64)
	// Advance adds bytes of source processed.
	Advance(bytes int64)
	// Finish reports one file's outcome.
	Finish(f File)
}

// item is one file of SOURCE on its way through a run.
type item struct {
	obj       store.Object
	head      []byte // the first bytes, which decide whether the engine sees the file
	candidate bool   // for the engine (or, from a receipt, it was a checkpoint)
	out       string // a candidate's output path
	set       *shardSet
	index     *shardSet // this file is the set's index
	rc        *receipt  // the receipt an earlier run left, matching or not
	fresh     bool      // rc holds: the file is as it was, and so is its output
	tensors   []shardTensor
	listed    bool // has an outcome in the report
	done      bool // decided before the conversions start
	file      File
}

type runner struct {
	src, dst store.Tree // dst nil: in place
	out      store.Tree // where outputs go: dst, or src in place
	eng      Engine
	opts     Options
	filter   filter
	state    state
	scratch  string // this run's scratch directory, for remote trees
	engine   chan struct{}
	dirs     dirs // of a local output tree

	mu                sync.Mutex // guards what follows and serializes Progress
	bytesIn, bytesOut int64
	runErr            error
	remove            []string // sources to delete at the end (--remove-source)
}

// Engine converts and scans single files: the sandbox's Runner for untrusted trees, or
// convert.InProcess. On error no file may exist at dst.
type Engine interface {
	Convert(ctx context.Context, src, dst string, opts convert.Options) (*convert.Manifest, error)
	Scan(ctx context.Context, src string, opts convert.Options) (*convert.Manifest, error)
}

// Run converts the tree src into dst (nil: in place, beside each source) with eng, which
// must be the sandbox for untrusted trees, and returns the report. Per-file problems are
// outcomes in the report; the error is for the run itself (SOURCE cannot be listed, the
// state cannot be written, the context ended), with the report of what was done when there
// is one.
func Run(ctx context.Context, src, dst store.Tree, eng Engine, opts Options) (*Report, error) {
	r, rep, err := newRunner(src, dst, eng, opts)
	if err != nil {
		return nil, err
	}
	if r.writes() {
		lk, err := lock(r.out)
		if err != nil {
			return nil, err
		}
		if lk != nil {
			defer lk.Close()
		}
		if err := cleanStray(r.out, dst == nil); err != nil {
			return nil, fmt.Errorf("remove the temporary files of an earlier run: %w", err)
		}
	}
	if err := r.makeScratch(); err != nil {
		return nil, err
	}
	defer r.removeScratch()

	items, err := r.list(ctx)
	if err != nil {
		return nil, err
	}
	sets := r.plan(ctx, items)
	r.start(items)
	r.execute(ctx, items, sets)
	return r.finishReport(ctx, rep, items)
}

// Validate checks what a run refuses before it starts: a glob that is not one, conversion
// options that are not safe.
func (o Options) Validate() error {
	_, err := o.filter()
	return err
}

// filter checks the options and returns the run's filter.
func (o Options) filter() (filter, error) {
	if err := o.Convert.Validate(); err != nil {
		return filter{}, err
	}
	return newFilter(o.Include, o.Exclude)
}

// newRunner checks the options and trees of a run and returns its runner and the report's
// header.
func newRunner(src, dst store.Tree, eng Engine, opts Options) (*runner, *Report, error) {
	if opts.Workers <= 0 {
		opts.Workers = runtime.NumCPU()
	}
	if opts.ScanOnly && dst != nil {
		return nil, nil, errors.New("a scan has no destination")
	}
	flt, err := opts.filter()
	if err != nil {
		return nil, nil, err
	}
	if dst != nil && overlap(src, dst) {
		return nil, nil, fmt.Errorf("destination %s and source %s overlap: convert in place by giving no destination, or choose a destination outside the source", dst, src)
	}
	r := &runner{src: src, dst: dst, out: dst, eng: eng, opts: opts, filter: flt,
		engine: make(chan struct{}, opts.Workers)}
	if dst == nil {
		r.out = src
	}
	r.dirs = dirs{root: localRoot(r.out), users: map[string]int{}}
	rep := &Report{ConverterVersion: convert.Version, Source: src.String(), DryRun: opts.DryRun || opts.ScanOnly,
		StartedAt: time.Now().UTC(), Files: []File{}}
	if !opts.ScanOnly {
		rep.Destination = r.out.String()
		r.state = state{tree: r.out, write: r.writes(), options: optionsPrint(opts.Convert)}
	}
	return r, rep, nil
}

// finishReport completes rep with the outcomes of items and the bytes counted, and returns it
// with the run's error.
func (r *runner) finishReport(ctx context.Context, rep *Report, items []*item) (*Report, error) {
	rep.Interrupted = ctx.Err() != nil
	for _, it := range items {
		switch {
		case !it.listed:
		case it.file.Outcome != "":
			rep.Files = append(rep.Files, it.file)
		case rep.Interrupted:
			rep.Summary.Left++
		}
	}
	rep.Summary.BytesIn, rep.Summary.BytesOut = r.bytesIn, r.bytesOut
	rep.summarize()
	rep.FinishedAt = time.Now().UTC()
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	return rep, r.runErr
}

// writes reports whether the run writes anything.
func (r *runner) writes() bool { return !r.opts.DryRun && !r.opts.ScanOnly }

// overlap reports whether one tree contains the other.
func overlap(a, b store.Tree) bool {
	ra, rb := localRoot(a), localRoot(b)
	if (ra == "") != (rb == "") {
		return false
	}
	if ra == "" {
		ra, rb = strings.TrimSuffix(a.String(), "/"), strings.TrimSuffix(b.String(), "/")
	}
	within := func(x, y string) bool {
		rel, err := filepath.Rel(y, x)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
	}
	return within(ra, rb) || within(rb, ra)
}

// makeScratch creates this run's scratch directory when a tree is remote.
func (r *runner) makeScratch() error {
	_, srcLocal := r.src.LocalPath(StateDir)
	_, outLocal := r.out.LocalPath(StateDir)
	if srcLocal && (outLocal || !r.writes()) {
		return nil
	}
	dir, err := os.MkdirTemp(r.opts.ScratchDir, "converter-batch-*")
	if err != nil {
		return fmt.Errorf("create scratch directory: %w", err)
	}
	r.scratch = dir
	return nil
}

func (r *runner) removeScratch() {
	if r.scratch != "" {
		os.RemoveAll(r.scratch)
	}
}

func (r *runner) setRunErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.runErr == nil {
		r.runErr = err
	}
}

func (r *runner) addIn(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bytesIn += n
	if r.opts.Progress != nil {
		r.opts.Progress.Advance(n)
	}
}

func (r *runner) addOut(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bytesOut += n
}

// finish reports a listed file's outcome to Progress.
func (r *runner) finish(it *item) {
	if !it.listed || it.file.Outcome == "" || r.opts.Progress == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opts.Progress.Finish(it.file)
}

// start tells Progress the work ahead and the outcomes already decided.
func (r *runner) start(items []*item) {
	if r.opts.Progress == nil {
		return
	}
	var files int
	var bytes int64
	for _, it := range items {
		if it.listed {
			files++
		}
		if !it.done {
			bytes += it.obj.Size
		}
	}
	r.opts.Progress.Start(files, bytes)
	for _, it := range items {
		if it.done && it.set == nil && it.index == nil {
			r.finish(it)
		}
	}
}

package batch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/store"
	"github.com/ptsafe/converter/internal/torchzip"
	"golang.org/x/sync/errgroup"
)

// list walks SOURCE. Entries Walk does not follow and files the filters leave out are
// ignored; the state directory is not part of SOURCE.
func (r *runner) list(ctx context.Context) ([]*item, error) {
	var items []*item
	err := r.src.Walk(ctx, func(o store.Object, err error) error {
		if o.Path == StateDir || strings.HasPrefix(o.Path, StateDir+"/") || isStray(o.Path) {
			return nil // a dry run in place finds what a killed run left, and cleans nothing
		}
		it := &item{obj: o, listed: true}
		it.file.Path = o.Path
		var skip *store.SkipError
		var unread *store.ReadError
		switch {
		case errors.As(err, &skip):
			it.decide(File{Outcome: Ignored, Detail: skip.Reason})
		case errors.As(err, &unread):
			it.decide(File{Outcome: Failed, Error: failure(fault.Wrap(fault.Internal, "", unread.Err, "read %s", o.Path))})
		case err != nil:
			return err
		default:
			if why := r.filter.excluded(o.Path); why != "" {
				it.decide(File{Outcome: Ignored, Detail: why})
			}
		}
		items = append(items, it)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", r.src, err)
	}
	return items, nil
}

// decide gives the item its outcome before any conversion starts.
func (it *item) decide(f File) {
	f.Path = it.obj.Path
	it.file, it.done = f, true
}

// plan decides what it can before any file is converted: the receipts of earlier runs, the
// first bytes of the rest, the sharded sets, output names and their collisions. It returns the
// sets.
func (r *runner) plan(ctx context.Context, items []*item) []*shardSet {
	byPath := map[string]*item{}
	for _, it := range items {
		byPath[it.obj.Path] = it
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(2 * r.opts.Workers)
	for _, it := range items {
		if !it.done {
			g.Go(func() error { r.prepare(gctx, it); return nil })
		}
	}
	g.Wait()

	// In place, the outputs of earlier runs are in SOURCE: they are not files to convert,
	// copy or collide with.
	ours := map[string]bool{}
	if r.dst == nil {
		for _, it := range items {
			if it.rc != nil && it.rc.Output != "" {
				ours[it.rc.Output] = true
			}
		}
		for _, it := range items {
			if ours[it.obj.Path] {
				it.done, it.listed = true, false
			}
		}
	}
	sets := r.findSets(ctx, items, byPath)
	for _, it := range items {
		if it.set == nil && it.rc != nil {
			it.rc.Tensors = nil // only a shard's are needed, for its set's index
		}
	}
	r.resolveOutputs(items, sets, byPath, ours)
	for _, it := range items {
		switch {
		case it.done || it.index != nil:
		case it.fresh:
			r.fromReceipt(it)
		case !it.candidate && r.dst == nil:
			it.done, it.listed = true, false // a plain file with nowhere to go
		}
	}
	return sets
}

// resolveOutputs names every candidate's output and settles collisions: checkpoints whose
// outputs share a name all fail (whichever came first, the other would be lost), and a
// checkpoint whose output name is already a file of SOURCE (a repository with both
// pytorch_model.bin and model.safetensors) is skipped, that file being the one DEST gets.
func (r *runner) resolveOutputs(items []*item, sets []*shardSet, byPath map[string]*item, ours map[string]bool) {
	byOut := map[string][]*item{}
	for _, it := range items {
		if it.done || !it.candidate || it.index != nil {
			continue
		}
		dir, base := path.Split(it.obj.Path)
		it.out = dir + convert.OutputName(base)
		byOut[it.out] = append(byOut[it.out], it)
	}
	for _, s := range sets {
		if !s.index.done {
			byOut[s.out] = append(byOut[s.out], s.index)
		}
	}
	for out, group := range byOut {
		if len(group) > 1 {
			var names []string
			for _, it := range group {
				names = append(names, it.obj.Path)
			}
			slices.Sort(names)
			err := fault.New(fault.Unsupported, "", "%s all convert to %s", strings.Join(names, ", "), out)
			for _, it := range group {
				it.decide(File{Outcome: Failed, Error: failure(err)})
			}
			continue
		}
		if byPath[out] != nil && !ours[out] {
			group[0].decide(File{Outcome: Skipped, Detail: "SOURCE already has " + out + ", copied as it is"})
		}
	}
}

// prepare reads the file's receipt, and its first bytes unless the receipt still holds.
func (r *runner) prepare(ctx context.Context, it *item) {
	it.rc = r.state.load(ctx, it.obj.Path)
	if rc := it.rc; !r.opts.Force && rc.matches(it.obj, r.state.options) {
		switch rc.Outcome {
		case Converted, Copied:
			it.fresh = rc.Output == "" || r.intact(ctx, rc)
		case Refused, Failed:
			it.fresh = true
		}
	}
	if it.fresh {
		it.candidate = it.rc.Outcome != Copied
		return
	}
	head, err := r.readHead(ctx, it.obj.Path)
	if err != nil {
		it.decide(File{Outcome: Failed, Error: failure(fault.Wrap(fault.Internal, "", fault.PathFree(err), "read %s", it.obj.Path))})
		return
	}
	// Keep no more than noPickleData needs, per file of a large store.
	it.head, it.candidate = bytes.Clone(head[:min(len(head), headKept)]), isCandidate(head)
}

// intact reports whether the output a receipt names is still there with its size.
func (r *runner) intact(ctx context.Context, rc *receipt) bool {
	o, err := r.out.Stat(ctx, rc.Output)
	return err == nil && o.Size == rc.OutputSize
}

func (r *runner) readHead(ctx context.Context, p string) ([]byte, error) {
	rd, err := r.src.Open(ctx, p)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	head := make([]byte, torchzip.SniffLen)
	n, err := io.ReadFull(rd, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return head[:n], nil
}

// fromReceipt gives a file the outcome its matching receipt records: work done is skipped,
// a refusal or failure is reported again without another scan. A plain file in place has no
// outcome.
func (r *runner) fromReceipt(it *item) {
	rc := it.rc
	switch rc.Outcome {
	case Converted, Copied:
		if rc.Output == "" {
			it.done, it.listed = true, false
			return
		}
		it.decide(File{Outcome: Skipped, Output: rc.Output, SourceSHA256: rc.SourceSHA256, OutputSHA256: rc.OutputSHA256})
		it.tensors = rc.Tensors
	default:
		it.decide(File{Outcome: rc.Outcome, SourceSHA256: rc.SourceSHA256, Error: rc.Error, Globals: rc.Globals})
	}
}

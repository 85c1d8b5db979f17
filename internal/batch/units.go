package batch

import (
	"context"
	"errors"
	"fmt"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/store"
)

// A run can also be planned in one place and worked in many (the service's batches, whose
// units are queue entries any node takes): Plan lists SOURCE and decides what it can, as Run
// does before converting anything, and cuts the work left into Units; RunUnit does one. Both
// run the same code as Run, on the same receipts, so that a CLI run and a planned one resume
// each other's work.

// Unit is one piece of a planned run that one worker does whole: a checkpoint to convert,
// plain files to copy, or a sharded set, whose shards and index must be done together for
// the index to be written. It is plain JSON, to travel through a queue, and holds no secret:
// the files' names and a few bytes each, plus, for a set, the name of every tensor its index
// maps, so a set's unit grows with its tensor count.
type Unit struct {
	// Items are the files, as planning left them. In a set's unit, the first is the index.
	Items []UnitItem `json:"items"`
	// Set, when not nil, makes the unit a sharded set.
	Set *UnitSet `json:"set,omitempty"`
}

// UnitItem is one file of a Unit, with what planning learnt of it.
type UnitItem struct {
	Object    store.Object  `json:"object"`
	Head      []byte        `json:"head,omitempty"`
	Candidate bool          `json:"candidate,omitempty"`
	Out       string        `json:"out,omitempty"`
	Receipt   *receipt      `json:"receipt,omitempty"`
	Fresh     bool          `json:"fresh,omitempty"`
	Tensors   []shardTensor `json:"tensors,omitempty"`
	Listed    bool          `json:"listed,omitempty"`
	Done      bool          `json:"done,omitempty"`
	File      File          `json:"file"`
}

// UnitSet is what a sharded set's unit knows of the set besides its files.
type UnitSet struct {
	Missing []string           `json:"missing,omitempty"`
	Problem *convert.ErrorInfo `json:"problem,omitempty"`
	Out     string             `json:"out"`
}

// Planned is a run planned by Plan and not yet worked.
type Planned struct {
	// Report is the run's header and the outcomes decided without converting anything
	// (ignored files, refusals and conversions an earlier run recorded, name collisions),
	// counted in its summary.
	Report *Report
	// Units are the work left.
	Units []Unit
}

// Plain files are copied in units of up to plainUnitFiles files and plainUnitBytes bytes, so
// that a tree of many small files is not as many queue entries.
const (
	plainUnitFiles = 64
	plainUnitBytes = 1 << 30
)

// ErrRemoveSource refuses Options.RemoveSource to a planned run: its units run apart, so a
// symlink's source and its target (a snapshot and its blob) could be removed before the
// other is converted.
var ErrRemoveSource = errors.New("a planned run cannot remove sources")

// Plan lists src and decides what it can, as Run does before its first conversion (removing
// what a killed run left in a local dst), and returns the decided outcomes and the units of
// work left, each for RunUnit with the same trees, engine and options.
func Plan(ctx context.Context, src, dst store.Tree, eng Engine, opts Options) (*Planned, error) {
	if opts.RemoveSource {
		return nil, ErrRemoveSource
	}
	r, rep, err := newRunner(src, dst, eng, opts)
	if err != nil {
		return nil, err
	}
	if r.writes() {
		if err := cleanStray(r.out, dst == nil); err != nil {
			return nil, fmt.Errorf("remove the temporary files of an earlier run: %w", err)
		}
	}
	items, err := r.list(ctx)
	if err != nil {
		return nil, err
	}
	r.plan(ctx, items) // each set becomes its index's unit
	var (
		units []Unit
		plain Unit
		bytes int64
	)
	for _, it := range items {
		switch {
		case it.index != nil:
			units = append(units, setUnit(it.index))
		case it.set != nil: // in its set's unit
		case it.done:
			if it.listed && it.file.Outcome != "" {
				rep.Files = append(rep.Files, it.file)
			}
		case it.candidate:
			units = append(units, Unit{Items: []UnitItem{it.unitItem()}})
		default:
			if len(plain.Items) == plainUnitFiles || bytes+it.obj.Size > plainUnitBytes && len(plain.Items) > 0 {
				units, plain, bytes = append(units, plain), Unit{}, 0
			}
			plain.Items = append(plain.Items, it.unitItem())
			bytes += it.obj.Size
		}
	}
	if len(plain.Items) > 0 {
		units = append(units, plain)
	}
	rep.summarize()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &Planned{Report: rep, Units: units}, nil
}

// RunUnit does one unit of a run Plan planned, with the same trees, engine and options, and
// returns the report of its files: their outcomes, and the bytes read and written. Per-file
// problems are outcomes; the error is for the unit itself (a receipt that cannot be written,
// the context ended). Units may run at once, here and elsewhere: unlike Run, a unit leaves in
// a local DEST the directory of a file that failed, however empty, lest it remove the
// directory another unit is writing into.
func RunUnit(ctx context.Context, src, dst store.Tree, eng Engine, opts Options, u Unit) (*Report, error) {
	if opts.RemoveSource {
		return nil, ErrRemoveSource
	}
	r, rep, err := newRunner(src, dst, eng, opts)
	if err != nil {
		return nil, err
	}
	r.dirs.keep = true
	if err := r.makeScratch(); err != nil {
		return nil, err
	}
	defer r.removeScratch()
	items, sets := u.decode()
	r.execute(ctx, items, sets)
	return r.finishReport(ctx, rep, items)
}

func (it *item) unitItem() UnitItem {
	return UnitItem{Object: it.obj, Head: it.head, Candidate: it.candidate, Out: it.out, Receipt: it.rc,
		Fresh: it.fresh, Tensors: it.tensors, Listed: it.listed, Done: it.done, File: it.file}
}

// setUnit is the unit of the set s: its index, then its shards.
func setUnit(s *shardSet) Unit {
	u := Unit{Items: []UnitItem{s.index.unitItem()}, Set: &UnitSet{Missing: s.missing, Out: s.out}}
	if s.problem != nil {
		u.Set.Problem = failure(s.problem)
	}
	for _, sh := range s.shards {
		u.Items = append(u.Items, sh.unitItem())
	}
	return u
}

// decode rebuilds the items of u, and its set.
func (u Unit) decode() ([]*item, []*shardSet) {
	items := make([]*item, len(u.Items))
	for i, ui := range u.Items {
		items[i] = &item{obj: ui.Object, head: ui.Head, candidate: ui.Candidate, out: ui.Out, rc: ui.Receipt,
			fresh: ui.Fresh, tensors: ui.Tensors, listed: ui.Listed, done: ui.Done, file: ui.File}
	}
	if u.Set == nil || len(items) == 0 {
		return items, nil
	}
	s := &shardSet{index: items[0], shards: items[1:], missing: u.Set.Missing, out: u.Set.Out}
	if p := u.Set.Problem; p != nil {
		s.problem = fault.New(p.Type, "", "%s", p.Detail)
	}
	s.index.index = s
	for _, sh := range s.shards {
		sh.set = s
	}
	return items, []*shardSet{s}
}

package convert

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/safetensors"
	"github.com/ptsafe/converter/internal/torchzip"
	"github.com/ptsafe/converter/internal/unpickler"
)

// plan is what convert decided to write, before any tensor byte is read.
type plan struct {
	container *torchzip.Container
	lim       limits.Limits
	// tensors are in output order; layout gives their offsets.
	tensors []planned
	layout  *safetensors.Layout
	swap    bool // source data is big-endian
	// scratchDir is where deflated records that need random access are inflated.
	scratchDir string
	// inflate counts, for each deflated record that is inflated to a scratch file, the tensors
	// that read it: the file is made at the first and released after the last.
	inflate map[*torchzip.Record]int
	// scratchBytes is what those scratch files take in all.
	scratchBytes int64
	// staging is Options.Staging: the output is neither read back nor synced.
	staging bool
	// partSize is Options.PartSize.
	partSize int64
}

// planned is one output tensor and where its bytes come from.
type planned struct {
	name   string
	ref    *unpickler.TensorRef
	record *torchzip.Record
}

// open reads the container in f (an input from OpenInput, which the caller closes), judges it
// and, when it is safe, builds the plan. The manifest is filled as far as the file could be
// read, also on failure, so that scan can report it.
func open(f *os.File, opts Options, m *Manifest) (*plan, error) {
	lim := opts.Limits.OrDefault()
	pol, err := policy(opts.AllowGlobals)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", err, "stat input")
	}
	m.Source.Size = st.Size()
	c, err := torchzip.Open(f, st.Size(), lim, pol)
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", err, "read input")
	}
	m.Source.Container = string(c.Kind)
	m.Source.Prefix = c.Prefix
	m.Source.ByteOrder = c.ByteOrder
	if c.Main != nil {
		m.Source.Protocol = c.Main.Scan.Protocol
	} else if len(c.Streams) > 0 {
		m.Source.Protocol = c.Streams[0].Scan.Protocol
	}
	globals := c.Globals()
	for _, g := range globals {
		m.Globals = append(m.Globals, GlobalRef{Entry: g.Entry, Global: g.Global})
	}
	if err := judge(c, globals); err != nil {
		return nil, err
	}
	return build(c, opts, lim, pol, m)
}

// policy builds the global policy, admitting --allow-global entries as inert records.
func policy(extra []string) (*unpickler.Policy, error) {
	pol := &unpickler.Policy{Extra: map[string]bool{}}
	for _, q := range extra {
		i := strings.LastIndexByte(q, '.')
		if i <= 0 || i == len(q)-1 {
			return nil, fmt.Errorf("--allow-global %q: want MODULE.NAME", q)
		}
		if pol.Classify(q[:i], q[i+1:]) == unpickler.Dangerous {
			return nil, fmt.Errorf("--allow-global %q: a known-dangerous global cannot be allowed", q)
		}
		pol.Extra[q] = true
	}
	return pol, nil
}

// judge returns the verdict error for a container: dangerous globals anywhere win, then the
// refusal of TorchScript, then unknown globals and refused opcodes, then structural problems.
func judge(c *torchzip.Container, globals []torchzip.EntryGlobal) error {
	var dangerous, unknown []torchzip.EntryGlobal
	for _, g := range globals {
		switch g.Class {
		case unpickler.Dangerous:
			dangerous = append(dangerous, g)
		case unpickler.Unknown:
			unknown = append(unknown, g)
		}
	}
	if len(dangerous) > 0 {
		return globalsError("known-dangerous", dangerous)
	}
	if c.Kind == torchzip.TorchScript {
		return c.Problem
	}
	if len(unknown) > 0 {
		return globalsError("not allowed", unknown)
	}
	for _, s := range c.Streams {
		if s.Err != nil && fault.KindOf(s.Err) == fault.Unsafe {
			return s.Err
		}
	}
	if c.Problem != nil {
		return c.Problem
	}
	for _, s := range c.Streams {
		if s.Err != nil {
			return s.Err
		}
	}
	return nil
}

func globalsError(what string, gs []torchzip.EntryGlobal) error {
	first := gs[0]
	e := fault.At(fault.Unsafe, first.Entry, first.Offset, "global %s is %s", first.Qualified(), what)
	if len(gs) > 1 {
		var more []string
		for _, g := range gs[1:] {
			where := fmt.Sprintf("@%d", g.Offset)
			if g.Entry != first.Entry {
				where = " in " + g.Entry + where
			}
			more = append(more, g.Qualified()+where)
		}
		e.Msg += fmt.Sprintf(" (also: %s)", strings.Join(more, ", "))
	}
	return e
}

// build runs the restricted VM over the main pickle and plans the output.
func build(c *torchzip.Container, opts Options, lim limits.Limits, pol *unpickler.Policy, m *Manifest) (*plan, error) {
	pids := &unpickler.PersistentIDs{Legacy: c.Kind == torchzip.Legacy}
	root, err := unpickler.Load(c.Main.Raw, c.Main.Entry, pol, pids, lim)
	if err != nil {
		return nil, err
	}
	if c.Kind == torchzip.Legacy {
		if err := locateLegacy(c, pol, pids, lim); err != nil {
			return nil, err
		}
	}
	tree, err := unpickler.Flatten(root, opts.Select, c.Main.Entry, lim)
	if err != nil {
		return nil, err
	}
	for i, d := range tree.Dropped {
		if i == lim.MaxDroppedListed {
			m.DroppedMore = len(tree.Dropped) - i
			break
		}
		path := d.Path
		if d.Type != "not selected" {
			path = joinPath(tree.Selected, d.Path)
		}
		m.Dropped = append(m.Dropped, Dropped{Path: path, Type: d.Type})
	}
	p := &plan{container: c, lim: lim, swap: c.ByteOrder == "big"}
	type viewKey struct {
		storage string
		dt      dtype.DType
		offset  int64
		shape   string
		stride  string
	}
	kept := make(map[viewKey]string, len(tree.Tensors))
	names := make([]unpickler.Named, len(tree.Tensors))
	copy(names, tree.Tensors)
	slices.SortFunc(names, func(a, b unpickler.Named) int { return strings.Compare(a.Name, b.Name) })
	budget := lim.OutputBudget(m.Source.Size)
	var total int64
	entries := make([]safetensors.Entry, 0, len(names))
	plans := make([]planned, 0, len(names)) // entries' tensors
	meta := map[string]string{"format": "pt"}
	for _, n := range names {
		t := n.Tensor
		if t.Unsupported != "" {
			return nil, fault.New(fault.Unsupported, c.Main.Entry, "tensor %q: %s", n.Name, t.Unsupported)
		}
		rec, err := c.Storage(t.Storage.Key)
		if err != nil {
			return nil, err
		}
		if rec.Size != t.Storage.NBytes {
			return nil, fault.New(fault.Malformed, rec.Entry, "record holds %d bytes, the pickle declares %d for storage %q", rec.Size, t.Storage.NBytes, t.Storage.Key)
		}
		k := viewKey{t.Storage.Key, t.DType, t.Offset, intsKey(t.Shape), intsKey(t.Stride)}
		if keep, ok := kept[k]; ok && n.Name != "format" {
			m.Aliases[n.Name] = keep
			meta[n.Name] = keep
			continue
		}
		kept[k] = n.Name
		// A broadcast (stride-0) view counts at the size it is written at, not its storage's.
		nbytes := t.Numel() * int64(t.DType.Size())
		if nbytes > math.MaxInt64-total || total+nbytes > lim.MaxOutputBytes {
			return nil, fault.New(fault.Limit, "", "output exceeds limit max-output-bytes %d", lim.MaxOutputBytes)
		}
		total += nbytes
		if total > budget {
			return nil, overBudget(fmt.Sprintf("output of at least %d tensor bytes", total), m.Source.Size, lim)
		}
		entries = append(entries, safetensors.Entry{Name: n.Name, DType: t.DType, Shape: t.Shape})
		plans = append(plans, planned{name: n.Name, ref: t, record: rec})
	}
	if len(entries) == 0 {
		return nil, fault.New(fault.Unsupported, c.Main.Entry, "checkpoint holds no tensors")
	}
	layout, err := safetensors.Plan(meta, entries, lim.MaxHeaderBytes)
	if err != nil {
		return nil, err
	}
	if layout.Size > budget {
		return nil, overBudget(fmt.Sprintf("output of %d bytes", layout.Size), m.Source.Size, lim)
	}
	p.layout = layout
	p.tensors = make([]planned, 0, len(layout.Tensors))
	m.Tensors = make([]Tensor, 0, len(layout.Tensors))
	for k, lt := range layout.Tensors {
		pl := plans[layout.Entries[k]]
		p.tensors = append(p.tensors, pl)
		m.Tensors = append(m.Tensors, Tensor{Name: lt.Name, DType: lt.DType.String(), Shape: nonNil(lt.Shape),
			Bytes: lt.End - lt.Begin, Storage: pl.ref.Storage.Key})
	}
	if err := p.planScratch(budget, m.Source.Size); err != nil {
		return nil, err
	}
	return p, nil
}

// intsKey encodes a shape or stride as a map key.
func intsKey(v []int64) string {
	b := make([]byte, 0, 8*len(v))
	for _, x := range v {
		b = binary.AppendVarint(b, x)
	}
	return string(b)
}

// overBudget is the limit fault for planned output or scratch bytes over
// max-output-ratio x the input size + max-output-slack, refused before any byte is written.
func overBudget(what string, input int64, lim limits.Limits) error {
	return fault.New(fault.Limit, "", "%s exceeds limit max-output-ratio %d x the %d-byte input + max-output-slack %d (%d bytes)",
		what, lim.MaxOutputRatio, input, lim.MaxOutputSlack, lim.OutputBudget(input))
}

// planScratch decides how each deflated record is read. A record that one tensor reads as a
// contiguous run streams, inflated once on the way; any other (several tensors, or a strided
// view) is inflated once into a scratch file that every view of it then reads at random, so
// that the work stays linear however many views share a record. The scratch files together
// may take at most budget bytes.
func (p *plan) planScratch(budget, input int64) error {
	readers := map[*torchzip.Record]int{}
	stream := map[*torchzip.Record]bool{} // for a record with one reader: whether it streams
	for _, t := range p.tensors {
		if t.record.Stored() || t.ref.Numel() == 0 {
			continue
		}
		readers[t.record]++
		stream[t.record] = contiguous(t.ref)
	}
	p.inflate = map[*torchzip.Record]int{}
	for _, t := range p.tensors {
		rec := t.record
		n := readers[rec]
		if n == 0 || n == 1 && stream[rec] || p.inflate[rec] > 0 {
			continue
		}
		if rec.Size > budget-p.scratchBytes {
			return overBudget(fmt.Sprintf("inflating record %q (%d bytes) after %d scratch bytes", rec.Entry, rec.Size, p.scratchBytes), input, p.lim)
		}
		p.inflate[rec] = n
		p.scratchBytes += rec.Size
	}
	return nil
}

// locateLegacy reads the sorted key list and finds every storage in the raw area.
func locateLegacy(c *torchzip.Container, pol *unpickler.Policy, pids *unpickler.PersistentIDs, lim limits.Limits) error {
	v, err := unpickler.Load(c.Keys.Raw, c.Keys.Entry, pol, &unpickler.PersistentIDs{}, lim)
	if err != nil {
		return err
	}
	keys, err := unpickler.StringList(v)
	if err != nil {
		return fault.Wrap(fault.Malformed, c.Keys.Entry, err, "storage key list")
	}
	storages := pids.Storages()
	if len(keys) != len(storages) {
		return fault.New(fault.Malformed, c.Keys.Entry, "key list names %d storages, the checkpoint references %d", len(keys), len(storages))
	}
	return c.LocateLegacy(keys, func(key string) (int64, int64, bool) {
		s, ok := storages[key]
		if !ok {
			return 0, 0, false
		}
		return s.NBytes, int64(s.DType.Size()), true
	})
}

func joinPath(prefix, p string) string {
	if prefix == "" {
		return p
	}
	return prefix + "." + p
}

func nonNil(s []int64) []int64 {
	if s == nil {
		return []int64{}
	}
	return s
}

package batch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
)

// indexSuffix ends the name of a sharded checkpoint's index (pytorch_model.bin.index.json).
const indexSuffix = ".bin.index.json"

// maxIndexBytes bounds the read of an index: real ones are a few hundred KiB.
const maxIndexBytes = 64 << 20

// shardSet is a sharded checkpoint: its index and the shards the index's weight_map names.
type shardSet struct {
	index   *item
	shards  []*item  // present in SOURCE, in lexical order
	missing []string // named but not in SOURCE
	problem error    // the index cannot be read or names a bad path
	out     string   // the new index's path
}

// shardTensor is one tensor of a converted shard, as the new index needs it.
type shardTensor struct {
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
}

// indexOutputName is the Hugging Face name of the safetensors index for the index at p:
// pytorch_model.bin.index.json -> model.safetensors.index.json, the shards' own rule.
func indexOutputName(p string) string {
	dir, base := path.Split(p)
	return dir + strings.TrimSuffix(convert.OutputName(strings.TrimSuffix(base, ".index.json")), ".safetensors") +
		".safetensors.index.json"
}

// readIndex reads the index at it (at most maxIndexBytes) and returns the shard paths its
// weight_map names, relative to SOURCE, sorted, and the index's SHA-256.
func (r *runner) readIndex(ctx context.Context, it *item) ([]string, string, error) {
	rd, err := r.src.Open(ctx, it.obj.Path)
	if err != nil {
		return nil, "", fault.Wrap(fault.Internal, it.obj.Path, fault.PathFree(err), "open index")
	}
	defer rd.Close()
	h := sha256.New()
	b, err := io.ReadAll(io.TeeReader(io.LimitReader(rd, maxIndexBytes+1), h))
	if err != nil {
		return nil, "", fault.Wrap(fault.Internal, it.obj.Path, err, "read index")
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if len(b) > maxIndexBytes {
		return nil, sum, fault.New(fault.Limit, it.obj.Path, "index larger than %d bytes", maxIndexBytes)
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, sum, fault.Wrap(fault.Malformed, it.obj.Path, err, "index is not JSON with a weight_map")
	}
	if len(idx.WeightMap) == 0 {
		return nil, sum, fault.New(fault.Malformed, it.obj.Path, "index has an empty weight_map")
	}
	dir := path.Dir(it.obj.Path)
	var shards []string
	for _, f := range idx.WeightMap {
		p := path.Join(dir, f)
		if !fs.ValidPath(p) || p == "." || path.IsAbs(f) {
			return nil, sum, fault.New(fault.Malformed, it.obj.Path, "weight_map names %q, outside the index's directory tree", f)
		}
		shards = append(shards, p)
	}
	slices.Sort(shards)
	return slices.Compact(shards), sum, nil
}

// findSets makes a shardSet of every index among items and ties each shard to its set. A
// shard that two indexes name fails both sets: neither index can be written for it alone.
func (r *runner) findSets(ctx context.Context, items []*item, byPath map[string]*item) []*shardSet {
	var sets []*shardSet
	for _, it := range items {
		if it.done || !strings.HasSuffix(it.obj.Path, indexSuffix) {
			continue
		}
		s := &shardSet{index: it, out: indexOutputName(it.obj.Path)}
		it.index = s
		names, sum, err := r.readIndex(ctx, it)
		it.file.SourceSHA256 = sum
		s.problem = err
		for _, p := range names {
			sh, ok := byPath[p]
			if !ok || sh.done {
				s.missing = append(s.missing, p)
				continue
			}
			if sh.set != nil {
				dup := fault.New(fault.Malformed, "", "shard %s is named by both %s and %s", p, sh.set.index.obj.Path, it.obj.Path)
				sh.set.problem, s.problem = dup, dup
			}
			sh.set = s
			s.shards = append(s.shards, sh)
		}
		sets = append(sets, s)
	}
	return sets
}

// finish writes the set's new index once its shards are converted, or fails the set: a
// missing or unconverted shard, or a tensor in two shards. A failed set leaves no output of
// this run at any of its names.
func (r *runner) finishSet(ctx context.Context, s *shardSet) {
	it := s.index
	defer r.finish(it)
	for _, sh := range s.shards {
		defer r.finish(sh)
	}
	if it.done { // SOURCE has the output already, or a collision
		return
	}
	r.addIn(it.obj.Size) // read by findSets
	weights, total, err := s.check()
	if err != nil {
		r.failSet(ctx, s, err)
		return
	}
	rc := it.rc
	redone := slices.ContainsFunc(s.shards, func(sh *item) bool { return sh.file.Outcome != Skipped })
	if !redone && !r.opts.Force && rc.matches(it.obj, r.state.options) && rc.Outcome == Converted && r.intact(ctx, rc) {
		it.file = File{Path: it.obj.Path, Outcome: Skipped, Output: rc.Output, SourceSHA256: rc.SourceSHA256, OutputSHA256: rc.OutputSHA256}
		s.removeSources(r)
		return
	}
	it.file.Outcome, it.file.Output = Converted, s.out
	if !r.writes() {
		return
	}
	b := mustJSON(map[string]any{"metadata": map[string]int64{"total_size": total}, "weight_map": weights})
	sum, err := putBytes(ctx, r.out, s.out, b)
	if err != nil {
		r.failSet(ctx, s, fault.Wrap(fault.Internal, "", err, "write %s", s.out))
		return
	}
	r.addOut(int64(len(b)))
	it.file.OutputSHA256 = sum
	for _, sh := range s.shards {
		if sh.file.Outcome == Converted {
			r.saveReceipt(ctx, sh, Converted)
		}
	}
	r.saveReceipt(ctx, it, Converted)
	s.removeSources(r)
}

// check returns the new index's weight_map (tensor -> shard output, relative to the index)
// and total size, or why the set cannot have one.
func (s *shardSet) check() (map[string]string, int64, error) {
	if s.problem != nil {
		return nil, 0, s.problem
	}
	if len(s.missing) > 0 {
		return nil, 0, fault.New(fault.Malformed, "", "shard %s named in %s is missing", s.missing[0], s.index.obj.Path)
	}
	dir := path.Dir(s.index.obj.Path)
	weights := map[string]string{}
	var total int64
	for _, sh := range s.shards {
		if o := sh.file.Outcome; o != Converted && o != Skipped {
			return nil, 0, fault.New(fault.Malformed, "", "shard %s was %s", sh.obj.Path, o)
		}
		if sh.file.Detail != "" { // skipped, but not converted by this run or an earlier one
			return nil, 0, fault.New(fault.Unsupported, "", "shard %s: %s", sh.obj.Path, sh.file.Detail)
		}
		rel := strings.TrimPrefix(sh.out, dir+"/")
		for _, t := range sh.tensors {
			if prev, ok := weights[t.Name]; ok {
				return nil, 0, fault.New(fault.Malformed, "", "tensor %q is in two shards, %s and %s", t.Name, prev, rel)
			}
			weights[t.Name] = rel
			total += t.Bytes
		}
	}
	return weights, total, nil
}

// failSet reports the set failed with err, removes the outputs its shards got in this run and
// its index's output (which would name them), and forgets the index's receipt.
func (r *runner) failSet(ctx context.Context, s *shardSet, err error) {
	s.index.file.Outcome, s.index.file.Error = Failed, failure(err)
	for _, sh := range s.shards {
		if sh.file.Outcome != Converted {
			continue
		}
		if r.writes() {
			if rerr := r.out.Remove(ctx, sh.out); rerr != nil {
				r.setRunErr(fmt.Errorf("remove %s of failed sharded set %s: %w", sh.out, s.index.obj.Path, rerr))
			}
		}
		sh.file = File{Path: sh.obj.Path, Outcome: Failed, SourceSHA256: sh.file.SourceSHA256,
			Error: failure(fault.Wrap(fault.KindOf(err), "", err, "sharded set %s failed", s.index.obj.Path))}
	}
	if !r.writes() {
		return
	}
	if rerr := r.out.Remove(ctx, s.out); rerr != nil {
		r.setRunErr(fmt.Errorf("remove %s of failed sharded set: %w", s.out, rerr))
	}
	if rerr := r.state.drop(ctx, s.index.obj.Path); rerr != nil {
		r.setRunErr(rerr)
	}
}

// removeSources marks the shards and the index of a set whose new index is written for
// deletion.
func (s *shardSet) removeSources(r *runner) {
	for _, sh := range s.shards {
		r.removeSource(sh)
	}
	r.removeSource(s.index)
}

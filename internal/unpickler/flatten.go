package unpickler

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/nlpodyssey/gopickle/types"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
)

// Named is a tensor found in the object graph under a dotted name.
type Named struct {
	Name   string
	Tensor *TensorRef
}

// Leaf is a non-tensor value of the selected tree, reported instead of silently dropped.
type Leaf struct {
	Path string
	Type string
}

// Tree is the flattened object graph.
type Tree struct {
	Tensors []Named
	Dropped []Leaf
	// Selected is the dotted path of the converted subtree ("" for the root).
	Selected string
}

// Flatten names every tensor under the selected subtree. With selectPath empty, a root dict
// holding a "state_dict" key is unwrapped to that value, as the Hugging Face convert script does.
// Dict keys must be strings or integers; lists and tuples are named by index; a root tensor is
// named "tensor".
//
// The walk is iterative-safe and budgeted: it refuses cycles, nesting deeper than
// lim.MaxNesting and more than lim.MaxWalkNodes visited nodes (a DAG that reaches one tensor
// through 2^100 paths ends quickly), and more than lim.MaxTensors tensors.
func Flatten(root any, selectPath string, entry string, lim limits.Limits) (*Tree, error) {
	w := &walker{entry: entry, lim: lim, onPath: map[any]bool{}, names: map[string]bool{}}
	tree := &Tree{}
	sub := root
	switch {
	case selectPath != "":
		tree.Selected = selectPath
	default:
		if _, ok := dictGet(root, "state_dict"); ok {
			tree.Selected = "state_dict"
		}
	}
	if tree.Selected != "" {
		var err error
		if sub, err = w.lookup(root, tree.Selected, tree); err != nil {
			return nil, err
		}
	}
	if t, ok := sub.(*TensorRef); ok {
		name := "tensor"
		if tree.Selected != "" {
			name = tree.Selected[strings.LastIndexByte(tree.Selected, '.')+1:]
		}
		tree.Tensors = append(tree.Tensors, Named{Name: name, Tensor: t})
		return tree, nil
	}
	// Measure before naming anything: the walk below builds one dotted name per path, so a
	// DAG sharing containers at every level (2^100 paths to one tensor from a 3 KB pickle)
	// would otherwise spend its whole budget (and gigabytes of names) before failing.
	if _, err := w.measure(sub, 0, nil, map[any]walkCost{}); err != nil {
		return nil, err
	}
	if err := w.walk(sub, "", 0, tree); err != nil {
		return nil, err
	}
	return tree, nil
}

// walkCost is what walking a subtree costs: nodes visited, tensors named and the bytes of
// those names relative to the subtree, every path counted, saturated just above the limits.
type walkCost struct {
	nodes, tensors int
	names          int64
}

// measure returns the cost of walking v without walking it: each container is measured once,
// by identity, so a subtree shared by many paths costs its size once here however often the
// walk would enter it. It refuses, as the walk would, cycles, nesting deeper than
// lim.MaxNesting, more than lim.MaxWalkNodes visits and more than lim.MaxTensors tensors, and
// it fails as soon as a partial sum passes a limit. Every tensor name ends up in the
// safetensors header (an alias as metadata), so names totalling more than lim.MaxHeaderBytes
// are refused here too, before a few hundred bytes of shared dicts make gigabytes of names. trail holds the keys leading to v, for
// error messages only. Its recursion depth is bounded by lim.MaxNesting.
func (w *walker) measure(v any, depth int, trail []any, memo map[any]walkCost) (walkCost, error) {
	if depth > w.lim.MaxNesting {
		return walkCost{}, fault.New(fault.Limit, w.entry, "object graph nested deeper than %d at %s (limit max-nesting)", w.lim.MaxNesting, Describe(trailPath(trail)))
	}
	switch v.(type) {
	case *TensorRef:
		return walkCost{nodes: 1, tensors: 1}, nil
	case *types.Dict, *types.OrderedDict, *types.List, *types.Tuple:
	default:
		return walkCost{nodes: 1}, nil
	}
	if c, ok := memo[v]; ok {
		return c, nil
	}
	if w.onPath[v] {
		return walkCost{}, fault.New(fault.Malformed, w.entry, "object graph has a cycle at %s", Describe(trailPath(trail)))
	}
	w.onPath[v] = true
	defer delete(w.onPath, v)
	total := walkCost{nodes: 1}
	err := eachChild(v, func(key, child any) error {
		c, err := w.measure(child, depth+1, append(trail, key), memo)
		if err != nil {
			return err
		}
		total.nodes = satAdd(total.nodes, c.nodes, w.lim.MaxWalkNodes)
		total.tensors = satAdd(total.tensors, c.tensors, w.lim.MaxTensors)
		// Each tensor below adds this key and a dot to its name.
		k, _ := keyString(key)
		over := w.lim.MaxHeaderBytes + 1
		names := over
		if per := int64(len(k) + 1); c.tensors == 0 || per <= (over-c.names)/int64(c.tensors) {
			names = c.names + int64(c.tensors)*per
		}
		total.names = min(total.names+names, over)
		switch {
		case total.nodes > w.lim.MaxWalkNodes:
			return fault.New(fault.Limit, w.entry, "object graph has more than %d paths (limit max-walk-nodes)", w.lim.MaxWalkNodes)
		case total.tensors > w.lim.MaxTensors:
			return fault.New(fault.Limit, w.entry, "more than %d tensors (limit max-tensors)", w.lim.MaxTensors)
		case total.names > w.lim.MaxHeaderBytes:
			return fault.New(fault.Limit, w.entry, "tensor names total more than %d bytes: the safetensors header would exceed limit max-header-bytes", w.lim.MaxHeaderBytes)
		}
		return nil
	})
	if err != nil {
		return walkCost{}, err
	}
	memo[v] = total
	return total, nil
}

// satAdd returns a+b, or limit+1 when the sum exceeds limit (a and b are at most limit+1).
func satAdd(a, b, limit int) int {
	if a > limit-b {
		return limit + 1
	}
	return a + b
}

// trailPath formats the keys leading to a node as the walk would name it.
func trailPath(trail []any) string {
	parts := make([]string, len(trail))
	for i, k := range trail {
		s, err := keyString(k)
		if err != nil {
			s = "<" + typeName(k) + " key>"
		}
		parts[i] = s
	}
	return strings.Join(parts, ".")
}

type walker struct {
	entry  string
	lim    limits.Limits
	visits int
	onPath map[any]bool
	names  map[string]bool
}

func (w *walker) walk(v any, path string, depth int, tree *Tree) error {
	w.visits++
	if w.visits > w.lim.MaxWalkNodes {
		return fault.New(fault.Limit, w.entry, "object graph has more than %d paths (limit max-walk-nodes)", w.lim.MaxWalkNodes)
	}
	if depth > w.lim.MaxNesting {
		return fault.New(fault.Limit, w.entry, "object graph nested deeper than %d at %s (limit max-nesting)", w.lim.MaxNesting, Describe(path))
	}
	switch x := v.(type) {
	case *TensorRef:
		if path == "" {
			path = "tensor"
		}
		if w.names[path] {
			return fault.New(fault.Malformed, w.entry, "two tensors are named %s", Describe(path))
		}
		if len(tree.Tensors) >= w.lim.MaxTensors {
			return fault.New(fault.Limit, w.entry, "more than %d tensors (limit max-tensors)", w.lim.MaxTensors)
		}
		w.names[path] = true
		tree.Tensors = append(tree.Tensors, Named{Name: path, Tensor: x})
		return nil
	case *types.Dict, *types.OrderedDict, *types.List, *types.Tuple:
	default:
		if path == "" {
			return fault.New(fault.Malformed, w.entry, "root object is %s, not a dict, list or tensor", typeName(v))
		}
		tree.Dropped = append(tree.Dropped, Leaf{Path: path, Type: typeName(v)})
		return nil
	}
	if w.onPath[v] {
		return fault.New(fault.Malformed, w.entry, "object graph has a cycle at %s", Describe(path))
	}
	w.onPath[v] = true
	defer delete(w.onPath, v)
	return eachChild(v, func(key any, child any) error {
		k, err := keyString(key)
		if err != nil {
			return fault.New(fault.Malformed, w.entry, "at %s: %v", Describe(path), err)
		}
		p := k
		if path != "" {
			p = path + "." + k
		}
		return w.walk(child, p, depth+1, tree)
	})
}

// eachChild calls fn for each (key, value) of a container in order. Duplicate keys of a plain
// dict keep the first position and the last value, as CPython does.
func eachChild(v any, fn func(key, child any) error) error {
	switch x := v.(type) {
	case *types.OrderedDict:
		for e := x.List.Front(); e != nil; e = e.Next() {
			entry := e.Value.(*types.OrderedDictEntry)
			if err := fn(entry.Key, entry.Value); err != nil {
				return err
			}
		}
	case *types.Dict:
		last := map[any]int{}
		for i, e := range *x {
			if hashable(e.Key) {
				last[e.Key] = i
			}
		}
		seen := map[any]bool{}
		for _, e := range *x {
			if !hashable(e.Key) {
				if err := fn(e.Key, e.Value); err != nil {
					return err
				}
				continue
			}
			if seen[e.Key] {
				continue
			}
			seen[e.Key] = true
			if err := fn(e.Key, (*x)[last[e.Key]].Value); err != nil {
				return err
			}
		}
	case *types.List:
		for i, c := range *x {
			if err := fn(i, c); err != nil {
				return err
			}
		}
	case *types.Tuple:
		for i, c := range *x {
			if err := fn(i, c); err != nil {
				return err
			}
		}
	}
	return nil
}

func hashable(k any) bool {
	switch k.(type) {
	case string, int, bool, float64, nil:
		return true
	}
	return false
}

// keyString names a dict key or list index in a dotted tensor name.
func keyString(k any) (string, error) {
	switch x := k.(type) {
	case string:
		if !utf8.ValidString(x) {
			return "", fmt.Errorf("key is not valid UTF-8")
		}
		return x, nil
	case int:
		return strconv.Itoa(x), nil
	case *big.Int:
		return x.String(), nil
	}
	return "", fmt.Errorf("dict key of type %s cannot name a tensor", typeName(k))
}

// dictGet returns v[key] for a dict-like v with a string key.
func dictGet(v any, key string) (any, bool) {
	var found any
	ok := false
	switch v.(type) {
	case *types.Dict, *types.OrderedDict:
		_ = eachChild(v, func(k, child any) error {
			if s, isStr := k.(string); isStr && s == key {
				found, ok = child, true
			}
			return nil
		})
	}
	return found, ok
}

// lookup follows a dotted path; each component is a dict key (or its integer form) or a list
// index. The siblings left behind on the way are recorded in tree.Dropped, so that nothing
// outside the selection disappears silently.
func (w *walker) lookup(root any, path string, tree *Tree) (any, error) {
	cur := root
	prefix := ""
	for _, part := range strings.Split(path, ".") {
		var next any
		found := false
		_ = eachChild(cur, func(k, child any) error {
			s, err := keyString(k)
			if err == nil && s == part && !found {
				next, found = child, true
				return nil
			}
			if err != nil {
				s = "<" + typeName(k) + " key>"
			}
			tree.Dropped = append(tree.Dropped, Leaf{Path: prefix + s, Type: "not selected"})
			return nil
		})
		if !found {
			return nil, fault.New(fault.Malformed, w.entry, "--select %s: no key %s", Describe(path), Describe(part))
		}
		cur = next
		prefix += part + "."
	}
	return cur, nil
}

// StringList returns v as a list of strings (the legacy format's storage key list).
func StringList(v any) ([]string, error) {
	l, ok := v.(*types.List)
	if !ok {
		return nil, fmt.Errorf("%s is not a list", typeName(v))
	}
	out := make([]string, len(*l))
	for i, it := range *l {
		s, err := toString(it)
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		out[i] = s
	}
	return out, nil
}

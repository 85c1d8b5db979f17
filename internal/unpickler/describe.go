package unpickler

import (
	"math/big"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/nlpodyssey/gopickle/types"
)

// Bounds of Describe. A value is shown at most describeDepth containers deep, with at most
// describeItems items per container and describeStr bytes per string, so that the walk visits
// a bounded number of nodes whatever the graph; the output is cut at MaxDescribeBytes.
const (
	describeDepth = 3
	describeItems = 8
	describeStr   = 64
	// MaxDescribeBytes bounds the length of every string Describe returns.
	MaxDescribeBytes = 256
)

// Describe renders a value of an unpickled object graph for an error message or a manifest, in
// Python-like syntax, in bounded time and space: nested containers, long containers and long
// strings are elided, a container inside itself prints as Python prints it ([...]), and the
// result is never longer than MaxDescribeBytes.
//
// It is the only way this package formats a graph value. fmt's %v and gopickle's String
// methods recurse without bound (a list appended to itself overflows the stack, which no
// recover() catches) and a DAG of shared containers expands to 2^depth paths.
func Describe(v any) string {
	d := &describer{onPath: map[any]bool{}}
	d.value(v, 0)
	return d.String()
}

// describer writes into a builder that refuses bytes past the limit; done tells the walk to
// stop early.
type describer struct {
	strings.Builder
	onPath map[any]bool
	done   bool
}

const ellipsis = "..."

func (d *describer) put(s string) {
	if d.done {
		return
	}
	room := MaxDescribeBytes - len(ellipsis) - d.Len()
	if len(s) <= room {
		d.WriteString(s)
		return
	}
	d.WriteString(cutUTF8(s, max(room, 0)))
	d.WriteString(ellipsis)
	d.done = true
}

// cutUTF8 returns the longest prefix of s of at most n bytes that does not split a rune.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func (d *describer) value(v any, depth int) {
	switch x := v.(type) {
	case nil:
		d.put("None")
	case bool:
		if x {
			d.put("True")
		} else {
			d.put("False")
		}
	case int:
		d.put(strconv.Itoa(x))
	case *big.Int:
		if s := x.Text(10); len(s) <= describeStr {
			d.put(s)
		} else {
			d.put(s[:describeStr] + ellipsis + "(" + strconv.Itoa(len(s)) + " digits)")
		}
	case float64:
		d.put(strconv.FormatFloat(x, 'g', -1, 64))
	case string:
		d.quoted("", x)
	case []byte:
		d.quoted("b", string(x))
	case *types.Tuple:
		d.seq("(", ")", depth, v, *x)
	case *types.List:
		d.seq("[", "]", depth, v, *x)
	case *types.Dict:
		d.dict("{", "}", depth, v, x.Len(), func(yield func(k, v any) bool) {
			for _, e := range *x {
				if !yield(e.Key, e.Value) {
					return
				}
			}
		})
	case *types.OrderedDict:
		d.dict("OrderedDict({", "})", depth, v, x.Len(), func(yield func(k, v any) bool) {
			for e := x.List.Front(); e != nil; e = e.Next() {
				entry := e.Value.(*types.OrderedDictEntry)
				if !yield(entry.Key, entry.Value) {
					return
				}
			}
		})
	case *types.Set:
		d.put("set of " + strconv.Itoa(x.Len()) + " items")
	case *types.FrozenSet:
		d.put("frozenset of " + strconv.Itoa(x.Len()) + " items")
	case *TensorRef:
		d.put("tensor(" + x.DType.String() + ", shape " + ints(x.Shape) + ")")
	case *StorageRef:
		d.put("storage ")
		d.quoted("", x.Key)
	case error:
		d.put(x.Error())
	default:
		d.put(typeName(v))
	}
}

// quoted writes s as a quoted literal, keeping its first describeStr bytes.
func (d *describer) quoted(prefix, s string) {
	q := prefix + strconv.Quote(cutUTF8(s, describeStr))
	if len(s) > describeStr {
		q += ellipsis + "(" + strconv.Itoa(len(s)) + " bytes)"
	}
	d.put(q)
}

// enter reports whether container c may be shown at depth: not deeper than describeDepth and
// not inside itself. Otherwise it writes the elision and returns false.
func (d *describer) enter(open, close string, depth int, c any) bool {
	if depth >= describeDepth || d.onPath[c] {
		d.put(open + ellipsis + close)
		return false
	}
	d.onPath[c] = true
	return true
}

func (d *describer) seq(open, close string, depth int, c any, items []any) {
	if !d.enter(open, close, depth, c) {
		return
	}
	defer delete(d.onPath, c)
	d.put(open)
	for i, it := range items {
		if !d.more(i, len(items)) {
			break
		}
		d.value(it, depth+1)
	}
	if open == "(" && len(items) == 1 {
		d.put(",")
	}
	d.put(close)
}

func (d *describer) dict(open, close string, depth int, c any, n int, each func(yield func(k, v any) bool)) {
	if !d.enter(open, close, depth, c) {
		return
	}
	defer delete(d.onPath, c)
	d.put(open)
	i := 0
	each(func(k, v any) bool {
		if !d.more(i, n) {
			return false
		}
		i++
		d.value(k, depth+1)
		d.put(": ")
		d.value(v, depth+1)
		return true
	})
	d.put(close)
}

// more writes the separator before item i of n, or the count of the items left out once
// describeItems are shown, and reports whether item i is to be written.
func (d *describer) more(i, n int) bool {
	if d.done {
		return false
	}
	if i == describeItems {
		d.put(", " + ellipsis + strconv.Itoa(n-i) + " more")
		return false
	}
	if i > 0 {
		d.put(", ")
	}
	return true
}

// ints renders a shape or stride; its length was bounded by MaxDims when it was built.
func ints(v []int64) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.FormatInt(n, 10)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

package unpickler

import (
	"bytes"
	"errors"
	"math/big"
	"strings"
	"testing"

	"github.com/nlpodyssey/gopickle/types"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
)

// listDAG returns [prev, prev] nested levels deep: 2^levels paths to one empty list.
func listDAG(levels int) *types.List {
	prev := types.NewList()
	for range levels {
		l := types.NewList()
		l.Append(prev)
		l.Append(prev)
		prev = l
	}
	return prev
}

func TestDescribe(t *testing.T) {
	a, b := types.NewList(), types.NewList()
	a.Append(b)
	b.Append(a)
	selfDict := types.NewDict()
	selfDict.Set("me", selfDict)
	od := types.NewOrderedDict()
	od.Set("w", budgetTensor())
	od.Set("n", nil)
	wide := types.NewList()
	for i := range 1_000_000 {
		wide.Append(i)
	}
	deep := types.NewList()
	for cur, i := deep, 0; i < 100_000; i++ {
		next := types.NewList()
		cur.Append(next)
		cur = next
	}
	huge := new(big.Int).Lsh(big.NewInt(1), 1000)

	cases := []struct {
		name string
		v    any
		want string
		why  string
	}{
		{"scalars", types.NewTupleFromSlice([]any{nil, true, 3, 1.5, "a'b", []byte("\x00")}), `(None, True, 3, 1.5, "a'b", b"\x00")`, "Python-like spelling of the leaves"},
		{"one-tuple", types.NewTupleFromSlice([]any{1}), "(1,)", "a 1-tuple keeps its comma, as Python prints it"},
		{"two-lists-appended-to-each-other", a, "[[[...]]]", "the cycle behind the stack overflow: printed as Python prints a recursive list"},
		{"dict-holding-itself", selfDict, `{"me": {...}}`, "a cycle through a dict"},
		{"dag-2^80-paths", listDAG(80), "[[[[...], [...]], [[...], [...]]], [[[...], [...]], [[...], [...]]]]", "2^80 paths: only three levels are shown"},
		{"list-nested-100k-deep", deep, "[[[[...]]]]", "depth is cut at three levels"},
		{"list-of-a-million-ints", wide, "[0, 1, 2, 3, 4, 5, 6, 7, ...999992 more]", "length is cut at eight items"},
		{"long-string", strings.Repeat("é", 100), `"` + strings.Repeat("é", 32) + `"...(200 bytes)`, "strings are cut at 64 bytes, on a rune boundary"},
		{"int-of-302-digits", huge, huge.Text(10)[:64] + "...(302 digits)", "big integers are cut like strings"},
		{"ordered-dict-with-tensor", od, `OrderedDict({"w": tensor(F32, shape [4]), "n": None})`, "tensors are shown by dtype and shape"},
		{"storage", &StorageRef{Key: "0", DType: dtype.F32}, `storage "0"`, "storages are shown by key"},
		{"error", errors.New(strings.Repeat("x", 10_000)), strings.Repeat("x", MaxDescribeBytes-3) + "...", "an error message is cut at the output bound"},
		{"opaque", &Opaque{Class: "argparse.Namespace"}, "argparse.Namespace", "inert records are shown by class only"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Describe(c.v)
			if got != c.want {
				t.Errorf("Describe = %s\nwant       %s (%s)", got, c.want, c.why)
			}
			if len(got) > MaxDescribeBytes {
				t.Errorf("Describe returned %d bytes, bound %d", len(got), MaxDescribeBytes)
			}
		})
	}
}

// TestDescribeOutputBound fills every shown slot with the longest leaf, so that only the total
// bound keeps the output short.
func TestDescribeOutputBound(t *testing.T) {
	long := strings.Repeat("\x01", 10_000) // quoted as \x01: four bytes each
	inner := types.NewList()
	for range 20 {
		inner.Append(long)
	}
	outer := types.NewDict()
	for range 20 {
		outer.Set(long, inner)
	}
	got := Describe(outer)
	if len(got) > MaxDescribeBytes || !strings.HasSuffix(got, "...") {
		t.Errorf("Describe returned %d bytes ending %q; want at most %d ending in ...", len(got), got[max(0, len(got)-10):], MaxDescribeBytes)
	}
}

// hostilePID writes a protocol-2 stream whose persistent id is the tuple (kind, 1, 1, 1, 1):
// the id is refused for its kind, and the error message must describe kind. build leaves kind
// on the stack.
func hostilePID(build func(p *pickler)) []byte {
	p := newPickler(2)
	p.op('(')
	build(p)
	for range 4 {
		p.int(1)
	}
	p.op('t', 'Q', '.')
	return p.b
}

// TestHostileGraphErrors runs the whole read path over the review's crash and blow-up files:
// the error that names the bad persistent id must come back classified and short, where
// formatting the value with %v overflowed the stack (a fatal error no recover() catches) or
// enumerated 2^80 paths.
func TestHostileGraphErrors(t *testing.T) {
	cases := []struct {
		name  string
		build func(p *pickler)
		want  string
		why   string
	}{
		{"two-lists-appended-to-each-other", func(p *pickler) {
			p.op(']')
			a := p.memoize()
			p.op(']')
			b := p.memoize()
			p.get(a)
			p.op('a', '0') // b.append(a), then drop b
			p.get(b)
			p.op('a') // a.append(b): a cycle the symbolic stack cannot see
		}, "[[[...]]]", "a reference cycle through the memo"},
		{"dag-2^80-paths", func(p *pickler) {
			p.op(']')
			prev := p.memoize()
			for range 80 {
				p.op('0', '(')
				p.get(prev)
				p.get(prev)
				p.op('l')
				prev = p.memoize()
			}
		}, "[[[[...], [...]], [[...], [...]]], [[[...], [...]], [[...], [...]]]]", "80 shared lists: 2^80 paths from 1 KB"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw := hostilePID(c.build)
			lim := limits.Default()
			_, data, err := Prescan(bytes.NewReader(raw), int64(len(raw)), "data.pkl", lim, &Policy{})
			if err != nil {
				t.Fatalf("Prescan: %v; the stream is valid pickle and must reach the VM", err)
			}
			_, err = Load(data, "data.pkl", &Policy{}, &PersistentIDs{}, lim)
			if fault.KindOf(err) != fault.Malformed {
				t.Fatalf("Load: %v; want a malformed fault (%s)", err, c.why)
			}
			if msg := err.Error(); !strings.Contains(msg, "persistent id kind "+c.want) || len(msg) > 2*MaxDescribeBytes {
				t.Errorf("Load: %s\nwant a message of at most %d bytes describing the id as %s", msg, 2*MaxDescribeBytes, c.want)
			}
		})
	}
}

// TestAliasAmplification checks streams that cost a few bytes per reference to something
// large: gopickle's error messages format every argument with %#v (2,000 GETs of a 100 KB
// string passed to a list instance cost 7.8 GB and 98 s in one message), and each dict or
// list constructor copies its argument.
func TestAliasAmplification(t *testing.T) {
	big := strings.Repeat("\x01", 100_000)
	cases := []struct {
		name   string
		build  func(p *pickler)
		kind   fault.Kind
		inLoad bool // refused by the VM rather than the pre-scanner
		why    string
	}{
		{"list-instance-called-with-2000-GETs-of-100KB", func(p *pickler) {
			p.op(']')
			p.str(big)
			m := p.memoize()
			p.op('0', '(')
			for range 2000 {
				p.get(m)
			}
			p.op('t', 'R')
		}, fault.Unsafe, false, "only a global may be called: gopickle calls lists, and CPython calls call results"},
		{"call-of-a-call-result", func(p *pickler) {
			p.global("collections", "OrderedDict")
			p.emptyTuple()
			p.op('R')
			p.emptyTuple()
			p.op('R')
		}, fault.Unsafe, false, "getattr(module, name)(...) is the classic allowlist bypass"},
		{"BUILD-on-a-global", func(p *pickler) {
			p.global("collections", "OrderedDict")
			p.op('}', 'b')
		}, fault.Unsafe, false, "setting attributes of a class patches it for the whole process"},
		{"dict-of-2000-GETs-of-100KB", func(p *pickler) {
			p.str(big)
			m := p.memoize()
			p.op('0', '}', '(')
			for i := range 2000 {
				p.int(i)
				p.get(m)
			}
			p.op('u')
		}, fault.Limit, false, "200 MB of aliased strings from 104 KB: over aliasFactor"},
		{"list()-of-one-list-100k-times", func(p *pickler) {
			p.op(']', '(')
			for range 1000 {
				p.op('N')
			}
			p.op('e')
			x := p.memoize()
			p.op('0')
			p.global("builtins", "list")
			fn := p.memoize()
			p.op('0', ']')
			for range 100_000 {
				p.get(fn)
				p.get(x)
				p.op(0x85, 'R', '0')
			}
		}, fault.Limit, true, "100M items copied from 700 KB: over the copy budget"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPickler(2)
			c.build(p)
			p.op('.')
			lim := limits.Default()
			_, data, err := Prescan(bytes.NewReader(p.b), int64(len(p.b)), "data.pkl", lim, &Policy{})
			if c.inLoad {
				if err != nil {
					t.Fatalf("Prescan: %v; want the stream to reach the VM", err)
				}
				_, err = Load(data, "data.pkl", &Policy{}, &PersistentIDs{}, lim)
			}
			if fault.KindOf(err) != c.kind {
				t.Errorf("got %v; want %v (%s)", err, c.kind, c.why)
			}
		})
	}
}

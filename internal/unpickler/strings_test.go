package unpickler

import (
	"slices"
	"testing"

	"github.com/ptsafe/converter/internal/fault"
)

// keyedTensors writes a protocol-proto dict {key_i: tensor over storage str(i)}, each key
// written by its own opcode bytes, as a hand-made (or Python 2) pickle may spell it.
func keyedTensors(proto int, keys ...[]byte) []byte {
	p := newPickler(proto)
	p.op('}')
	p.op('(')
	for i, k := range keys {
		p.op(k...)
		p.tensor(string(rune('0' + i)))
	}
	p.op('u', '.')
	return p.framed()
}

// treeNames returns "name=storage" for every tensor of the tree, in order.
func treeNames(tree *Tree) []string {
	var out []string
	for _, n := range tree.Tensors {
		out = append(out, n.Name+"="+n.Tensor.Storage.Key)
	}
	return out
}

// TestProtocol0Strings checks that dict keys written with protocol-0 STRING and UNICODE
// opcodes name tensors as CPython reads them under torch.load's encoding='utf-8': STRING is
// the quoted text through codecs.escape_decode then UTF-8, UNICODE is raw-unicode-escape. The
// byte sequences are the ones CPython 3.11 was checked with (pickle.loads).
func TestProtocol0Strings(t *testing.T) {
	cases := []struct {
		name string
		data []byte
		want []string
		why  string
	}{
		{"STRING-hex-escape", keyedTensors(2, []byte("S'\\x77'\n")), []string{"w=0"}, `S'\x77' is 'w'`},
		{"STRING-newline-escape", keyedTensors(2, []byte("S'a\\nb'\n")), []string{"a\nb=0"}, `\n is a newline`},
		{"STRING-octal-escape", keyedTensors(2, []byte("S'\\101'\n")), []string{"A=0"}, `\101 is 'A'`},
		{"STRING-octal-escape-over-255", keyedTensors(2, []byte("S'\\777\\x41'\n")), nil, `\777 is byte 0xff (CPython keeps the low byte), not UTF-8: refused below`},
		{"STRING-quote-and-backslash", keyedTensors(2, []byte("S'a\\'b\\\\c'\n")), []string{`a'b\c=0`}, "escaped quote and backslash"},
		{"STRING-unknown-escape-kept", keyedTensors(2, []byte("S'\\q'\n")), []string{`\q=0`}, "an unknown escape keeps its backslash"},
		{"STRING-escaped-UTF-8", keyedTensors(2, []byte("S'\\xc3\\xa9'\n")), []string{"é=0"}, "escaped bytes are decoded as UTF-8"},
		{"UNICODE-u-escape", keyedTensors(2, []byte("V\\u0077\n")), []string{"w=0"}, `V\u0077 is 'w'`},
		{"UNICODE-Latin-1-byte", keyedTensors(2, []byte("V\xe9\n")), []string{"é=0"}, "raw bytes are Latin-1 code points"},
		{"UNICODE-U-escape", keyedTensors(2, []byte("V\\U0001f600\n")), []string{"\U0001f600=0"}, `\U escapes reach past the BMP`},
		{"UNICODE-escaped-backslash-pair", keyedTensors(2, []byte("V\\\\u0041\n")), []string{`\\u0041=0`}, "an even run of backslashes escapes nothing"},
		{"key-collision-w-and-escaped-w", keyedTensors(2, []byte("S'w'\n"), []byte("S'\\x77'\n")), []string{"w=1"}, "one key: the later assignment wins, as in torch"},
		{"key-collision-in-a-frame", keyedTensors(4, []byte("S'w'\n"), []byte("V\\u0077\n")), []string{"w=1"}, "protocol 4: the frame holding the rewritten opcodes keeps its length right"},
		{"escaped-state_dict-is-unwrapped", func() []byte {
			p := newPickler(2)
			p.op('}')
			p.text('S', `'state\x5fdict'`)
			p.op('}')
			p.str("w")
			p.tensor("0")
			p.op('s', 's', '.')
			return p.b
		}(), []string{"w=0"}, "the HF rule unwraps state_dict however its key is spelled"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tree, _, err := loadTree(t, c.data)
			if c.want == nil {
				if fault.KindOf(err) != fault.Malformed {
					t.Fatalf("got %v; want a malformed fault (%s)", err, c.why)
				}
				return
			}
			if err != nil {
				t.Fatalf("load: %v (%s)", err, c.why)
			}
			if got := treeNames(tree); !slices.Equal(got, c.want) {
				t.Errorf("tensors %q, want %q (%s)", got, c.want, c.why)
			}
		})
	}
}

// TestProtocol0StringRefusals checks that a string CPython refuses to read is refused, and a
// lone surrogate (which CPython reads, but no UTF-8 name holds) is refused as unsupported.
func TestProtocol0StringRefusals(t *testing.T) {
	cases := []struct {
		name string
		key  string
		want fault.Kind
		why  string
	}{
		{"STRING-truncated-x-escape", "S'\\x7'\n", fault.Malformed, `ValueError: invalid \x escape`},
		{"STRING-bad-x-escape", "S'\\xzz'\n", fault.Malformed, `ValueError: invalid \x escape`},
		{"STRING-trailing-backslash", "S'a\\'\n", fault.Malformed, `ValueError: Trailing \ in string`},
		{"STRING-not-UTF-8", "S'\\xff'\n", fault.Malformed, "UnicodeDecodeError under encoding='utf-8'"},
		{"STRING-unquoted", "Sabc\n", fault.Malformed, "the STRING opcode argument must be quoted"},
		{"BINSTRING-not-UTF-8", "U\x01\xff", fault.Malformed, "UnicodeDecodeError under encoding='utf-8'"},
		{"UNICODE-truncated-u-escape", "Va\\u12\n", fault.Malformed, `truncated \uXXXX escape`},
		{"UNICODE-U-out-of-range", "V\\U00110000\n", fault.Malformed, `\Uxxxxxxxx out of range`},
		{"UNICODE-lone-surrogate", "V\\ud800\n", fault.Unsupported, "a str no tensor name can hold"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := loadTree(t, keyedTensors(2, []byte(c.key)))
			if fault.KindOf(err) != c.want {
				t.Errorf("got %v; want %v (%s)", err, c.want, c.why)
			}
		})
	}
}

// TestDictFromPairs checks dict-like constructors called through REDUCE with their items as an
// argument: gopickle resolves builtins.dict and collections.OrderedDict itself and returns the
// list of pairs unchanged, which named the tensor "0.1" instead of "a".
func TestDictFromPairs(t *testing.T) {
	pairs := func(p *pickler, list bool) {
		p.op(']', '(')
		p.op('(')
		p.str("a")
		p.tensor("0")
		if list {
			p.op('l')
		} else {
			p.op('t')
		}
		p.op('e')
	}
	call := func(proto int, module, name string, args func(p *pickler)) []byte {
		p := newPickler(proto)
		p.global(module, name)
		p.op('(')
		args(p)
		p.op('t', 'R', '.')
		return p.framed()
	}
	cases := []struct {
		name string
		data []byte
		want []string
		why  string
	}{
		{"builtins.dict-of-tuple-pairs", call(2, "builtins", "dict", func(p *pickler) { pairs(p, false) }), []string{"a=0"}, "dict([('a', T)])"},
		{"__builtin__.dict-of-tuple-pairs", call(2, "__builtin__", "dict", func(p *pickler) { pairs(p, false) }), []string{"a=0"}, "the Python 2 spelling reaches our constructor too"},
		{"builtins.dict-by-STACK_GLOBAL-in-a-frame", call(4, "builtins", "dict", func(p *pickler) { pairs(p, false) }), []string{"a=0"}, "protocol 4: STACK_GLOBAL rewritten inside a frame"},
		{"builtins.dict-of-a-dict", call(2, "builtins", "dict", func(p *pickler) {
			p.op('}')
			p.str("a")
			p.tensor("0")
			p.op('s')
		}), []string{"a=0"}, "dict(mapping) copies it"},
		{"OrderedDict-of-list-pairs", call(2, "collections", "OrderedDict", func(p *pickler) { pairs(p, true) }), []string{"a=0"}, "Python 2.7 pickled OrderedDict as OrderedDict([[k, v], ...])"},
		{"Counter-of-a-dict", call(2, "collections", "Counter", func(p *pickler) {
			p.op('}')
			p.str("a")
			p.tensor("0")
			p.op('s')
		}), []string{"a=0"}, "Counter pickles as Counter(dict(self))"},
		{"defaultdict-then-SETITEMS", func() []byte {
			p := newPickler(2)
			p.global("collections", "defaultdict")
			p.global("builtins", "list")
			p.op(0x85, 'R', '(')
			p.str("a")
			p.tensor("0")
			p.op('u', '.')
			return p.b
		}(), []string{"a=0"}, "defaultdict(list): the factory is dropped, the items kept"},
		{"builtins.list-of-a-tuple", func() []byte {
			p := newPickler(2)
			p.op('}')
			p.str("l")
			p.global("builtins", "list")
			p.tensor("0")
			p.op(0x85, 0x85, 'R', 's', '.')
			return p.b
		}(), []string{"l.0=0"}, "list((T,)) is a list"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tree, _, err := loadTree(t, c.data)
			if err != nil {
				t.Fatalf("load: %v (%s)", err, c.why)
			}
			if got := treeNames(tree); !slices.Equal(got, c.want) {
				t.Errorf("tensors %q, want %q (%s)", got, c.want, c.why)
			}
		})
	}

	refused := []struct {
		name string
		data []byte
		want fault.Kind
		why  string
	}{
		{"dict-of-2-char-strings", call(2, "builtins", "dict", func(p *pickler) {
			p.op(']')
			p.str("ab")
			p.op('a')
		}), fault.Unsupported, "dict(['ab']) is {'a': 'b'} in Python: refused rather than guessed"},
		{"dict-of-3-tuples", call(2, "builtins", "dict", func(p *pickler) {
			p.op(']', '(')
			p.int(1)
			p.int(2)
			p.int(3)
			p.op('t', 'a')
		}), fault.Unsupported, "not a (key, value) pair: Python raises"},
		{"Counter-of-a-list", call(2, "collections", "Counter", func(p *pickler) { pairs(p, false) }), fault.Unsupported, "Counter(iterable) counts: its keys are not the pairs' keys"},
		{"OrderedDict-with-a-bytes-key", call(2, "collections", "OrderedDict", func(p *pickler) {
			p.op(']', '(', 'C', 1, 'a')
			p.int(1)
			p.op('t', 'a')
		}), fault.Unsupported, "gopickle keys OrderedDict by a Go map, where bytes panic"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			if _, _, err := loadTree(t, c.data); fault.KindOf(err) != c.want {
				t.Errorf("got %v; want %v (%s)", err, c.want, c.why)
			}
		})
	}
}

// TestReconstructorRecord checks that an object pickled by protocol 0 or 1 through
// copy_reg._reconstructor (which gopickle resolved itself) is reported under its own class.
func TestReconstructorRecord(t *testing.T) {
	p := newPickler(1)
	p.op('}', '(')
	p.str("w")
	p.tensor("0")
	p.str("args")
	p.op([]byte("ccopy_reg\n_reconstructor\n(cargparse\nNamespace\nc__builtin__\nobject\nNtR}")...)
	p.str("lr")
	p.op('K', 1, 's', 'b', 'u', '.')
	tree, _, err := loadTree(t, p.b)
	if err != nil {
		t.Fatal(err)
	}
	if got := tree.Dropped; len(got) != 1 || got[0] != (Leaf{Path: "args", Type: "argparse.Namespace"}) {
		t.Errorf("dropped %+v, want [args argparse.Namespace]", got)
	}
}

package unpickler

import (
	"archive/zip"
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/testkit"
)

// pickler writes torch-like pickles the way CPython's pickler does for each protocol, so the
// tests do not depend on Python. It records opcode boundaries to add FRAMEs for protocol 4+.
type pickler struct {
	proto   int
	b       []byte
	starts  []int // offset of every opcode, for framing
	memo    int
	globals map[string]int
}

func newPickler(proto int) *pickler {
	p := &pickler{proto: proto, globals: map[string]int{}}
	if proto >= 2 {
		p.op(0x80, byte(proto))
	}
	return p
}

func (p *pickler) op(b ...byte) { p.starts = append(p.starts, len(p.b)); p.b = append(p.b, b...) }

func (p *pickler) text(op byte, s string) { p.op(append([]byte{op}, s+"\n"...)...) }

func le(n uint64, size int) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, n)
	return b[:size]
}

func (p *pickler) memoize() int {
	i := p.memo
	p.memo++
	switch {
	case p.proto >= 4:
		p.op(0x94)
	case p.proto == 0:
		p.text('p', fmt.Sprint(i))
	case i < 256:
		p.op('q', byte(i))
	default:
		p.op(append([]byte{'r'}, le(uint64(i), 4)...)...)
	}
	return i
}

func (p *pickler) get(i int) {
	switch {
	case p.proto == 0:
		p.text('g', fmt.Sprint(i))
	case i < 256:
		p.op('h', byte(i))
	default:
		p.op(append([]byte{'j'}, le(uint64(i), 4)...)...)
	}
}

func (p *pickler) str(s string) {
	switch {
	case p.proto == 0:
		p.text('V', s)
	case p.proto >= 4 && len(s) < 256:
		p.op(append([]byte{0x8c, byte(len(s))}, s...)...)
	default:
		p.op(append(append([]byte{'X'}, le(uint64(len(s)), 4)...), s...)...)
	}
}

func (p *pickler) int(n int) {
	switch {
	case p.proto == 0:
		p.text('I', fmt.Sprint(n))
	case n >= 0 && n < 256:
		p.op('K', byte(n))
	case n >= 0 && n < 65536:
		p.op(append([]byte{'M'}, le(uint64(n), 2)...)...)
	default:
		p.op(append([]byte{'J'}, le(uint64(n), 4)...)...)
	}
}

func (p *pickler) falseVal() {
	if p.proto >= 2 {
		p.op(0x89)
	} else {
		p.text('I', "00")
	}
}

func (p *pickler) global(module, name string) {
	if i, ok := p.globals[module+"."+name]; ok {
		p.get(i)
		return
	}
	if p.proto >= 4 {
		p.str(module)
		p.memoize()
		p.str(name)
		p.memoize()
		p.op(0x93)
	} else {
		p.op(append([]byte{'c'}, module+"\n"+name+"\n"...)...)
	}
	p.globals[module+"."+name] = p.memoize()
}

// tuple closes a tuple of n items; open must have been called before the items.
func (p *pickler) tupleOpen(n int) {
	if p.proto < 2 || n > 3 {
		p.op('(')
	}
}

func (p *pickler) tupleClose(n int) {
	if p.proto < 2 || n > 3 {
		p.op('t')
	} else {
		p.op(0x84 + byte(n))
	}
}

func (p *pickler) emptyTuple() {
	if p.proto == 0 {
		p.op('(', 't')
	} else {
		p.op(')')
	}
}

func (p *pickler) orderedDict() {
	p.global("collections", "OrderedDict")
	p.emptyTuple()
	p.op('R')
	p.memoize()
}

// tensor writes _rebuild_tensor_v2(storage, 0, (3, 4), (4, 1), False, OrderedDict()).
// Protocol 0 would need a text PERSID, which the pre-scanner refuses, so its storage is None.
func (p *pickler) tensor(key string) {
	p.global("torch._utils", "_rebuild_tensor_v2")
	p.op('(')
	if p.proto == 0 {
		p.op('N')
	} else {
		p.op('(')
		p.str("storage")
		p.global("torch", "FloatStorage")
		p.str(key)
		p.str("cpu")
		p.int(12)
		p.op('t')
		p.memoize()
		p.op('Q')
	}
	p.int(0)
	for _, d := range [][2]int{{3, 4}, {4, 1}} {
		p.tupleOpen(2)
		p.int(d[0])
		p.int(d[1])
		p.tupleClose(2)
		p.memoize()
	}
	p.falseVal()
	p.orderedDict()
	p.op('t')
	p.memoize()
	p.op('R')
	p.memoize()
}

// stateDict writes {"layer<i>.weight": tensor} for n tensors, batching SETITEMS by 1000 as
// CPython does, and returns the finished stream (framed for protocol 4+).
func (p *pickler) stateDict(n int) []byte {
	if p.proto == 0 {
		p.op('(', 'd')
		p.memoize()
	} else {
		p.op('}')
		p.memoize()
	}
	for i := 0; i < n; i++ {
		if p.proto > 0 && i%1000 == 0 {
			p.op('(')
		}
		p.str(fmt.Sprintf("layer%d.weight", i))
		p.memoize()
		p.tensor(fmt.Sprint(i))
		switch {
		case p.proto == 0:
			p.op('s')
		case i%1000 == 999 || i == n-1:
			p.op('u')
		}
	}
	p.op('.')
	return p.framed()
}

// framed splits the opcodes after PROTO into FRAMEs of about 64 KiB, as CPython's _Framer does.
func (p *pickler) framed() []byte {
	if p.proto < 4 {
		return p.b
	}
	out := slices.Clone(p.b[:2])
	ops := p.starts[1:]
	for i := 0; i < len(ops); {
		j := i
		for j < len(ops) && (j == i || ops[j]-ops[i] < 64<<10) {
			j++
		}
		end := len(p.b)
		if j < len(ops) {
			end = ops[j]
		}
		out = append(out, 0x95)
		out = append(out, le(uint64(end-ops[i]), 8)...)
		out = append(out, p.b[ops[i]:end]...)
		i = j
	}
	return out
}

func prescanBytes(t testing.TB, data []byte, lim limits.Limits) (*Scan, []byte, error) {
	t.Helper()
	var (
		sc  *Scan
		out []byte
		err error
	)
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("Prescan panicked: %v", r)
			}
		}()
		sc, out, err = Prescan(bytes.NewReader(data), int64(len(data)), "test.pkl", lim, nil)
	}()
	return sc, out, err
}

func qualified(gs []Global) []string {
	var q []string
	for _, g := range gs {
		q = append(q, g.Qualified())
	}
	return q
}

func TestPrescanBenignTorchLike(t *testing.T) {
	for _, proto := range []int{0, 1, 2, 3, 4, 5} {
		t.Run(fmt.Sprintf("protocol%d", proto), func(t *testing.T) {
			data := newPickler(proto).stateDict(1500)
			sc, out, err := prescanBytes(t, data, limits.Default())
			if err != nil {
				t.Fatalf("Prescan: %v", err)
			}
			if !bytes.Equal(out, data) || sc.Length != int64(len(data)) {
				t.Errorf("got %d bytes, Length %d; want the %d-byte stream", len(out), sc.Length, len(data))
			}
			wantProto := proto
			if proto == 0 {
				wantProto = 0
			}
			if sc.Protocol != wantProto {
				t.Errorf("Protocol = %d, want %d", sc.Protocol, wantProto)
			}
			want := []string{"torch._utils._rebuild_tensor_v2", "torch.FloatStorage", "collections.OrderedDict"}
			if proto == 0 {
				want = []string{"torch._utils._rebuild_tensor_v2", "collections.OrderedDict"}
			}
			if got := qualified(sc.Globals); !slices.Equal(got, want) {
				t.Errorf("globals = %v, want %v", got, want)
			}
			for _, g := range sc.Globals {
				if g.Class != Allowed {
					t.Errorf("%s classified %v, want allowed", g.Qualified(), g.Class)
				}
			}
		})
	}
}

func TestPrescanProtocol1WithoutProto(t *testing.T) {
	sc, _, err := prescanBytes(t, []byte("}q\x00."), limits.Default())
	if err != nil || sc.Protocol != 1 {
		t.Errorf("got protocol %d, err %v; want 1, nil", sc.Protocol, err)
	}
	sc, _, err = prescanBytes(t, []byte("(dp0\n."), limits.Default())
	if err != nil || sc.Protocol != 0 {
		t.Errorf("got protocol %d, err %v; want 0, nil", sc.Protocol, err)
	}
}

// faultCase is one stream that must fail with a classified error at a given offset.
type faultCase struct {
	name   string
	data   []byte
	lim    func(*limits.Limits)
	kind   fault.Kind
	offset int64
	msg    string   // substring of the error message
	global []string // globals that must be reported alongside the error
}

func runFaultCases(t *testing.T, cases []faultCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lim := limits.Default()
			if tc.lim != nil {
				tc.lim(&lim)
			}
			sc, out, err := prescanBytes(t, tc.data, lim)
			var fe *fault.Error
			if !errors.As(err, &fe) {
				t.Fatalf("got error %v (%T), want a *fault.Error", err, err)
			}
			if fe.Kind != tc.kind || fe.Offset != tc.offset {
				t.Errorf("got %v at offset %d, want %v at offset %d (%v)", fe.Kind, fe.Offset, tc.kind, tc.offset, err)
			}
			if tc.msg != "" && !strings.Contains(fe.Msg, tc.msg) {
				t.Errorf("message %q does not mention %q", fe.Msg, tc.msg)
			}
			if out != nil {
				t.Errorf("got %d stream bytes with an error, want none", len(out))
			}
			if got := qualified(sc.Globals); !slices.Equal(got, tc.global) {
				t.Errorf("globals = %v, want %v", got, tc.global)
			}
		})
	}
}

func cat(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			b = append(b, v...)
		case []byte:
			b = append(b, v...)
		case byte:
			b = append(b, v)
		default:
			panic(fmt.Sprintf("cat: %T", p))
		}
	}
	return b
}

// TestPrescanGopickleDefects has one row per defect of gopickle v0.3.0 reachable from a pickle
// (reference/pytorch-checkpoints.md section 7.4): each must end in a clean classified error.
func TestPrescanGopickleDefects(t *testing.T) {
	const big = "\xff\xff\xff\xff\xff\xff\xff\x7f" // 2^63-1
	runFaultCases(t, []faultCase{
		{name: "opcode 0xff indexes past the dispatch table", data: []byte("\x80\x02\xff"),
			kind: fault.Malformed, offset: 2, msg: "unknown opcode 0xff"},
		{name: "LONG1 of length 0 panics in decodeLong", data: []byte("\x80\x02\x8a\x00."),
			kind: fault.Malformed, offset: 2, msg: "zero length"},
		{name: "LONG4 of length 0 panics in decodeLong", data: []byte("\x80\x02\x8b\x00\x00\x00\x00."),
			kind: fault.Malformed, offset: 2, msg: "zero length"},
		{name: "DICT with odd items", data: []byte("\x80\x02(\x88\x88\x88d."),
			kind: fault.Malformed, offset: 6, msg: "odd number"},
		{name: "SETITEMS with odd items", data: []byte("\x80\x02}(\x88\x88\x88u."),
			kind: fault.Malformed, offset: 7, msg: "odd number"},
		{name: "SETITEM with a bytes key into an OrderedDict",
			data: []byte("\x80\x03ccollections\nOrderedDict\n)RC\x01k\x88s."),
			kind: fault.Malformed, offset: 33, msg: "bytes used as a key", global: []string{"collections.OrderedDict"}},
		{name: "SETITEMS with a bytes key", data: []byte("\x80\x03}(C\x01k\x88u."),
			kind: fault.Malformed, offset: 8, msg: "bytes used as a key"},
		{name: "ADDITEMS with a bytes item", data: []byte("\x80\x04\x8f(C\x01k\x90."),
			kind: fault.Malformed, offset: 7, msg: "bytes used as a key"},
		{name: "FROZENSET with a bytes item", data: []byte("\x80\x04(C\x01k\x91."),
			kind: fault.Malformed, offset: 6, msg: "bytes used as a key"},
		{name: "bytes key fetched from the memo", data: []byte("\x80\x03C\x01kq\x000}(h\x00\x88u."),
			kind: fault.Malformed, offset: 13, msg: "bytes used as a key"},
		{name: "GLOBAL array._array_reconstructor cannot be vetoed by FindClass",
			data: []byte("\x80\x02carray\n_array_reconstructor\n(carray\narray\nU\x01bJ\xff\xff\xff\xffC\x00tR."),
			kind: fault.Unsafe, offset: 2, msg: "array._array_reconstructor",
			global: []string{"array._array_reconstructor"}},
		{name: "STACK_GLOBAL array._array_reconstructor",
			data: []byte("\x80\x04\x8c\x05array\x8c\x14_array_reconstructor\x93."),
			kind: fault.Unsafe, offset: 31, global: []string{"array._array_reconstructor"}},
		{name: "BINBYTES8 of 2^63-1", data: cat("\x80\x04\x8e", big),
			kind: fault.Malformed, offset: 2, msg: "exceeds the 0 bytes left"},
		{name: "BINUNICODE8 of 2^63-1", data: cat("\x80\x04\x8d", big),
			kind: fault.Malformed, offset: 2, msg: "bytes left"},
		{name: "BYTEARRAY8 of 2^63-1", data: cat("\x80\x05\x96", big),
			kind: fault.Malformed, offset: 2, msg: "bytes left"},
		{name: "FRAME of 2^63-1", data: cat("\x80\x04\x95", big),
			kind: fault.Malformed, offset: 2, msg: "bytes left"},
		{name: "BINBYTES8 of 2^64-1", data: []byte("\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xff"),
			kind: fault.Malformed, offset: 2, msg: "bytes left"},
		{name: "BINUNICODE claiming 4 GiB in a 7-byte input", data: []byte("\x80\x02X\xff\xff\xff\xff"),
			kind: fault.Malformed, offset: 2, msg: "exceeds the 0 bytes left"},
		{name: "BINBYTES claiming 4 GiB", data: []byte("\x80\x03B\xff\xff\xff\xff"),
			kind: fault.Malformed, offset: 2, msg: "bytes left"},
		{name: "10 MiB of MARKs", data: append([]byte("\x80\x02"), bytes.Repeat([]byte("("), 10<<20)...),
			kind: fault.Limit, offset: 2 + 1<<16, msg: "MaxMarks"},
		{name: "LONG4 of 256 KiB", data: cat("\x80\x02\x8b", le(256<<10, 4), string(make([]byte, 256<<10)), "."),
			kind: fault.Limit, offset: 2, msg: "MaxLongBytes"},
		{name: "list appended to itself", data: []byte("\x80\x02]q\x00h\x00a."),
			kind: fault.Malformed, offset: 7, msg: "reference cycle"},
		{name: "dict holding itself", data: []byte("\x80\x02}q\x00K\x01h\x00s."),
			kind: fault.Malformed, offset: 9, msg: "reference cycle"},
	})
}

// TestPrescanResources checks that hostile length fields and mark floods cost memory in
// proportion to the bytes actually read, not to what they claim (the point of the pre-scan:
// gopickle allocates 4 GiB for 10 MiB of MARKs). The walk reads past a refusal (see
// salvage), so the 10 MiB are copied once.
func TestPrescanResources(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"BINUNICODE claiming 4 GiB", []byte("\x80\x02X\xff\xff\xff\xff")},
		{"BINBYTES8 claiming 1 GiB in a 1 GiB input", nil},
		{"10 MiB of MARKs", append([]byte("\x80\x02"), bytes.Repeat([]byte("("), 10<<20)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, avail := io.Reader(bytes.NewReader(tc.data)), int64(len(tc.data))
			if tc.data == nil {
				// The input claims 1 GiB but holds 11 bytes: memory must follow the bytes read.
				src, avail = bytes.NewReader(cat("\x80\x04\x8e", le(1<<30-11, 8))), 1<<30
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, _, err := Prescan(bufio.NewReader(src), avail, "test.pkl", limits.Default(), nil)
			runtime.ReadMemStats(&after)
			if fault.KindOf(err) != fault.Malformed && fault.KindOf(err) != fault.Limit {
				t.Fatalf("got %v, want a malformed or limit fault", err)
			}
			if got, bound := after.TotalAlloc-before.TotalAlloc, uint64(16<<20+8*len(tc.data)); got > bound {
				t.Errorf("allocated %d bytes, want under %d (16 MiB and 8 per input byte)", got, bound)
			}
		})
	}
}

func TestPrescanRefusals(t *testing.T) {
	lim := func(f func(*limits.Limits)) func(*limits.Limits) { return f }
	runFaultCases(t, []faultCase{
		// Opcodes outside the allowlist.
		{name: "INST records its global, then is refused", data: []byte("(S'print(1)'\ni__builtin__\nexec\n."),
			kind: fault.Unsafe, offset: 13, msg: "INST", global: []string{"__builtin__.exec"}},
		{name: "OBJ", data: []byte("\x80\x02(cos\nsystem\nU\x02ido."),
			kind: fault.Unsafe, offset: 18, msg: "OBJ", global: []string{"os.system"}},
		{name: "EXT1", data: []byte("\x80\x02\x82\x01."), kind: fault.Unsafe, offset: 2, msg: "EXT1"},
		{name: "EXT2", data: []byte("\x80\x02\x83\x01\x00."), kind: fault.Unsafe, offset: 2, msg: "EXT2"},
		{name: "EXT4", data: []byte("\x80\x02\x84\x01\x00\x00\x00."), kind: fault.Unsafe, offset: 2, msg: "EXT4"},
		{name: "text PERSID", data: []byte("Pstorage\n."), kind: fault.Unsafe, offset: 0, msg: "PERSID"},
		{name: "NEXT_BUFFER", data: []byte("\x80\x05\x97."), kind: fault.Unsafe, offset: 2, msg: "NEXT_BUFFER"},
		{name: "READONLY_BUFFER", data: []byte("\x80\x05N\x98."), kind: fault.Unsafe, offset: 3, msg: "READONLY_BUFFER"},
		{name: "PROTO 6", data: []byte("\x80\x06N."), kind: fault.Malformed, offset: 0, msg: "protocol 6"},

		// STACK_GLOBAL operands.
		{name: "STACK_GLOBAL on a REDUCE result", data: []byte("\x80\x04cbuiltins\nstr\n)R\x8c\x06system\x93."),
			kind: fault.Unsafe, offset: 26, msg: "non-literal", global: []string{"builtins.str"}},
		{name: "STACK_GLOBAL on bytes", data: []byte("\x80\x04C\x02os\x8c\x06system\x93."),
			kind: fault.Unsafe, offset: 14, msg: "non-literal"},
		{name: "STACK_GLOBAL name of 2000 bytes", data: cat("\x80\x04\x8c\x02os\x8d", le(2000, 8), strings.Repeat("a", 2000), "\x93."),
			kind: fault.Unsafe, offset: 2015, msg: "longer than 1024"},
		{name: "STACK_GLOBAL underflow", data: []byte("\x80\x04\x8c\x02os\x93."),
			kind: fault.Malformed, offset: 6, msg: "underflow"},

		// Stack, marks and memo.
		{name: "GET of a memo key never set", data: []byte("\x80\x02h\x05."),
			kind: fault.Malformed, offset: 2, msg: "never set"},
		{name: "text GET of a memo key never set", data: []byte("g7\n."),
			kind: fault.Malformed, offset: 0, msg: "never set"},
		{name: "PUT on an empty stack", data: []byte("\x80\x02q\x00N."), kind: fault.Malformed, offset: 2, msg: "underflow"},
		{name: "REDUCE underflow", data: []byte("\x80\x02NR."), kind: fault.Malformed, offset: 3, msg: "underflow"},
		{name: "TUPLE2 across a MARK", data: []byte("\x80\x02N(N\x86."), kind: fault.Malformed, offset: 5, msg: "underflow"},
		{name: "TUPLE without MARK", data: []byte("\x80\x02Nt."), kind: fault.Malformed, offset: 3, msg: "MARK"},
		{name: "two items left at STOP (modelscan unsafe_zip_pytorch)", data: []byte("\x80\x02NN."),
			kind: fault.Malformed, offset: 4, msg: "1 more stack items"},
		{name: "open MARK at STOP", data: []byte("\x80\x02N(."), kind: fault.Malformed, offset: 4},
		{name: "empty stack at STOP", data: []byte("\x80\x02."), kind: fault.Malformed, offset: 2, msg: "underflow"},
		{name: "memo limit", data: []byte("\x80\x02Nq\x00q\x01q\x02."),
			lim: lim(func(l *limits.Limits) { l.MaxMemo = 2 }), kind: fault.Limit, offset: 7, msg: "MaxMemo"},
		{name: "nesting limit", data: append(append([]byte("\x80\x02"), bytes.Repeat([]byte("]"), 5)...), "aaaa."...),
			lim: lim(func(l *limits.Limits) { l.MaxNesting = 3 }), kind: fault.Limit, offset: 9, msg: "MaxNesting"},
		{name: "nesting limit through tuples", data: cat("\x80\x02", strings.Repeat("(", 5), strings.Repeat("t", 5), "."),
			lim: lim(func(l *limits.Limits) { l.MaxNesting = 3 }), kind: fault.Limit, offset: 10, msg: "MaxNesting"},

		// Lengths, lines and integers.
		{name: "truncated after opcode", data: []byte("\x80\x02K"), kind: fault.Malformed, offset: 2, msg: "bytes left"},
		{name: "no STOP", data: []byte("\x80\x02N"), kind: fault.Malformed, offset: 3, msg: "bytes left"},
		{name: "BINSTRING negative length", data: []byte("\x80\x01T\xff\xff\xff\xff"),
			kind: fault.Malformed, offset: 2, msg: "negative length"},
		{name: "LONG4 negative length", data: []byte("\x80\x02\x8b\xfe\xff\xff\xff"),
			kind: fault.Malformed, offset: 2, msg: "negative length"},
		{name: "LONG1 over MaxLongBytes", data: cat("\x80\x02\x8a\x41", string(make([]byte, 65)), "."),
			kind: fault.Limit, offset: 2, msg: "MaxLongBytes"},
		{name: "text INT over MaxLongBytes", data: cat("I", strings.Repeat("9", 65), "\n."),
			kind: fault.Limit, offset: 0, msg: "MaxLongBytes"},
		{name: "text LONG of 1 MiB digits", data: cat("L", strings.Repeat("9", 1<<20), "L\n."),
			kind: fault.Limit, offset: 0, msg: "line longer"},
		{name: "text INT not a number", data: []byte("I1e3\n."), kind: fault.Malformed, offset: 0, msg: "not a decimal"},
		{name: "GLOBAL name line unbounded", data: cat("c", strings.Repeat("a", 5000), "\nb\n."),
			kind: fault.Limit, offset: 0, msg: "line longer"},
		{name: "STRING not quoted", data: []byte("Sabc\n."), kind: fault.Malformed, offset: 0, msg: "quoted"},
		{name: "BINUNICODE with invalid UTF-8", data: []byte("\x80\x02X\x02\x00\x00\x00\xc3\x28."),
			kind: fault.Malformed, offset: 2, msg: "UTF-8"},
		{name: "SHORT_BINUNICODE with invalid UTF-8", data: []byte("\x80\x04\x8c\x01\xff."),
			kind: fault.Malformed, offset: 2, msg: "UTF-8"},
		{name: "BINUNICODE8 with invalid UTF-8", data: cat("\x80\x04\x8d", le(1, 8), "\x80."),
			kind: fault.Malformed, offset: 2, msg: "UTF-8"},
		{name: "pickle over MaxPickleBytes", data: cat("\x80\x03C\x20", string(make([]byte, 32)), "."),
			lim: lim(func(l *limits.Limits) { l.MaxPickleBytes = 16 }), kind: fault.Limit, offset: 2, msg: "MaxPickleBytes"},

		// Frames.
		{name: "frame longer than the input", data: cat("\x80\x04\x95", le(100, 8), "N."),
			kind: fault.Malformed, offset: 2, msg: "bytes left"},
		{name: "opcode straddles the frame end", data: cat("\x80\x04\x95", le(1, 8), "K\x01."),
			kind: fault.Malformed, offset: 11, msg: "frame"},
		{name: "frame starts inside a frame", data: cat("\x80\x04\x95", le(11, 8), "\x95", le(1, 8), "N.N."),
			kind: fault.Malformed, offset: 11, msg: "FRAME before the end"},
		{name: "frame extends past STOP", data: cat("\x80\x04\x95", le(4, 8), "N.NN"),
			kind: fault.Malformed, offset: 12, msg: "STOP inside a frame"},

		// A payload placed before a corruption is still reported (nullifAI, broken_model.pkl).
		{name: "payload then corruption", data: cat("\x80\x02cos\nsystem\n(X\xff\xff\xff\x7f", "ls"),
			kind: fault.Malformed, offset: 14, global: []string{"os.system"}},
	})
}

func TestPrescanFrames(t *testing.T) {
	// Consecutive frames, an empty frame, and unframed opcodes after a frame are all fine.
	data := cat("\x80\x04\x95", le(2, 8), "N\x94", "\x95", le(0, 8), "\x95", le(1, 8), "0", "N.")
	if _, out, err := prescanBytes(t, data, limits.Default()); err != nil || !bytes.Equal(out, data) {
		t.Errorf("got %v (%d bytes), want success", err, len(out))
	}
}

func TestPrescanStackGlobalMemoIndirection(t *testing.T) {
	// picklescan malicious11 (ImaginaryCTF "Safe Pickle"): decoy strings torch/LongStorage are
	// the last ones written before STACK_GLOBAL, the real operands come from memo keys 2 and 3.
	proto0 := []byte("Vos\np2\n0Vsystem\np3\n0Vtorch\np0\n0VLongStorage\np1\n0g2\ng3\n\x93(Vcat flag.txt\ntR.")
	// The same trick in protocol 4, with the decoys adjacent to STACK_GLOBAL on the stack.
	proto4 := []byte("\x80\x04\x8c\x02os\x940\x8c\x06system\x940\x8c\x05torch\x8c\x0bLongStorage00h\x00h\x01\x93\x8c\x02id\x85R.")
	for name, data := range map[string][]byte{"protocol0": proto0, "protocol4": proto4} {
		t.Run(name, func(t *testing.T) {
			sc, _, err := prescanBytes(t, data, limits.Default())
			if err != nil {
				t.Fatalf("Prescan: %v", err)
			}
			if len(sc.Globals) != 1 || sc.Globals[0].Qualified() != "os.system" || sc.Globals[0].Class != Dangerous {
				t.Errorf("globals = %+v, want [os.system dangerous]", sc.Globals)
			}
		})
	}
}

func TestPrescanLeavesTrailingBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  func([]byte) Source
	}{
		{"bytes.Reader", func(b []byte) Source { return bytes.NewReader(b) }},
		{"bufio.Reader", func(b []byte) Source { return bufio.NewReader(bytes.NewReader(b)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte("\x80\x02N.\x80\x02cbuiltins\neval\n.")
			src := tc.src(data)
			sc, out, err := Prescan(src, int64(len(data)), "test.pkl", limits.Default(), nil)
			if err != nil || sc.Length != 4 || string(out) != "\x80\x02N." {
				t.Fatalf("got %q, Length %d, err %v; want the first 4-byte pickle", out, sc.Length, err)
			}
			rest, _ := io.ReadAll(src)
			if string(rest) != string(data[4:]) {
				t.Errorf("left %q unread, want %q", rest, data[4:])
			}
			// The second pickle is scanned by a second call (legacy files hold several).
			sc, _, err = Prescan(bytes.NewReader(rest), int64(len(rest)), "test.pkl#2", limits.Default(), nil)
			if err != nil || len(sc.Globals) != 1 || sc.Globals[0].Qualified() != "builtins.eval" {
				t.Errorf("second pickle: globals %v, err %v; want [builtins.eval]", sc.Globals, err)
			}
		})
	}
}

func TestEscapeDecoders(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		raw      bool
	}{
		{`os`, "os", false},
		{`o\x73`, "os", false},
		{`\157s`, "os", false},
		{`a\'b\\c\q`, `a'b\c\q`, false},
		{`\u006fs`, "os", true},
		{`\\u006f`, `\\u006f`, true},
		{`\\\u006f`, `\\o`, true},
		{"caf\xe9", "café", true},
	} {
		dec := escapeDecode
		if tc.raw {
			dec = rawUnicodeEscapeDecode
		}
		if got, err := dec([]byte(tc.in)); err != nil || got != tc.want {
			t.Errorf("decode(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{`\x7`, `\xzz`, `\`} {
		if _, err := escapeDecode([]byte(bad)); err == nil {
			t.Errorf("escapeDecode(%q) succeeded, want an error", bad)
		}
	}
}

// pickleStart reports whether b can start a pickle: PROTO, or a protocol-0/1 opcode seen at
// the start of real files. 'P' (PERSID) is left out: it is also the first byte of a zip.
func pickleStart(b byte) bool { return strings.IndexByte("\x80(c]}LVSIN", b) >= 0 }

// scanStreams runs Prescan over up to 5 back-to-back pickles (the legacy torch layout) and
// returns every global found and the first error.
func scanStreams(t *testing.T, data []byte) ([]Global, error) {
	t.Helper()
	var globals []Global
	r := bytes.NewReader(data)
	for i := 0; i < 5 && r.Len() > 0; i++ {
		next, _ := r.ReadByte()
		_ = r.UnreadByte()
		if i > 0 && !pickleStart(next) {
			break
		}
		var (
			sc  *Scan
			err error
		)
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("Prescan panicked: %v", p)
				}
			}()
			sc, _, err = Prescan(r, int64(r.Len()), fmt.Sprintf("pickle#%d", i), limits.Default(), nil)
		}()
		globals = append(globals, sc.Globals...)
		if err != nil {
			var fe *fault.Error
			if !errors.As(err, &fe) {
				t.Fatalf("got %v (%T), want a *fault.Error", err, err)
			}
			return globals, err
		}
	}
	return globals, nil
}

func firstOffending(gs []Global) (Global, bool) {
	for _, g := range gs {
		if g.Class != Allowed && g.Class != Inert {
			return g, true
		}
	}
	return Global{}, false
}

// TestPrescanCorpus runs the pre-scanner over every corpus file that is a pickle (or a zip
// holding pickles), statically: nothing is executed. Malicious files must yield their first
// offending global as listed in SOURCES.md; benign checkpoints must pass with allowed globals.
func TestPrescanCorpus(t *testing.T) {
	if _, err := os.Stat(testkit.CorpusDir()); err != nil {
		t.Skipf("corpus not available: %v", err)
	}
	type want struct {
		first string // first global that is neither allowed nor inert; "" = none
		class Class
		fails bool // the stream itself must be refused
	}
	malicious := map[string]want{
		"picklescan__malicious0.pkl":                   {"__builtin__.globals", Dangerous, false},
		"picklescan__malicious1_v0.pkl":                {"__builtin__.eval", Dangerous, false},
		"picklescan__malicious2_v4.pkl":                {"posix.system", Dangerous, false},
		"picklescan__malicious10.pkl":                  {"__builtin__.exec", Dangerous, true},
		"picklescan__malicious11.pkl":                  {"os.system", Dangerous, false},
		"picklescan__malicious12.pkl":                  {"operator.attrgetter", Dangerous, true}, // calls what a call returned
		"picklescan__malicious13b.pkl":                 {"_pickle.loads", Dangerous, false},
		"picklescan__malicious16.pkl":                  {"pip.main", Dangerous, false},
		"picklescan__malicious19.pkl":                  {"functools.partial", Dangerous, true}, // calls what a call returned
		"picklescan__malicious23.pkl":                  {"os.system", Dangerous, false},
		"picklescan__broken_model.pkl":                 {"builtins.exec", Dangerous, true},
		"picklescan__malicious-invalid-bytes.pkl":      {"os.system", Dangerous, false},
		"picklescan__keyerror-exploit.pkl":             {"os.system", Dangerous, true},
		"picklescan__sys_module_override_sploit.pkl":   {"torch._utils", Unknown, true},
		"picklescan__GHSA-vvpj-8cmc-gx39.pkl":          {"pkgutil.resolve_name", Dangerous, false},
		"picklescan__GHSA-84r2-jw7c-4r5q.pkl":          {"operator.methodcaller", Dangerous, true}, // calls what a call returned
		"picklescan__GHSA-jgw4-cr84-mqxg.bin":          {"asyncio.unix_events._UnixSubprocessTransport._start", Dangerous, false},
		"picklescan__GHSA-g38g-8gr9-h9xp-uuid.pkl":     {"uuid._get_command_stdout", Dangerous, false},
		"picklescan__types_CodeType.pkl":               {"types.CodeType", Dangerous, false},
		"picklescan__pytorch_magic_bypass.pt":          {"__builtin__.eval", Dangerous, false},
		"modelaudit__multiple_stream_attack.pkl":       {"builtins.eval", Dangerous, false},
		"modelaudit__dill_func.pkl":                    {"dill._dill._create_function", Dangerous, false},
		"modelscan__unsafe_zip_pytorch.pt":             {"posix.system", Dangerous, true},
		"picklescan__malicious1_0x1.zip":               {"builtins.eval", Dangerous, false},
		"picklescan__malicious1_central_directory.zip": {"builtins.eval", Dangerous, false},
		"picklescan__malicious1_crc.zip":               {"builtins.eval", Dangerous, false},
		"picklescan__malicious1_wrong_ext.zip":         {"builtins.eval", Dangerous, false},
		"modelaudit__path_traversal.zip":               {"posix.system", Dangerous, false},
	}
	benign := []string{
		"picklescan__pytorch_model.bin", "captum__titanic_model.pt", "captum__california_model.pt",
		"udacity-dl__checkpoint.pth", "udacity-dl__model_cifar.pt", "candle__test_with_key.pt",
		"candle__fortran_tensor_3d.pth", "gopickle__tensor_bfloat16_proto1.pt",
		"gopickle__tensor_float16_proto5_zip.pt", "picklescan__new_pytorch_model.bin",
		"pytorch__lstm.LE.BOM.pt", "pytorch__lstm.BE.BOM.pt", "pytorch__serialized_py27_torch041.pt",
		"burn__parameter.pt", "burn__legacy_uncloned_views.pt", "picklejl__offset-strides.bin",
		"picklejl__linear_state.bin", "torchsharp-pybridge__adam_load.pth", "burn__batch_norm2d.pt",
	}
	entries, err := os.ReadDir(testkit.CorpusDir())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "SOURCES.md" {
			continue
		}
		name := e.Name()
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(testkit.CorpusDir(), name))
			if err != nil {
				t.Fatal(err)
			}
			var globals []Global
			var scanErr error
			switch {
			case len(data) > 0 && pickleStart(data[0]):
				globals, scanErr = scanStreams(t, data)
			case bytes.HasPrefix(data, []byte("PK\x03\x04")):
				zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
				if err != nil {
					t.Skipf("not a readable zip: %v", err)
				}
				for _, f := range zr.File {
					rc, err := f.Open()
					if err != nil {
						continue // encrypted or unsupported method: the container layer refuses it
					}
					b, _ := io.ReadAll(io.LimitReader(rc, 64<<20))
					rc.Close()
					if len(b) == 0 || b[0] != 0x80 && !strings.HasSuffix(f.Name, ".pkl") {
						continue
					}
					g, err := scanStreams(t, b)
					globals = append(globals, g...)
					if err != nil && scanErr == nil {
						scanErr = err
					}
				}
			default:
				t.Skip("not a pickle or zip")
			}
			seen[name] = true
			if w, ok := malicious[name]; ok {
				g, found := firstOffending(globals)
				if !found || g.Qualified() != w.first || g.Class != w.class {
					t.Errorf("first offending global = %s (%v), want %s (%v); all: %v", g.Qualified(), g.Class, w.first, w.class, qualified(globals))
				}
				if (scanErr != nil) != w.fails {
					t.Errorf("scan error = %v, want failure %v", scanErr, w.fails)
				}
				return
			}
			if slices.Contains(benign, name) {
				if scanErr != nil {
					t.Errorf("benign checkpoint refused: %v", scanErr)
				}
				if g, found := firstOffending(globals); found {
					t.Errorf("benign checkpoint references %s (%v)", g.Qualified(), g.Class)
				}
			}
		})
	}
	for name := range malicious {
		if !seen[name] {
			t.Errorf("%s: not scanned", name)
		}
	}
}

// BenchmarkPrescan scans a protocol-2 torch-like state dict of 100,000 tensors.
func BenchmarkPrescan(b *testing.B) {
	data := newPickler(2).stateDict(100_000)
	lim := limits.Default()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Prescan(bytes.NewReader(data), int64(len(data)), "bench.pkl", lim, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPrescanSalvage checks that globals after a refusal are still reported: CPython reads on
// past most of what the pre-scanner refuses, so a payload placed after an empty LONG1 would
// run in torch while the file was judged merely malformed.
func TestPrescanSalvage(t *testing.T) {
	const payload = "cos\nsystem\n(S'ls'\ntR"
	cases := []struct {
		name    string
		data    string
		kind    fault.Kind
		globals []string
		why     string
	}{
		{"empty-LONG1-then-payload", "\x8a\x00" + payload + ".", fault.Malformed, []string{"os.system"}, "valid Python: LONG1 of no bytes is 0"},
		{"bytes-key-then-payload", "\x80\x02}C\x01aK\x01s" + payload + ".", fault.Malformed, []string{"os.system"}, "valid Python: bytes are a dict key"},
		{"list-in-itself-then-payload", "\x80\x02]q\x00h\x00a" + payload + ".", fault.Malformed, []string{"os.system"}, "valid Python: a list may hold itself"},
		{"PROTO-less-SHORT_BINUNICODE-then-payload", "\x8c\x01a\x8a\x00\x8c\x02os\x8c\x06system\x93.", fault.Malformed, []string{"os.system"}, "a bare pickle without PROTO, STACK_GLOBAL after the refusal"},
		{"refusal-then-EXT1", "\x8a\x00\x82\x01.", fault.Unsafe, nil, "an opcode outside the allowlist after a malformed one makes the stream unsafe"},
		{"payload-after-STOP", "\x8a\x00N." + payload + ".", fault.Malformed, nil, "CPython stops at STOP"},
		{"payload-after-unknown-opcode", "\xff" + payload + ".", fault.Malformed, nil, "CPython stops at an opcode it does not know, so does the walk"},
		{"payload-after-cut-operand", "X\xff\x00\x00\x00" + payload + ".", fault.Malformed, nil, "a length past the input: the payload is inside the operand"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sc, out, err := prescanBytes(t, []byte(c.data), limits.Default())
			if fault.KindOf(err) != c.kind || out != nil {
				t.Fatalf("got %v; want %v (%s)", err, c.kind, c.why)
			}
			if got := qualified(sc.Globals); !slices.Equal(got, c.globals) {
				t.Errorf("globals %v, want %v (%s)", got, c.globals, c.why)
			}
		})
	}
}

// TestIsOpcode checks IsOpcode against the pre-scanner itself: a byte is an opcode exactly when
// the walk does not call it unknown.
func TestIsOpcode(t *testing.T) {
	for b := range 256 {
		_, _, err := prescanBytes(t, []byte{byte(b)}, limits.Default())
		unknown := err != nil && strings.Contains(err.Error(), "unknown opcode")
		if IsOpcode(byte(b)) == unknown {
			t.Errorf("IsOpcode(0x%02x) = %v, but the pre-scanner says: %v", b, IsOpcode(byte(b)), err)
		}
	}
}

// TestPrescanObjectLimit checks that every opcode family creating a value counts against
// MaxObjects, and nothing else does: each pickle passes with MaxObjects at its exact count
// and is refused one below it, at the opcode creating the last value.
func TestPrescanObjectLimit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		data    []byte
		objects int
		offset  int64 // of the opcode creating the last value
	}{
		{"None", []byte("\x80\x02N."), 1, 2},
		{"booleans and a tuple", []byte("\x80\x02(\x88\x89t."), 3, 5},
		{"binary integers and a list", cat("\x80\x02(K\x01M\x01\x00J", le(1, 4), "\x8a\x01\x01\x8b", le(1, 4), "\x01l."), 6, 22},
		{"text numbers and floats", cat("(I1\nL2L\nF1.5\nG", le(0, 8), "l."), 5, 22},
		{"strings and bytes", cat("\x80\x04(\x8c\x01aX", le(1, 4), "bU\x01cC\x01dB", le(1, 4), "e\x8d", le(1, 8), "fVg\nS'h'\n\x96", le(1, 8), "il."), 10, 52},
		{"empty containers and sets", []byte("\x80\x04(]})\x8f(\x91(dl."), 7, 11},
		{"short tuples", []byte("\x80\x02NN\x86NN\x87\x85."), 7, 8},
		{"GLOBAL and REDUCE", []byte("\x80\x02(Nccollections\nOrderedDict\n)Rl."), 5, 31},
		{"STACK_GLOBAL and NEWOBJ", []byte("\x80\x04\x8c\x05torch\x8c\x04Size\x93)\x81."), 5, 17},
		{"NEWOBJ_EX", []byte("\x80\x04\x8c\x05torch\x8c\x04Size\x93)}\x92."), 6, 18},
		{"persistent id", []byte("\x80\x02N\x85Q."), 3, 4},
		{"memo GETs and DUP are not counted", []byte("\x80\x02(Nq\x00h\x00g0\n2t."), 2, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim := limits.Default()
			lim.MaxObjects = tc.objects
			if _, _, err := prescanBytes(t, tc.data, lim); err != nil {
				t.Fatalf("with max-objects %d (its count): %v", tc.objects, err)
			}
			lim.MaxObjects = tc.objects - 1
			_, _, err := prescanBytes(t, tc.data, lim)
			var fe *fault.Error
			if !errors.As(err, &fe) || fe.Kind != fault.Limit || fe.Offset != tc.offset {
				t.Fatalf("with max-objects %d: got %v, want a limit fault at offset %d", lim.MaxObjects, err, tc.offset)
			}
			if want := fmt.Sprintf("pickle builds more than %d objects (limit max-objects %d)", lim.MaxObjects, lim.MaxObjects); fe.Msg != want {
				t.Errorf("message %q, want %q", fe.Msg, want)
			}
			// Refused at any earlier object, the pickle stays a limit fault: the walk past the
			// refusal sees every value pushed (a GLOBAL missing from the stack would make its
			// REDUCE look unsafe).
			for lim.MaxObjects = 1; lim.MaxObjects < tc.objects-1; lim.MaxObjects++ {
				if _, _, err := prescanBytes(t, tc.data, lim); fault.KindOf(err) != fault.Limit {
					t.Errorf("with max-objects %d: got %v, want a limit fault", lim.MaxObjects, err)
				}
			}
		})
	}
}

// TestPrescanCopyFitsStream checks the memory of the stream's copy for a pickle filling its
// record, just past a power of two (where doubling costs most: the copy would take twice the
// stream and every smaller array before it): Prescan allocates about 1.5 times the stream in
// all, and Load's second walk no second copy (gopickle itself reads the string's bytes and
// converts them, twice the string).
func TestPrescanCopyFitsStream(t *testing.T) {
	n := 16<<20 + 1
	data := cat("\x80\x04\x8e", le(uint64(n), 8), string(make([]byte, n)), ".")
	allocs := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	var raw []byte
	got := allocs(func() {
		var err error
		if _, raw, err = Prescan(bytes.NewReader(data), int64(len(data)), "test.pkl", limits.Default(), nil); err != nil {
			t.Fatal(err)
		}
	})
	if bound := uint64(len(data))*8/5 + 1<<20; got > bound {
		t.Errorf("Prescan allocated %d bytes for a %d-byte stream, want under %d", got, len(data), bound)
	}
	got = allocs(func() {
		if _, err := Load(raw, "test.pkl", nil, &PersistentIDs{}, limits.Default()); err != nil {
			t.Fatal(err)
		}
	})
	if bound := uint64(2*n) + 1<<20; got > bound {
		t.Errorf("Load allocated %d bytes for a %d-byte stream, want under %d", got, len(data), bound)
	}
}

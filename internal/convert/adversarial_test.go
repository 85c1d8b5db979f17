package convert

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/ptsafe/converter/internal/fault"
)

// advPickle assembles a protocol-2 pickle opcode by opcode, for object graphs no pickler
// would write: shared subtrees, aliasing through the memo, cycles.
type advPickle struct{ b []byte }

func newAdvPickle() *advPickle { return &advPickle{b: []byte{0x80, 0x02}} }

func (p *advPickle) op(b ...byte) *advPickle { p.b = append(p.b, b...); return p }

func (p *advPickle) u32(op byte, n int) *advPickle {
	p.b = append(p.b, op)
	p.b = binary.LittleEndian.AppendUint32(p.b, uint32(n))
	return p
}

// put stores the top of the stack in memo slot i (LONG_BINPUT); get pushes it (LONG_BINGET).
func (p *advPickle) put(i int) *advPickle { return p.u32('r', i) }
func (p *advPickle) get(i int) *advPickle { return p.u32('j', i) }

// str pushes a BINUNICODE string.
func (p *advPickle) str(s string) *advPickle { p.u32('X', len(s)); return p.op([]byte(s)...) }

func (p *advPickle) global(module, name string) *advPickle {
	return p.op('c').op([]byte(module + "\n" + name + "\n")...)
}

// tensor pushes torch._utils._rebuild_tensor_v2 of a 1-D float32 tensor of numel elements
// over storage key, exactly as torch.save writes one (without memoizing its parts).
func (p *advPickle) tensor(key string, numel int) *advPickle {
	p.global("torch._utils", "_rebuild_tensor_v2").op('(')
	p.op('(').str("storage").global("torch", "FloatStorage").str(key).str("cpu").op('K', byte(numel), 't', 'Q')
	p.op('K', 0)                                        // storage offset
	p.op('K', byte(numel), 0x85)                        // size
	p.op('K', 1, 0x85)                                  // stride
	p.op(0x89)                                          // requires_grad False
	p.global("collections", "OrderedDict").op(')', 'R') // backward hooks
	return p.op('t', 'R')
}

func (p *advPickle) stop() []byte { return append(p.b, '.') }

// advEntry is one record of a hand-made torch zip.
type advEntry struct {
	name   string
	data   []byte
	method uint16
}

// advZip writes a torch.save-like archive: every entry under "archive/", stored unless the
// entry says otherwise.
func advZip(t testing.TB, entries ...advEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: e.name, Method: e.method})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// advCheckpoint wraps a data.pkl and one 4-element float32 storage "0" into a torch zip.
func advCheckpoint(t testing.TB, pkl []byte) []byte {
	return advZip(t,
		advEntry{name: "archive/data.pkl", data: pkl},
		advEntry{name: "archive/data/0", data: make([]byte, 16)},
		advEntry{name: "archive/version", data: []byte("3\n")},
	)
}

// advConvert converts data with default options and returns the error (cvConvert checks that a
// failure leaves no output, and verifies a success against its source).
func advConvert(t *testing.T, data []byte) error {
	t.Helper()
	_, err := cvConvert(t, data, "model.pt")
	return err
}

// dagPickle builds a state dict whose one tensor is reached through 2^levels paths: level k is
// {"a": level k-1, "b": level k-1}, the second reference a memo GET of the first.
func dagPickle(levels int) []byte {
	p := newAdvPickle().tensor("0", 4).put(0).op('0')
	for k := 1; k <= levels; k++ {
		p.op('}').op('(').str("a").get(k - 1).str("b").get(k - 1).op('u').put(k).op('0')
	}
	return p.get(levels).stop()
}

// deepAliasedListPickle nests lists depth levels deep through the memo, so that the
// pre-scanner's symbolic stack sees depth 1 at every step: GET list k, push a new list k+1,
// PUT it, APPEND it to list k, POP. The innermost list holds the tensor.
func deepAliasedListPickle(depth int) []byte {
	p := newAdvPickle().op(']').put(0)
	for k := 0; k < depth; k++ {
		p.op('0').get(k).op(']').put(k + 1).op('a')
	}
	p.op('0').get(depth).tensor("0", 4).op('a', '0')
	return p.get(0).stop()
}

// deepStackListPickle nests lists depth levels deep on the stack: depth EMPTY_LISTs, then an
// APPEND for each.
func deepStackListPickle(depth int) []byte {
	p := newAdvPickle()
	p.b = append(p.b, bytes.Repeat([]byte{']'}, depth)...)
	p.b = append(p.b, bytes.Repeat([]byte{'a'}, depth-1)...)
	return p.stop()
}

// TestObjectGraphBudget feeds object graphs built to exhaust a naive walker through the whole
// conversion path: each must end in a clean classified fault (exit 4), never a stack overflow,
// a hang or an out-of-memory kill.
func TestObjectGraphBudget(t *testing.T) {
	cases := []struct {
		name string
		pkl  []byte
		want []fault.Kind
		why  string
	}{
		{"dag-2^100-paths", dagPickle(100), []fault.Kind{fault.Limit},
			"one tensor through 2^100 dotted names: only a walk budget stops the enumeration"},
		{"dag-2^22-paths", dagPickle(22), []fault.Kind{fault.Limit},
			"4M names from 700 bytes: within max-tensors, refused by the names' header size before they are built"},
		{"list-nested-1M-deep-through-memo", deepAliasedListPickle(1_000_000), []fault.Kind{fault.Limit},
			"aliasing hides the nesting from the pre-scanner: the walk must bound its own depth"},
		{"list-nested-1M-deep-on-stack", deepStackListPickle(1_000_000), []fault.Kind{fault.Limit},
			"nesting on the stack is refused by the pre-scanner before gopickle builds it"},
		{"list-contains-itself", newAdvPickle().op(']').put(0).get(0).op('a').stop(), []fault.Kind{fault.Malformed},
			"gopickle's Stringer overflows the stack on a self-containing list"},
		{"list-cycle-through-two-lists", newAdvPickle().
			op(']').put(0).op(']').put(1).op('a', '0').
			get(1).get(0).op('a', '0').
			get(0).stop(), []fault.Kind{fault.Malformed},
			"L0 = [L1], L1 = [L0]: a cycle the pre-scanner cannot see"},
		{"dict-cycle-with-tensor", newAdvPickle().
			op('}').put(0).str("w").tensor("0", 4).op('s').
			str("self").get(0).op('s').stop(), []fault.Kind{fault.Malformed},
			"a state dict holding itself next to a real tensor"},
		{"dict-list-cycle", newAdvPickle().
			op('}').put(0).str("layers").op(']').put(1).op('s', '0').
			get(1).get(0).op('a', '0').
			get(0).stop(), []fault.Kind{fault.Malformed},
			"d = {'layers': l}, l = [d]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := advConvert(t, advCheckpoint(t, c.pkl))
			if err == nil {
				t.Fatalf("converted; want %v (%s)", c.want, c.why)
			}
			got := fault.KindOf(err)
			for _, k := range c.want {
				if got == k {
					return
				}
			}
			t.Fatalf("error kind %s (%v); want %v (%s)", got, err, c.want, c.why)
		})
	}
}

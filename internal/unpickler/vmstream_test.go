package unpickler

import (
	"bytes"
	"testing"

	"github.com/ptsafe/converter/internal/limits"
)

// TestVMStreamDeadStores runs the VM's copy of small streams: memo stores that no GET reads
// before their key is stored again or the stream ends are removed (they would each cost an
// entry in gopickle's memo map), the ones a GET reads stay, FRAME lengths follow, and a stream
// with a MEMOIZE, whose keys count the memo's entries, keeps every store. Each stream must
// still load to what CPython builds.
func TestVMStreamDeadStores(t *testing.T) {
	a, b := "X\x01\x00\x00\x00a", "X\x01\x00\x00\x00b"
	frame := func(n int) string { return "\x95" + string(le(uint64(n), 8)) }
	cases := []struct {
		name, in, want, root string
	}{
		{"unread stores dropped", "\x80\x02]q\x00" + a + "q\x01a.", "\x80\x02]" + a + "a.", `["a"]`},
		{"store overwritten before any read dropped, the one read kept",
			"(" + a + "q\x00" + b + "q\x00h\x00l.", "(" + a + b + "q\x00h\x00l.", `["a", "b", "b"]`},
		{"store read then overwritten kept, the unread overwrite dropped",
			"(" + a + "q\x00h\x00" + b + "q\x00l.", "(" + a + "q\x00h\x00" + b + "l.", `["a", "a", "b"]`},
		{"LONG_BINPUT and text PUT", "(" + a + "r\x00\x01\x00\x00Vb\np7\nl.", "(" + a + "Vb\nl.", `["a", "b"]`},
		{"dropped next to a rewritten STRING", "(S'\\x41'\np0\nl.", "(X\x01\x00\x00\x00Al.", `["A"]`},
		{"frame length follows", "\x80\x04" + frame(4) + "]q\x00" + "." + "",
			"\x80\x04" + frame(2) + "].", "[]"},
		{"two frames", "\x80\x04" + frame(3) + "]q\x00" + frame(3) + "q\x01.",
			"\x80\x04" + frame(1) + "]" + frame(1) + ".", "[]"},
		{"MEMOIZE keeps every store", "\x80\x04(\x8c\x01a\x94\x8c\x01bq\x05\x8c\x01c\x94h\x02l.",
			"\x80\x04(\x8c\x01a\x94\x8c\x01bq\x05\x8c\x01c\x94h\x02l.", `["a", "b", "c", "c"]`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := vmCopy([]byte(c.in), "t.pkl", &Policy{}, limits.Default(), true)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, []byte(c.want)) {
				t.Errorf("VM stream %q, want %q", got, c.want)
			}
			root, err := Load([]byte(c.in), "t.pkl", &Policy{}, &PersistentIDs{}, limits.Default())
			if err != nil {
				t.Fatal(err)
			}
			if d := Describe(root); d != c.root {
				t.Errorf("loads as %s, want %s", d, c.root)
			}
		})
	}
}

// TestVMStreamTorchLike checks that a state dict as torch writes it reaches gopickle with only
// the stores it reads: the memoized globals, one per distinct global.
func TestVMStreamTorchLike(t *testing.T) {
	raw := newPickler(2).stateDict(50)
	got, err := vmCopy(raw, "t.pkl", &Policy{}, limits.Default(), true)
	if err != nil {
		t.Fatal(err)
	}
	// _rebuild_tensor_v2, FloatStorage and OrderedDict are read again. (No operand of this
	// stream holds the byte 'q'.)
	if n, want := bytes.Count(got, []byte{'q'}), 3; n != want {
		t.Errorf("%d BINPUT bytes in the VM stream, want %d", n, want)
	}
	tree, _, err := loadTree(t, raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(tree.Tensors) != 50 {
		t.Errorf("%d tensors, want 50", len(tree.Tensors))
	}
}

package unpickler

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
)

// rebuild writes fn(storage, offset, size, stride, False, OrderedDict()[, extra...]) with a zip
// persistent id for storage (key, class, numel), in protocol 2.
func (p *pickler) rebuild(fn string, class [2]string, key string, numel, offset int, size, stride []int, extra func()) {
	p.global("torch._utils", fn)
	p.op('(')
	p.op('(')
	p.str("storage")
	p.global(class[0], class[1])
	p.str(key)
	p.str("cpu")
	p.int(numel)
	p.op('t', 'Q')
	p.int(offset)
	for _, dims := range [][]int{size, stride} {
		p.op('(')
		for _, d := range dims {
			if d > 1<<31-1 {
				p.op(append([]byte{0x8a, 8}, le(uint64(d), 8)...)...) // LONG1, as CPython writes big ints
				continue
			}
			p.int(d)
		}
		p.op('t')
	}
	p.falseVal()
	p.orderedDict()
	if extra != nil {
		extra()
	}
	p.op('t', 'R')
}

// oneTensor wraps a tensor writer into {"w": tensor} and finishes the stream.
func oneTensor(write func(p *pickler)) []byte {
	p := newPickler(2)
	p.op('}')
	p.str("w")
	write(p)
	p.op('s', '.')
	return p.b
}

// loadTree runs the whole read path over one stream: pre-scan, VM, flatten.
func loadTree(t *testing.T, raw []byte) (*Tree, *PersistentIDs, error) {
	t.Helper()
	lim := limits.Default()
	sc, data, err := Prescan(bytes.NewReader(raw), int64(len(raw)), "data.pkl", lim, &Policy{})
	if err != nil {
		return nil, nil, err
	}
	for _, g := range sc.Globals {
		if g.Class == Unknown || g.Class == Dangerous {
			t.Fatalf("test stream uses refused global %s", g.Qualified())
		}
	}
	pids := &PersistentIDs{}
	root, err := Load(data, "data.pkl", &Policy{}, pids, lim)
	if err != nil {
		return nil, pids, err
	}
	tree, err := Flatten(root, "", "data.pkl", lim)
	return tree, pids, err
}

func TestVMTensorForms(t *testing.T) {
	float := [2]string{"torch", "FloatStorage"}
	untyped := [2]string{"torch.storage", "UntypedStorage"}
	dt := func(name string) func(p *pickler) func() {
		return func(p *pickler) func() { return func() { p.global("torch", name) } }
	}
	cases := []struct {
		name        string
		write       func(p *pickler)
		dtype       dtype.DType
		shape       []int64
		unsupported string // substring of TensorRef.Unsupported
		errKind     fault.Kind
		errHas      string
	}{
		{name: "v2 float32 matrix", dtype: dtype.F32, shape: []int64{3, 4},
			write: func(p *pickler) { p.rebuild("_rebuild_tensor_v2", float, "0", 12, 0, []int{3, 4}, []int{4, 1}, nil) }},
		{name: "v3 float8_e4m3fn over an untyped storage (numel in bytes)", dtype: dtype.F8_E4M3, shape: []int64{2, 8},
			write: func(p *pickler) {
				p.rebuild("_rebuild_tensor_v3", untyped, "0", 16, 0, []int{2, 8}, []int{8, 1}, dt("float8_e4m3fn")(p))
			}},
		{name: "v3 uint16", dtype: dtype.U16, shape: []int64{4},
			write: func(p *pickler) {
				p.rebuild("_rebuild_tensor_v3", untyped, "0", 8, 0, []int{4}, []int{1}, dt("uint16")(p))
			}},
		{name: "v3 complex32 is refused by name", unsupported: "complex32",
			write: func(p *pickler) {
				p.rebuild("_rebuild_tensor_v3", untyped, "0", 16, 0, []int{4}, []int{1}, dt("complex32")(p))
			}},
		{name: "v3 storage not a whole number of elements", errKind: fault.Malformed, errHas: "whole number",
			write: func(p *pickler) {
				p.rebuild("_rebuild_tensor_v3", untyped, "0", 7, 0, []int{3}, []int{1}, dt("uint16")(p))
			}},
		{name: "v2 over an untyped storage", errKind: fault.Malformed, errHas: "_rebuild_tensor_v3",
			write: func(p *pickler) { p.rebuild("_rebuild_tensor_v2", untyped, "0", 16, 0, []int{4}, []int{1}, nil) }},
		{name: "conjugate-bit metadata is refused", unsupported: "conjugate",
			write: func(p *pickler) {
				p.rebuild("_rebuild_tensor_v2", float, "0", 4, 0, []int{4}, []int{1}, func() {
					p.op('}')
					p.str("conj")
					p.op(0x88, 's')
				})
			}},
		{name: "empty metadata dict is accepted", dtype: dtype.F32, shape: []int64{4},
			write: func(p *pickler) {
				p.rebuild("_rebuild_tensor_v2", float, "0", 4, 0, []int{4}, []int{1}, func() { p.op('}') })
			}},
		{name: "view past the end of its storage", errKind: fault.Malformed, errHas: "reaches element",
			write: func(p *pickler) { p.rebuild("_rebuild_tensor_v2", float, "0", 12, 1, []int{3, 4}, []int{4, 1}, nil) }},
		{name: "stride overflow", errKind: fault.Malformed, errHas: "overflow",
			write: func(p *pickler) {
				p.rebuild("_rebuild_tensor_v2", float, "0", 12, 0, []int{3, 4}, []int{1 << 62, 1}, nil)
			}},
		{name: "empty tensor at the end of its storage", dtype: dtype.F32, shape: []int64{0},
			write: func(p *pickler) { p.rebuild("_rebuild_tensor_v2", float, "0", 4, 4, []int{0}, []int{1}, nil) }},
		{name: "quantized storage class", unsupported: "quantized",
			write: func(p *pickler) {
				p.rebuild("_rebuild_tensor_v2", [2]string{"torch", "QInt8Storage"}, "0", 4, 0, []int{4}, []int{1}, nil)
			}},
		{name: "parameter unwraps to its data", dtype: dtype.F32, shape: []int64{3, 4},
			write: func(p *pickler) {
				p.global("torch._utils", "_rebuild_parameter")
				p.op('(')
				p.rebuild("_rebuild_tensor_v2", float, "0", 12, 0, []int{3, 4}, []int{4, 1}, nil)
				p.op(0x88)
				p.orderedDict()
				p.op('t', 'R')
			}},
		{name: "_rebuild_from_type_v2 calls its sentinel and drops the subclass", dtype: dtype.F32, shape: []int64{4},
			write: func(p *pickler) {
				p.global("torch._tensor", "_rebuild_from_type_v2")
				p.op('(')
				p.global("torch._utils", "_rebuild_tensor_v2")
				p.global("torch", "Tensor")
				p.op('(', '(')
				p.str("storage")
				p.global("torch", "FloatStorage")
				p.str("0")
				p.str("cpu")
				p.int(4)
				p.op('t', 'Q')
				p.int(0)
				p.op('(')
				p.int(4)
				p.op('t', '(')
				p.int(1)
				p.op('t')
				p.falseVal()
				p.orderedDict()
				p.op('t', '}', 't', 'R')
			}},
		{name: "_rebuild_from_type_v2 refuses a non-tensor function", errKind: fault.Malformed, errHas: "rebuild function",
			write: func(p *pickler) {
				p.global("torch._tensor", "_rebuild_from_type_v2")
				p.op('(')
				p.global("collections", "OrderedDict")
				p.global("torch", "Tensor")
				p.op(')', '}', 't', 'R')
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tree, _, err := loadTree(t, oneTensor(c.write))
			if c.errHas != "" {
				if err == nil || fault.KindOf(err) != c.errKind || !strings.Contains(err.Error(), c.errHas) {
					t.Fatalf("err = %v; want %s containing %q", err, c.errKind, c.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(tree.Tensors) != 1 || tree.Tensors[0].Name != "w" {
				t.Fatalf("tensors %+v; want one named w", tree.Tensors)
			}
			ref := tree.Tensors[0].Tensor
			if c.unsupported != "" {
				if !strings.Contains(ref.Unsupported, c.unsupported) {
					t.Fatalf("Unsupported = %q; want %q", ref.Unsupported, c.unsupported)
				}
				return
			}
			if ref.Unsupported != "" || ref.DType != c.dtype || len(ref.Shape) != len(c.shape) {
				t.Fatalf("tensor %s %v (unsupported %q); want %s %v", ref.DType, ref.Shape, ref.Unsupported, c.dtype, c.shape)
			}
			for i := range c.shape {
				if ref.Shape[i] != c.shape[i] {
					t.Fatalf("shape %v; want %v", ref.Shape, c.shape)
				}
			}
		})
	}
}

// TestVMStorageConsistency: two references to one storage key must agree, as torch would
// otherwise silently reuse the first.
func TestVMStorageConsistency(t *testing.T) {
	float := [2]string{"torch", "FloatStorage"}
	p := newPickler(2)
	p.op('}', '(')
	p.str("a")
	p.rebuild("_rebuild_tensor_v2", float, "0", 12, 0, []int{12}, []int{1}, nil)
	p.str("b")
	p.rebuild("_rebuild_tensor_v2", float, "0", 6, 0, []int{6}, []int{1}, nil)
	p.op('u', '.')
	_, _, err := loadTree(t, p.b)
	if err == nil || !strings.Contains(err.Error(), "two different types or sizes") {
		t.Fatalf("err = %v; want a storage mismatch", err)
	}
}

// TestVMRefusesWhatThePrescannerWouldRefuse: the VM's own FindClass fails closed on a global
// outside the allowlist even if a caller skipped the verdict.
func TestVMRefusesUnknownGlobals(t *testing.T) {
	p := newPickler(2)
	p.global("os", "system")
	p.str("echo pwned")
	p.op(0x85, 'R', '.')
	_, err := Load(p.b, "data.pkl", &Policy{}, &PersistentIDs{}, limits.Default())
	if fault.KindOf(err) != fault.Unsafe {
		t.Fatalf("err = %v; want unsafe", err)
	}
}

func TestFlattenNaming(t *testing.T) {
	float := [2]string{"torch", "FloatStorage"}
	tensor := func(p *pickler, key string) {
		p.rebuild("_rebuild_tensor_v2", float, key, 4, 0, []int{4}, []int{1}, nil)
	}
	// {"state_dict": {"enc": [t0, {"7": t1}]}, "epoch": 3} with int key 7 → state_dict unwrapped.
	p := newPickler(2)
	p.op('}', '(')
	p.str("state_dict")
	p.op('}')
	p.str("enc")
	p.op(']', '(')
	tensor(p, "0")
	p.op('}')
	p.int(7)
	tensor(p, "1")
	p.op('s', 'e', 's')
	p.str("epoch")
	p.int(3)
	p.op('u', '.')
	tree, _, err := loadTree(t, p.b)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range tree.Tensors {
		names = append(names, n.Name)
	}
	if got, want := strings.Join(names, ","), "enc.0,enc.1.7"; got != want {
		t.Errorf("names %s; want %s", got, want)
	}
	if tree.Selected != "state_dict" || len(tree.Dropped) != 1 || tree.Dropped[0].Path != "epoch" {
		t.Errorf("selected %q dropped %+v; want state_dict and epoch dropped", tree.Selected, tree.Dropped)
	}
}

// BenchmarkLoadFlatten runs the restricted VM and the graph walk over a protocol-2 torch-like
// state dict of 100,000 tensors (the pre-scan is BenchmarkPrescan).
func BenchmarkLoadFlatten(b *testing.B) {
	data := newPickler(2).stateDict(100_000)
	lim := limits.Default()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		root, err := Load(data, "bench.pkl", &Policy{}, &PersistentIDs{}, lim)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Flatten(root, "", "bench.pkl", lim); err != nil {
			b.Fatal(err)
		}
	}
}

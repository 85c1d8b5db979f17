// Package unpickler reads PyTorch checkpoint pickles without executing them: a pre-scanner of our
// own walks every opcode first (bounds, memo, marks, globals), and only a stream that passes is
// run through gopickle v0.3.0 as a bare VM whose every global resolves to a sentinel we wrote.
// The result is an object graph whose tensors are *TensorRef values pointing into storages by
// key; Flatten turns it into named tensors.
//
// This package must never import, call or construct anything a pickle names: globals outside the
// allowlist fail the load, inert data types become opaque records, and nothing here reads tensor
// bytes.
package unpickler

import (
	"bytes"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"slices"
	"strings"

	"github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
)

// StorageRef is one storage a pickle references by persistent id.
type StorageRef struct {
	Key      string
	Location string
	// DType is the element type of a typed storage; Invalid for an untyped storage, whose
	// tensors carry the dtype.
	DType dtype.DType
	// NBytes is the storage size in bytes.
	NBytes int64
	// Refused is set for storage classes the converter refuses (quantized, complex128).
	Refused string
}

// TensorRef is a tensor rebuilt symbolically: a view of a storage.
type TensorRef struct {
	Storage *StorageRef
	DType   dtype.DType
	// Offset and Stride are in elements of DType, as torch records them.
	Offset int64
	Shape  []int64
	Stride []int64
	// Unsupported, when set, says why this tensor cannot be written (quantized, sparse, meta,
	// conjugated, ...); the tensor keeps its place in the graph so the error can name it.
	Unsupported string
}

// Numel returns the element count; the shape has been checked not to overflow.
func (t *TensorRef) Numel() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Opaque is an inert object (argparse.Namespace, a set, numpy bytes, ...) kept as a record and
// never interpreted.
type Opaque struct {
	Class string
	Args  []any
	State any
}

// PySetState records BUILD state without applying it.
func (o *Opaque) PySetState(state any) error {
	o.State = state
	return nil
}

// PersistentIDs resolves persistent ids; the zero value accepts the zip 5-tuple schema only.
type PersistentIDs struct {
	// Legacy accepts the legacy 6-tuple ('storage', type, key, location, numel, view_metadata)
	// whose last element must be None.
	Legacy bool
	byKey  map[string]*StorageRef
}

// Storages returns every storage referenced so far, by key.
func (p *PersistentIDs) Storages() map[string]*StorageRef { return p.byKey }

// Load runs the VM over raw, a stream that Prescan accepted, and returns the root object.
// Globals resolve through pol (allowed ones to sentinels, inert ones to opaque records);
// anything else fails. A panic inside gopickle becomes a Malformed fault.
//
// gopickle reads protocol-0 strings without decoding them and resolves a few builtins itself,
// so Load pre-scans raw again and runs gopickle over a copy with those opcodes rewritten, and
// without the memo stores nothing reads (see vmStream): what it builds is what CPython builds.
func Load(raw []byte, entry string, pol *Policy, pids *PersistentIDs, lim limits.Limits) (root any, err error) {
	return load(raw, entry, pol, pids, lim, true)
}

// load is Load; dropDead false keeps every memo store in the VM's copy (the fuzz test's oracle).
func load(raw []byte, entry string, pol *Policy, pids *PersistentIDs, lim limits.Limits, dropDead bool) (root any, err error) {
	if pids.byKey == nil {
		pids.byKey = map[string]*StorageRef{}
	}
	stream, err := vmCopy(raw, entry, pol, lim, dropDead)
	if err != nil {
		return nil, err
	}
	vm := &machine{entry: entry, pol: pol, lim: lim, copies: aliasFactor*int64(len(raw)) + aliasFloor}
	u := pickle.NewUnpickler(bytes.NewReader(stream))
	u.FindClass = vm.findClass
	u.PersistentLoad = func(pid any) (any, error) { return pids.load(pid, lim) }
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, fault.New(fault.Malformed, entry, "pickle VM panicked: %s", Describe(r))
		}
	}()
	root, err = u.Load()
	if err != nil {
		if _, ok := err.(*fault.Error); ok {
			return nil, err
		}
		// gopickle's own messages format stack values with %#v: keep only their start.
		return nil, fault.New(fault.Malformed, entry, "pickle VM: %s", Describe(err))
	}
	return root, nil
}

// vmCopy pre-scans raw again and returns the copy of it that gopickle runs (see vmStream),
// without the dead memo stores if dropDead is set.
func vmCopy(raw []byte, entry string, pol *Policy, lim limits.Limits, dropDead bool) ([]byte, error) {
	s := newScanner(bytes.NewReader(raw), int64(len(raw)), entry, lim, pol)
	// The scanner copies what it reads into its buffer; pointed at raw itself, it writes each
	// byte over the same byte, so this second walk costs no second copy of the stream.
	s.buf = raw[:0:len(raw)]
	s.vm = true
	if dropDead {
		s.dead = newBitset(len(raw))
	}
	if err := s.run(); err != nil {
		return nil, err
	}
	return s.vmStream(), nil
}

type machine struct {
	entry string
	pol   *Policy
	lim   limits.Limits
	// copies is how many more items dict, list and OrderedDict may copy from their argument:
	// each call copies, so a list built once and passed to list() K times would otherwise cost
	// K times its length from a few bytes per call.
	copies int64
}

// copy takes n items from the copy budget.
func (m *machine) copy(class string, n int) error {
	m.copies -= int64(n)
	if m.copies < 0 {
		return fault.New(fault.Limit, m.entry, "%s: dict and list constructors copy more than %d times the pickle's length in items", class, aliasFactor)
	}
	return nil
}

func (m *machine) findClass(module, name string) (any, error) {
	module, name = Normalize(strings.TrimPrefix(module, vmAlias), name)
	q := module + "." + name
	switch m.pol.Classify(module, name) {
	case Allowed:
		if s := m.sentinel(module, name); s != nil {
			return s, nil
		}
		return nil, fault.New(fault.Internal, m.entry, "allowed global %s has no sentinel", q)
	case Inert:
		switch q {
		case "builtins.dict":
			return dictClass{m: m, name: q}, nil
		case "collections.defaultdict":
			return dictClass{m: m, name: q, factory: true}, nil
		case "collections.Counter":
			return dictClass{m: m, name: q, mappingOnly: true}, nil
		case "builtins.list":
			return listClass{m}, nil
		case "copyreg._reconstructor":
			return reconstructor{}, nil
		}
		return opaqueClass(q), nil
	default:
		return nil, fault.New(fault.Unsafe, m.entry, "global %s is not allowed", q)
	}
}

func (m *machine) sentinel(module, name string) any {
	switch module + "." + name {
	case "torch._utils._rebuild_tensor_v2":
		return rebuild{m: m, v3: false}
	case "torch._utils._rebuild_tensor_v3":
		return rebuild{m: m, v3: true}
	case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
		return parameter{}
	case "torch._tensor._rebuild_from_type_v2":
		return fromType{}
	case "torch.nn.parameter.Parameter":
		return parameter{}
	case "torch.Tensor":
		return tensorClass{}
	case "torch.Size":
		return sizeClass{}
	case "collections.OrderedDict":
		return orderedDictClass{m}
	case "torch.storage.UntypedStorage", "torch.UntypedStorage":
		return storageClass{untyped: true}
	case "torch.serialization._get_layout":
		return unsupportedRebuild("sparse tensor layouts")
	case "torch._utils._rebuild_qtensor":
		return unsupportedRebuild("quantized tensor")
	case "torch._utils._rebuild_sparse_tensor":
		return unsupportedRebuild("sparse tensor")
	case "torch._utils._rebuild_meta_tensor_no_storage":
		return unsupportedRebuild("meta tensor (no data)")
	case "torch._utils._rebuild_wrapper_subclass":
		return unsupportedRebuild("tensor subclass without storage")
	case "torch._utils._rebuild_device_tensor_from_numpy", "torch._utils._rebuild_device_tensor_from_cpu_tensor":
		return unsupportedRebuild("device tensor")
	case "torch._utils._rebuild_tensor":
		return unsupportedRebuild("pre-0.4 tensor rebuild (_rebuild_tensor v1)")
	}
	if module == "torch" || module == "torch.cuda" {
		if len(name) > len("Storage") && name[len(name)-len("Storage"):] == "Storage" {
			cls := name[:len(name)-len("Storage")] + "Storage"
			if d, ok := dtype.FromStorageClass(cls); ok {
				return storageClass{dt: d}
			}
			if why, ok := dtype.RefusedStorageClasses[cls]; ok {
				return storageClass{refused: why}
			}
			return nil
		}
		if module == "torch" {
			if d, ok := dtype.FromTorch(name); ok {
				return dtypeValue{dt: d, name: name}
			}
			if why, ok := dtype.Refused[name]; ok {
				return dtypeValue{name: name, refused: why}
			}
			if len(name) > 4 && name[:4] == "per_" {
				return dtypeValue{name: name, refused: "quantization scheme"}
			}
		}
	}
	return nil
}

// storageClass is a storage type passed in a persistent id: a dtype carrier, never constructed.
type storageClass struct {
	dt      dtype.DType
	untyped bool
	refused string
}

// dtypeValue is a torch.<dtype> global used as a value (the v3 rebuild argument).
type dtypeValue struct {
	dt      dtype.DType
	name    string
	refused string
}

// rebuild implements torch._utils._rebuild_tensor_v2 and _v3 symbolically.
type rebuild struct {
	m  *machine
	v3 bool
}

func (r rebuild) Call(args ...any) (any, error) {
	entry := r.m.entry
	fn := "_rebuild_tensor_v2"
	want := 6
	if r.v3 {
		fn, want = "_rebuild_tensor_v3", 7
	}
	if len(args) != want && len(args) != want+1 {
		return nil, fault.New(fault.Malformed, entry, "%s: %d arguments, want %d or %d", fn, len(args), want, want+1)
	}
	st, ok := args[0].(*StorageRef)
	if !ok {
		return nil, fault.New(fault.Malformed, entry, "%s: first argument is %s, want a storage", fn, typeName(args[0]))
	}
	t := &TensorRef{Storage: st, DType: st.DType}
	var err error
	if t.Offset, err = toInt64(args[1]); err != nil || t.Offset < 0 {
		return nil, fault.New(fault.Malformed, entry, "%s: storage offset %s is not a non-negative integer", fn, Describe(args[1]))
	}
	if t.Shape, err = intTuple(args[2], r.m.lim.MaxDims); err != nil {
		return nil, fault.Wrap(fault.Malformed, entry, err, "%s: size", fn)
	}
	if t.Stride, err = intTuple(args[3], r.m.lim.MaxDims); err != nil {
		return nil, fault.Wrap(fault.Malformed, entry, err, "%s: stride", fn)
	}
	if len(t.Shape) != len(t.Stride) {
		return nil, fault.New(fault.Malformed, entry, "%s: size has %d dims, stride %d", fn, len(t.Shape), len(t.Stride))
	}
	if _, ok := args[4].(bool); !ok {
		return nil, fault.New(fault.Malformed, entry, "%s: requires_grad is %s, want a bool", fn, typeName(args[4]))
	}
	switch args[5].(type) {
	case nil, *types.OrderedDict, *types.Dict:
	default:
		return nil, fault.New(fault.Malformed, entry, "%s: backward_hooks is %s", fn, typeName(args[5]))
	}
	meta := want
	if r.v3 {
		dv, ok := args[6].(dtypeValue)
		if !ok {
			return nil, fault.New(fault.Malformed, entry, "%s: dtype argument is %s", fn, typeName(args[6]))
		}
		if !st.untyped() {
			return nil, fault.New(fault.Malformed, entry, "%s: needs an UntypedStorage", fn)
		}
		if dv.refused != "" {
			t.Unsupported = dv.refused
		}
		t.DType = dv.dt
	} else if st.untyped() {
		return nil, fault.New(fault.Malformed, entry, "%s: an UntypedStorage needs _rebuild_tensor_v3", fn)
	}
	if len(args) == meta+1 && !emptyDict(args[meta]) {
		t.Unsupported = "tensor with conjugate/negative-bit metadata"
	}
	if st.Refused != "" {
		t.Unsupported = st.Refused
	}
	if t.Unsupported != "" {
		return t, nil
	}
	if err := checkExtent(t); err != nil {
		return nil, fault.Wrap(fault.Malformed, entry, err, "%s: storage %s", fn, Describe(st.Key))
	}
	return t, nil
}

func (s *StorageRef) untyped() bool { return s.DType == dtype.Invalid && s.Refused == "" }

// checkExtent verifies with checked arithmetic that every element of t lies inside its storage.
func checkExtent(t *TensorRef) error {
	size := int64(t.DType.Size())
	if size == 0 {
		return fmt.Errorf("no dtype")
	}
	if t.Storage.NBytes%size != 0 {
		return fmt.Errorf("storage of %d bytes is not a whole number of %s elements", t.Storage.NBytes, t.DType)
	}
	n := t.Storage.NBytes / size
	numel := int64(1)
	last := t.Offset // index of the last element
	for i, d := range t.Shape {
		if d < 0 || t.Stride[i] < 0 {
			return fmt.Errorf("negative size or stride")
		}
		if d != 0 && numel > math.MaxInt64/d {
			return fmt.Errorf("element count overflows")
		}
		numel *= d
	}
	if numel == 0 {
		if t.Offset > n {
			return fmt.Errorf("empty tensor offset %d past storage of %d elements", t.Offset, n)
		}
		return nil
	}
	for i, d := range t.Shape {
		s := t.Stride[i]
		if s != 0 && d-1 > (math.MaxInt64-last)/s {
			return fmt.Errorf("extent overflows")
		}
		last += (d - 1) * s
	}
	if last >= n {
		return fmt.Errorf("view reaches element %d of a storage of %d elements", last, n)
	}
	return nil
}

// parameter implements _rebuild_parameter(_with_state) and Parameter(data[, requires_grad]):
// the parameter is its data tensor; any attribute state is dropped.
type parameter struct{}

func (parameter) Call(args ...any) (any, error) {
	if len(args) < 1 {
		return nil, fmt.Errorf("parameter: no data argument")
	}
	if _, ok := args[0].(*TensorRef); !ok {
		return nil, fmt.Errorf("parameter: data is %s, want a tensor", typeName(args[0]))
	}
	return args[0], nil
}

func (p parameter) PyNew(args ...any) (any, error) { return p.Call(args...) }

// fromType implements torch._tensor._rebuild_from_type_v2(func, new_type, args, state): it calls
// func (which must itself be a sentinel) and drops the subclass and its Python state.
type fromType struct{}

func (fromType) Call(args ...any) (any, error) {
	if len(args) != 4 {
		return nil, fmt.Errorf("_rebuild_from_type_v2: %d arguments, want 4", len(args))
	}
	fn, ok := args[0].(types.Callable)
	if !ok {
		return nil, fmt.Errorf("_rebuild_from_type_v2: func is %s", typeName(args[0]))
	}
	switch fn.(type) {
	case rebuild, parameter, unsupportedRebuild:
	default:
		return nil, fmt.Errorf("_rebuild_from_type_v2: func is %s, want a tensor rebuild function", typeName(fn))
	}
	switch args[1].(type) {
	case tensorClass, parameter:
	default:
		return nil, fmt.Errorf("_rebuild_from_type_v2: new_type is %s, want torch.Tensor or Parameter", typeName(args[1]))
	}
	inner, ok := args[2].(*types.Tuple)
	if !ok {
		return nil, fmt.Errorf("_rebuild_from_type_v2: args is %s, want a tuple", typeName(args[2]))
	}
	return fn.Call(*inner...)
}

// tensorClass is torch.Tensor used as new_type.
type tensorClass struct{}

// sizeClass is torch.Size: Size(tuple) is the tuple.
type sizeClass struct{}

func (sizeClass) Call(args ...any) (any, error) {
	if len(args) == 0 {
		return types.NewTupleFromSlice(nil), nil
	}
	return args[0], nil
}

// unsupportedRebuild stands for a torch rebuild function the converter recognises but refuses:
// it yields a TensorRef marked Unsupported so the error can name the tensor.
type unsupportedRebuild string

func (u unsupportedRebuild) Call(args ...any) (any, error) {
	return &TensorRef{Unsupported: string(u)}, nil
}

// dictClass builds the dicts of dict and the dict-like inert types from the positional
// arguments their constructors take: dict(mapping or pairs), defaultdict(factory[, mapping or
// pairs]) and Counter(mapping) (pickle writes Counter so; from an iterable it would count).
// The default factory is dropped. NEWOBJ (cls.__new__) makes an empty dict, as in Python.
type dictClass struct {
	m           *machine
	name        string
	factory     bool
	mappingOnly bool
}

func (c dictClass) Call(args ...any) (any, error) {
	if c.factory && len(args) > 0 {
		args = args[1:]
	}
	d := types.NewDict()
	switch len(args) {
	case 0:
		return d, nil
	case 1:
		err := dictItems(c.name, args[0], c.mappingOnly, func(k, v any) error {
			d.Set(k, v)
			return c.m.copy(c.name, 1)
		})
		return d, err
	}
	return nil, fault.New(fault.Malformed, "", "%s: %d positional arguments, want at most 1", c.name, len(args))
}

func (dictClass) PyNew(args ...any) (any, error) { return types.NewDict(), nil }

// orderedDictClass is collections.OrderedDict: OrderedDict() as torch writes it, and
// OrderedDict(pairs) as Python 2 wrote it.
type orderedDictClass struct{ m *machine }

func (c orderedDictClass) Call(args ...any) (any, error) {
	d := types.NewOrderedDict()
	switch len(args) {
	case 0:
		return d, nil
	case 1:
		err := dictItems("collections.OrderedDict", args[0], false, func(k, v any) error {
			if _, ok := k.([]byte); ok {
				// gopickle's OrderedDict keys a Go map: bytes would panic.
				return fault.New(fault.Unsupported, "", "collections.OrderedDict with a bytes key")
			}
			d.Set(k, v)
			return c.m.copy("collections.OrderedDict", 1)
		})
		return d, err
	}
	return nil, fault.New(fault.Malformed, "", "collections.OrderedDict: %d positional arguments, want at most 1", len(args))
}

// dictItems passes to set, in order, the items dict(arg) holds: those of a dict, or the pairs
// of a list or tuple of 2-item lists and tuples (unless mappingOnly). Other iterables (strings,
// sets, pairs that are strings) are refused rather than guessed at.
func dictItems(class string, arg any, mappingOnly bool, set func(k, v any) error) error {
	switch a := arg.(type) {
	case *types.Dict, *types.OrderedDict:
		return eachChild(a, set)
	case *types.List, *types.Tuple:
		if mappingOnly {
			break
		}
		return eachChild(a, func(i, pair any) error {
			var kv []any
			switch p := pair.(type) {
			case *types.Tuple:
				kv = *p
			case *types.List:
				kv = *p
			}
			if len(kv) != 2 {
				return fault.New(fault.Unsupported, "", "%s: item %s is %s, not a (key, value) pair", class, Describe(i), Describe(pair))
			}
			return set(kv[0], kv[1])
		})
	}
	return fault.New(fault.Unsupported, "", "%s built from %s", class, typeName(arg))
}

// listClass is builtins.list: list() and list(list or tuple); other iterables are refused.
type listClass struct{ m *machine }

func (c listClass) Call(args ...any) (any, error) {
	switch len(args) {
	case 0:
		return types.NewList(), nil
	case 1:
		var items []any
		switch a := args[0].(type) {
		case *types.List:
			items = *a
		case *types.Tuple:
			items = *a
		default:
			return nil, fault.New(fault.Unsupported, "", "builtins.list built from %s", typeName(args[0]))
		}
		if err := c.m.copy("builtins.list", len(items)); err != nil {
			return nil, err
		}
		return types.NewListFromSlice(slices.Clone(items)), nil
	}
	return nil, fault.New(fault.Malformed, "", "builtins.list: %d arguments, want at most 1", len(args))
}

func (listClass) PyNew(args ...any) (any, error) { return types.NewList(), nil }

// reconstructor is copyreg._reconstructor(cls, base, state), with which protocols 0 and 1
// pickle plain objects (an argparse.Namespace of training arguments): the record is cls's.
type reconstructor struct{}

func (reconstructor) Call(args ...any) (any, error) {
	if len(args) > 0 {
		if c, ok := args[0].(opaqueClass); ok {
			return &Opaque{Class: string(c), Args: args[1:]}, nil
		}
	}
	return &Opaque{Class: "copyreg._reconstructor", Args: args}, nil
}

// opaqueClass is an inert global: calling or instantiating it yields an Opaque record.
type opaqueClass string

func (c opaqueClass) Call(args ...any) (any, error) {
	return &Opaque{Class: string(c), Args: args}, nil
}
func (c opaqueClass) PyNew(args ...any) (any, error) {
	return &Opaque{Class: string(c), Args: args}, nil
}

func (p *PersistentIDs) load(pid any, lim limits.Limits) (any, error) {
	t, ok := pid.(*types.Tuple)
	if !ok {
		return nil, fmt.Errorf("persistent id is %s, want a tuple", typeName(pid))
	}
	n := t.Len()
	if (!p.Legacy && n != 5) || (p.Legacy && n != 6) {
		return nil, fmt.Errorf("persistent id has %d elements, want %d", n, map[bool]int{false: 5, true: 6}[p.Legacy])
	}
	if s, err := toString(t.Get(0)); err != nil || s != "storage" {
		return nil, fmt.Errorf("persistent id kind %s, want 'storage'", Describe(t.Get(0)))
	}
	cls, ok := t.Get(1).(storageClass)
	if !ok {
		return nil, fmt.Errorf("persistent id storage type is %s", typeName(t.Get(1)))
	}
	key, err := toString(t.Get(2))
	if err != nil {
		return nil, fmt.Errorf("storage key: %w", err)
	}
	loc, err := toString(t.Get(3))
	if err != nil {
		return nil, fmt.Errorf("storage location: %w", err)
	}
	numel, err := toInt64(t.Get(4))
	if err != nil || numel < 0 {
		return nil, fmt.Errorf("storage %s: element count %s is not a non-negative integer", Describe(key), Describe(t.Get(4)))
	}
	if p.Legacy && t.Get(5) != nil {
		return nil, fault.New(fault.Unsupported, "", "storage %s: legacy view metadata (torch <= 0.4 storage views)", Describe(key))
	}
	ref := &StorageRef{Key: key, Location: loc, DType: cls.dt, Refused: cls.refused, NBytes: numel}
	if size := int64(cls.dt.Size()); size > 0 {
		if numel > math.MaxInt64/size {
			return nil, fmt.Errorf("storage %s: byte size overflows", Describe(key))
		}
		ref.NBytes = numel * size
	}
	if prev, ok := p.byKey[key]; ok {
		if prev.DType != ref.DType || prev.NBytes != ref.NBytes || prev.Refused != ref.Refused {
			return nil, fmt.Errorf("storage %s referenced with two different types or sizes", Describe(key))
		}
		return prev, nil
	}
	if len(p.byKey) >= lim.MaxTensors {
		return nil, fault.New(fault.Limit, "", "more than %d storages (limit max-tensors)", lim.MaxTensors)
	}
	p.byKey[key] = ref
	return ref, nil
}

func toString(v any) (string, error) {
	switch s := v.(type) {
	case string:
		return s, nil
	case []byte:
		return string(s), nil
	}
	return "", fmt.Errorf("%s is not a string", typeName(v))
}

func toInt64(v any) (int64, error) {
	switch n := v.(type) {
	case int:
		return int64(n), nil
	case *big.Int:
		if n.IsInt64() {
			return n.Int64(), nil
		}
	}
	return 0, fmt.Errorf("%s is not a 64-bit integer", typeName(v))
}

func intTuple(v any, maxDims int) ([]int64, error) {
	var items []any
	switch t := v.(type) {
	case *types.Tuple:
		items = *t
	case *types.List:
		items = *t
	default:
		return nil, fmt.Errorf("%s is not a tuple", typeName(v))
	}
	if len(items) > maxDims {
		return nil, fault.New(fault.Limit, "", "%d dimensions (limit max-dims %d)", len(items), maxDims)
	}
	out := make([]int64, len(items))
	for i, it := range items {
		n, err := toInt64(it)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("dimension %d is %s, want a non-negative integer", i, Describe(it))
		}
		out[i] = n
	}
	return out, nil
}

func emptyDict(v any) bool {
	switch d := v.(type) {
	case nil:
		return true
	case *types.Dict:
		return d.Len() == 0
	case *types.OrderedDict:
		return d.Len() == 0
	}
	return false
}

// typeName names a graph value's type for error messages without formatting the value itself
// (printing an untrusted cyclic graph overflows the stack).
func typeName(v any) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case bool:
		return "bool"
	case int, *big.Int:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bytes"
	case *types.Tuple:
		return "tuple"
	case *types.List:
		return "list"
	case *types.Dict:
		return "dict"
	case *types.OrderedDict:
		return "OrderedDict"
	case *TensorRef:
		return "tensor"
	case *StorageRef:
		return "storage"
	case *Opaque:
		return x.Class
	case opaqueClass:
		return "class " + string(x)
	default:
		return reflect.TypeOf(v).String()
	}
}

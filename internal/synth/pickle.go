package synth

import (
	"encoding/binary"
	"math/bits"
)

// Pickle opcodes of protocol 2, the ones torch.save's pickler emits for a state dict.
const (
	opProto      = 0x80
	opGlobal     = 'c'
	opBinPut     = 'q'
	opLongBinPut = 'r'
	opBinGet     = 'h'
	opLongBinGet = 'j'
	opMark       = '('
	opEmptyTuple = ')'
	opTuple      = 't'
	opTuple1     = 0x85
	opTuple2     = 0x86
	opTuple3     = 0x87
	opReduce     = 'R'
	opBinPersID  = 'Q'
	opBinUnicode = 'X'
	opBinInt1    = 'K'
	opBinInt2    = 'M'
	opBinInt     = 'J'
	opLong1      = 0x8a
	opNewFalse   = 0x89
	opNone       = 'N'
	opSetItem    = 's'
	opSetItems   = 'u'
	opEmptyList  = ']'
	opAppends    = 'e'
	opStop       = '.'
)

// batchSize is CPython's pickle _BATCHSIZE: SETITEMS and APPENDS carry at most this many items.
const batchSize = 1000

// pickler emits protocol-2 pickles byte for byte as CPython's C pickler does for the objects
// torch.save hands it. No pickle library fits: gopickle only reads, and what must match is
// CPython's memo numbering, which depends on object identity (a string literal shared by every
// tensor is memoized once, each tensor's own strings and tuples are not shared), so the writer
// models those identities explicitly instead of serializing generic values.
type pickler struct {
	b    []byte
	memo int            // next memo index
	ids  map[string]int // memo index of the shared objects: globals, 'storage', 'cpu'
}

func newPickler() *pickler {
	return &pickler{b: []byte{opProto, 2}, ids: map[string]int{}}
}

// put memoizes the object just written, as Pickler.memoize does (BINPUT, or LONG_BINPUT from 256).
func (p *pickler) put() int {
	i := p.memo
	p.memo++
	if i < 256 {
		p.b = append(p.b, opBinPut, byte(i))
	} else {
		p.b = append(p.b, opLongBinPut)
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(i))
	}
	return i
}

func (p *pickler) get(i int) {
	if i < 256 {
		p.b = append(p.b, opBinGet, byte(i))
	} else {
		p.b = append(p.b, opLongBinGet)
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(i))
	}
}

// shared writes an object that is the same Python object every time it is pickled (a global, an
// interned string): the first time in full and memoized, then as a memo reference.
func (p *pickler) shared(id string, write func()) {
	if i, ok := p.ids[id]; ok {
		p.get(i)
		return
	}
	write()
	p.ids[id] = p.put()
}

func (p *pickler) global(module, name string) {
	p.shared("global "+module+"."+name, func() {
		p.b = append(p.b, opGlobal)
		p.b = append(p.b, module...)
		p.b = append(p.b, '\n')
		p.b = append(p.b, name...)
		p.b = append(p.b, '\n')
	})
}

// str writes a fresh (not shared) str object and memoizes it.
func (p *pickler) str(s string) {
	p.b = append(p.b, opBinUnicode)
	p.b = binary.LittleEndian.AppendUint32(p.b, uint32(len(s)))
	p.b = append(p.b, s...)
	p.put()
}

func (p *pickler) sharedStr(s string) {
	p.shared("str "+s, func() {
		p.b = append(p.b, opBinUnicode)
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(len(s)))
		p.b = append(p.b, s...)
	})
}

// int writes a Python int as save_long does in binary mode: BININT1, BININT2, BININT, else LONG1
// with the minimal two's-complement little-endian encoding.
func (p *pickler) int(v int64) {
	switch {
	case v >= 0 && v <= 0xff:
		p.b = append(p.b, opBinInt1, byte(v))
	case v >= 0 && v <= 0xffff:
		p.b = append(p.b, opBinInt2, byte(v), byte(v>>8))
	case v >= -1<<31 && v <= 1<<31-1:
		p.b = append(p.b, opBinInt)
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(v))
	default:
		// encode_long: nbytes = bit_length//8 + 1, then drop a redundant 0xff sign byte for
		// negatives.
		u := uint64(v)
		if v < 0 {
			u = uint64(-v) // |v|, also for math.MinInt64
		}
		n := bits.Len64(u)/8 + 1
		var le [9]byte
		binary.LittleEndian.PutUint64(le[:8], uint64(v))
		if v < 0 {
			le[8] = 0xff
		}
		out := le[:n]
		if v < 0 && n > 1 && out[n-1] == 0xff && out[n-2]&0x80 != 0 {
			out = out[:n-1]
		}
		p.b = append(p.b, opLong1, byte(len(out)))
		p.b = append(p.b, out...)
	}
}

// intTuple writes a fresh tuple of ints as save_tuple does: EMPTY_TUPLE (not memoized) for (),
// TUPLE1..3 for short tuples, MARK ... TUPLE beyond, memoized.
func (p *pickler) intTuple(vs []int64) {
	if len(vs) == 0 {
		p.b = append(p.b, opEmptyTuple)
		return
	}
	if len(vs) > 3 {
		p.b = append(p.b, opMark)
	}
	for _, v := range vs {
		p.int(v)
	}
	switch len(vs) {
	case 1:
		p.b = append(p.b, opTuple1)
	case 2:
		p.b = append(p.b, opTuple2)
	case 3:
		p.b = append(p.b, opTuple3)
	default:
		p.b = append(p.b, opTuple)
	}
	p.put()
}

// tensor writes one tensor as torch.Tensor.__reduce_ex__ yields it:
// _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()), the storage being a
// persistent id. legacy selects the legacy 6-tuple id ('storage', cls, key, 'cpu', numel, None)
// instead of the zip 5-tuple. The storage key is one string object per storage, as torch's
// id_map gives it: memoized where first written, a memo reference where a view shares it.
func (p *pickler) tensor(t *Tensor, legacy bool) {
	st := t.storage()
	p.global("torch._utils", "_rebuild_tensor_v2")
	p.b = append(p.b, opMark)

	// persistent id, saved with save_persistent_id=False, then BINPERSID.
	p.b = append(p.b, opMark)
	p.sharedStr("storage")
	p.global("torch", storageClass[st.DType])
	p.sharedStr(st.Key)
	p.sharedStr("cpu")
	p.int(st.Numel())
	if legacy {
		p.b = append(p.b, opNone)
	}
	p.b = append(p.b, opTuple)
	p.put()
	p.b = append(p.b, opBinPersID)

	offset, stride := int64(0), contiguousStrides(t.Shape)
	if t.view != nil {
		offset, stride = t.view.offset, t.view.stride
	}
	p.int(offset)
	p.intTuple(t.Shape)
	p.intTuple(stride)
	p.b = append(p.b, opNewFalse) // requires_grad
	// backward_hooks: a fresh empty OrderedDict, reduced as OrderedDict() with no items.
	p.global("collections", "OrderedDict")
	p.b = append(p.b, opEmptyTuple, opReduce)
	p.put()

	p.b = append(p.b, opTuple) // the 6 rebuild arguments
	p.put()
	p.b = append(p.b, opReduce)
	p.put()
}

// stateDict writes an OrderedDict of the tensors, keyed by name, as pickled by its __reduce__:
// OrderedDict() then the items in batches (batch_dict: SETITEMS per 1000, a lone SETITEM for a
// final batch of one).
func stateDict(tensors []Tensor, legacy bool) []byte {
	p := newPickler()
	p.global("collections", "OrderedDict")
	p.b = append(p.b, opEmptyTuple, opReduce)
	p.put()
	for i := 0; i < len(tensors); i += batchSize {
		batch := tensors[i:min(i+batchSize, len(tensors))]
		if len(batch) == 1 {
			p.str(batch[0].Name)
			p.tensor(&batch[0], legacy)
			p.b = append(p.b, opSetItem)
			break
		}
		p.b = append(p.b, opMark)
		for j := range batch {
			p.str(batch[j].Name)
			p.tensor(&batch[j], legacy)
		}
		p.b = append(p.b, opSetItems)
	}
	return append(p.b, opStop)
}

// keyList writes the legacy format's sorted storage key list as batch_list_exact does: a lone
// APPEND for a one-element list, otherwise MARK ... APPENDS per 1000 keys.
func keyList(keys []string) []byte {
	p := newPickler()
	p.b = append(p.b, opEmptyList)
	p.put()
	switch len(keys) {
	case 0:
	case 1:
		p.str(keys[0])
		p.b = append(p.b, 'a')
	default:
		for i := 0; i < len(keys); i += batchSize {
			p.b = append(p.b, opMark)
			for _, k := range keys[i:min(i+batchSize, len(keys))] {
				p.str(k)
			}
			p.b = append(p.b, opAppends)
		}
	}
	return append(p.b, opStop)
}

// contiguousStrides returns the row-major strides of shape, in elements. torch gives a dimension
// of size 0 or 1 the stride it would have anyway (the product of the later sizes, at least 1).
func contiguousStrides(shape []int64) []int64 {
	s := make([]int64, len(shape))
	acc := int64(1)
	for i := len(shape) - 1; i >= 0; i-- {
		s[i] = acc
		acc *= max(shape[i], 1)
	}
	return s
}

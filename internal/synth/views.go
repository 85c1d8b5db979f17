package synth

import (
	"fmt"
	"io"
	"strconv"

	"github.com/ptsafe/converter/internal/dtype"
)

// Views describes a checkpoint whose tensors all view one storage, as the slices, transposes
// and broadcasts of one parameter do, and as a hostile file does to multiply the work or the
// output of a converter: view i, named views.<i>, has Shape and Stride (in elements) and starts
// Offset(i) elements into the storage.
type Views struct {
	// Format is the container format; the default is ZipStored.
	Format Format
	// DType is the element type; the default is F32.
	DType dtype.DType
	// StorageElems is the number of elements of the one storage.
	StorageElems int64
	// Count is the number of views.
	Count int
	// Shape and Stride give every view's geometry, in elements; a stride of 0 broadcasts.
	Shape, Stride []int64
	// Step is the distance between consecutive views' starts, wrapping around the room the
	// storage leaves after a view's extent.
	Step int64
	// Zeros fills the storage with zeros (which deflate about 1000:1) instead of pseudo-random
	// values.
	Zeros bool
	// Seed selects the storage contents.
	Seed uint64
}

// view makes a Tensor a view of another tensor's storage.
type view struct {
	of     *Tensor
	offset int64
	stride []int64
}

// storage returns the tensor whose bytes are t's storage record: t itself unless t is a view.
func (t *Tensor) storage() *Tensor {
	if t.view != nil {
		return t.view.of
	}
	return t
}

// storages returns the distinct storages of tensors in order of first use; two storages under
// one key are an error.
func storages(tensors []Tensor) ([]*Tensor, error) {
	seen := map[string]*Tensor{}
	var out []*Tensor
	for i := range tensors {
		st := tensors[i].storage()
		if prev, ok := seen[st.Key]; ok {
			if prev != st {
				return nil, fmt.Errorf("storage key %q used twice", st.Key)
			}
			continue
		}
		seen[st.Key] = st
		out = append(out, st)
	}
	return out, nil
}

// extent returns the number of storage elements one view spans.
func (v Views) extent() int64 {
	e := int64(1)
	for i, d := range v.Shape {
		e += (d - 1) * v.Stride[i]
	}
	return e
}

// Offset returns the storage offset of view i, in elements.
func (v Views) Offset(i int) int64 {
	return int64(i) * v.Step % (v.StorageElems - v.extent() + 1)
}

// Storage returns the one storage as a flat tensor: its Content is the storage's bytes.
func (v Views) Storage() Tensor {
	dt := v.DType
	if dt == dtype.Invalid {
		dt = dtype.F32
	}
	key := "0"
	if v.Format == Legacy {
		key = strconv.FormatUint(legacyKeyBase, 10)
	}
	st := Tensor{Name: "storage", DType: dt, Shape: []int64{v.StorageElems}, Key: key, seed: splitmix(v.Seed)}
	if v.Zeros {
		size := st.Size()
		st.src = func() io.Reader { return io.LimitReader(zeros{}, size) }
	}
	return st
}

// WriteViews writes the checkpoint v describes to w, streaming the storage as Write does.
func WriteViews(w io.Writer, v Views) error {
	st := v.Storage()
	if _, ok := storageClass[st.DType]; !ok {
		return fmt.Errorf("synth: dtype %v has no typed torch storage class", st.DType)
	}
	if v.Count < 1 || len(v.Shape) != len(v.Stride) {
		return fmt.Errorf("synth: %d views of shape %v stride %v: want at least one, and a stride per dimension", v.Count, v.Shape, v.Stride)
	}
	for i, d := range v.Shape {
		if d < 1 || v.Stride[i] < 0 {
			return fmt.Errorf("synth: view shape %v stride %v: want sizes >= 1 and strides >= 0", v.Shape, v.Stride)
		}
	}
	if v.extent() > v.StorageElems || v.Step < 0 {
		return fmt.Errorf("synth: a view spans %d elements, the storage has %d (step %d)", v.extent(), v.StorageElems, v.Step)
	}
	tensors := make([]Tensor, v.Count)
	for i := range tensors {
		tensors[i] = Tensor{Name: "views." + strconv.Itoa(i), DType: st.DType, Shape: v.Shape,
			view: &view{of: &st, offset: v.Offset(i), stride: v.Stride}}
	}
	var err error
	switch v.Format {
	case Legacy:
		err = writeLegacy(w, tensors)
	case ZipStored, ZipDeflated:
		err = writeZip(w, "archive", tensors, v.Format == ZipDeflated, true)
	default:
		err = fmt.Errorf("unknown format %v", v.Format)
	}
	if err != nil {
		return fmt.Errorf("synth: write %v views: %w", v.Format, err)
	}
	return nil
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

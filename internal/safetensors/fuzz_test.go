package safetensors

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
)

// FuzzRead checks that Read never panics, classifies every refusal, and that anything it
// accepts is a consistent layout: offsets contiguous from 0 without overlap, each tensor sized
// by its shape, the data section covered exactly; and that planning the same tensors again
// gives a file Read accepts with the same content.
func FuzzRead(f *testing.F) {
	z16 := "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
	seeds := [][]byte{
		{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '},
		[]byte("<\x00\x00\x00\x00\x00\x00\x00" + testI32 + z16),
		[]byte("<\x00\x00\x00\x00\x00\x00\x00" + testI32 + z16 + "extra_bogus_data_for_polyglot_file"),
		[]byte("<\x00\x00\x00\x00\x00\x00\x00" + testI32 + z16[:14]),
		[]byte("<\x00\x00\x00\x00\xff\xff\xff" + testI32 + z16),
		[]byte("<\x00\x00\x00\x00\x00\x00\x00" + `{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0, 4]}}`),
		[]byte("O\x00\x00\x00\x00\x00\x00\x00" + `{"test":{"dtype":"I32","shape":[2,18446744073709551614],"data_offsets":[0,16]}}` + z16),
		[]byte("\x01\x00\x00\x00\x00\x00\x00\x00\xff"),
		[]byte("\x01\x00\x00\x00\x00\x00\x00\x00{"),
		[]byte("\x06\x00\x00\x00\x00\x00\x00\x00\x09\x0A{}\x0D\x20"),
		st(`{"__metadata__":{"format":"pt"},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"a":{"shape":[1],"data_offsets":[0,4],"dtype":"F32"}}`, 6),
		st(`{"\u0041\ud83d\ude00":{"dtype":"BOOL","shape":[],"data_offsets":[0,1]},"e":{"dtype":"F64","shape":[0,9223372036854775807],"data_offsets":[1,1]}}`, 1),
	}
	goldens := []struct {
		meta    map[string]string
		entries []Entry
	}{
		{nil, nil},
		{map[string]string{"framework": "pt"}, nil},
		{nil, []Entry{{Name: "attn.0", DType: dtype.F32, Shape: []int64{1, 2, 3}}}},
		{map[string]string{"format": "pt"}, []Entry{
			{Name: "\"\\\n\x01<>&\u2028", DType: dtype.BF16, Shape: []int64{3}},
			{Name: "s", DType: dtype.I64, Shape: []int64{}},
			{Name: "z", DType: dtype.U8, Shape: []int64{0}},
		}},
	}
	for _, g := range goldens {
		l, err := Plan(g.meta, g.entries, 0)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, append(l.Header, make([]byte, l.Size-int64(len(l.Header)))...))
	}
	for _, s := range seeds {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Read(bytes.NewReader(b), int64(len(b)), 1<<20)
		if err != nil {
			var fe *fault.Error
			if !errors.As(err, &fe) || fe.Kind == fault.Internal {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		checkFile(t, file, int64(len(b)))

		// Plan the same tensors; Read must accept the result and agree on every tensor.
		entries := make([]Entry, len(file.Tensors))
		for i, tn := range file.Tensors {
			entries[i] = Entry{Name: tn.Name, DType: tn.DType, Shape: tn.Shape}
		}
		l, err := Plan(file.Metadata, entries, 0)
		if err != nil {
			t.Fatalf("Plan of an accepted file: %v", err)
		}
		again, err := Read(headerOnly{t, l.Header}, l.Size, 0)
		if err != nil {
			t.Fatalf("Read of the planned file: %v", err)
		}
		checkFile(t, again, l.Size)
		if !reflect.DeepEqual(again.Metadata, file.Metadata) {
			t.Errorf("Metadata %#v became %#v", file.Metadata, again.Metadata)
		}
		if l.Size-int64(len(l.Header)) != file.Size-file.DataStart || len(again.Tensors) != len(file.Tensors) {
			t.Fatalf("data %d bytes in %d tensors became %d bytes in %d tensors",
				file.Size-file.DataStart, len(file.Tensors), l.Size-int64(len(l.Header)), len(again.Tensors))
		}
		for _, tn := range file.Tensors {
			got, ok := again.Lookup(tn.Name)
			if !ok || got.DType != tn.DType || !reflect.DeepEqual(got.Shape, tn.Shape) || got.End-got.Begin != tn.End-tn.Begin {
				t.Errorf("tensor %+v became %+v, %v", tn, got, ok)
			}
		}
	})
}

// checkFile checks the invariants of an accepted file of the given size.
func checkFile(t *testing.T, f *File, size int64) {
	t.Helper()
	if f.Size != size || f.DataStart < 8 || f.DataStart > size {
		t.Fatalf("Size %d, DataStart %d for a %d-byte file", f.Size, f.DataStart, size)
	}
	var off int64
	for _, tn := range f.Tensors {
		if tn.Begin != off || tn.End < tn.Begin {
			t.Fatalf("tensor %q at [%d,%d), want it to begin at %d", tn.Name, tn.Begin, tn.End, off)
		}
		n, ok := tensorBytes(tn.DType, tn.Shape)
		if !ok || n != uint64(tn.End-tn.Begin) {
			t.Fatalf("tensor %q %s %v spans %d bytes, want %d", tn.Name, tn.DType, tn.Shape, tn.End-tn.Begin, n)
		}
		if got, ok := f.Lookup(tn.Name); !ok || !reflect.DeepEqual(got, tn) {
			t.Fatalf("Lookup(%q) = %+v, %v", tn.Name, got, ok)
		}
		off = tn.End
	}
	if off != size-f.DataStart {
		t.Fatalf("tensors cover %d bytes, data section is %d", off, size-f.DataStart)
	}
}

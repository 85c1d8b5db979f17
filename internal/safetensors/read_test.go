package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
)

// st returns a file whose header is json (unpadded) followed by data zero bytes.
func st(json string, data int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(json)))
	b = append(b, json...)
	return append(b, make([]byte, data)...)
}

const testI32 = `{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}`

func TestReadAccepts(t *testing.T) {
	z16 := strings.Repeat("\x00", 16)
	tests := []struct {
		name     string
		file     []byte
		wantMeta map[string]string
		want     []Tensor
	}{
		{
			// tensor.rs test_deserialization: N='<'=60, unpadded.
			name: "reference deserialization",
			file: []byte("<\x00\x00\x00\x00\x00\x00\x00" + testI32 + z16),
			want: []Tensor{{Name: "test", DType: dtype.I32, Shape: []int64{2, 2}, Begin: 0, End: 16}},
		},
		{
			// tensor.rs test_empty_shapes_allowed: a scalar is one element.
			name: "reference empty shape",
			file: []byte("8\x00\x00\x00\x00\x00\x00\x00" + `{"test":{"dtype":"I32","shape":[],"data_offsets":[0,4]}}` + "\x00\x00\x00\x00"),
			want: []Tensor{{Name: "test", DType: dtype.I32, Shape: []int64{}, Begin: 0, End: 4}},
		},
		{
			// tensor.rs test_zero_sized_tensor, with a space inside data_offsets.
			name: "reference zero-sized tensor",
			file: []byte("<\x00\x00\x00\x00\x00\x00\x00" + `{"test":{"dtype":"I32","shape":[2,0],"data_offsets":[0, 0]}}`),
			want: []Tensor{{Name: "test", DType: dtype.I32, Shape: []int64{2, 0}, Begin: 0, End: 0}},
		},
		{
			// tensor.rs test_whitespace_padded_header.
			name: "reference trailing whitespace",
			file: []byte("\x06\x00\x00\x00\x00\x00\x00\x00{}\x0D\x20\x09\x0A"),
			want: []Tensor{},
		},
		{
			// PR #686 (v0.8.0-rc.0): leading JSON whitespace is accepted.
			name: "leading whitespace",
			file: []byte("\x06\x00\x00\x00\x00\x00\x00\x00\x09\x0A{}\x0D\x20"),
			want: []Tensor{},
		},
		{
			name: "reference empty file",
			file: []byte{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '},
			want: []Tensor{},
		},
		{
			name:     "metadata",
			file:     st(`{"__metadata__":{"format":"pt","":"empty key"}}`, 0),
			wantMeta: map[string]string{"format": "pt", "": "empty key"},
			want:     []Tensor{},
		},
		{
			name: "metadata null means absent",
			file: st(`{"__metadata__":null}`, 0),
			want: []Tensor{},
		},
		{
			// The order in the text does not matter (step 6); the result is in offset order.
			name: "unsorted entries",
			file: st(`{"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"__metadata__":{},`+
				`"a":{"shape":[1],"data_offsets":[0,4],"dtype":"F32"}}`, 6),
			wantMeta: map[string]string{},
			want: []Tensor{
				{Name: "a", DType: dtype.F32, Shape: []int64{1}, Begin: 0, End: 4},
				{Name: "b", DType: dtype.U8, Shape: []int64{2}, Begin: 4, End: 6},
			},
		},
		{
			// Names are compared after unescaping; a valid surrogate pair is fine.
			name: "escaped names",
			file: st(`{"\u0041\ud83d\ude00\\u0041":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]},`+
				`"":{"dtype":"BOOL","shape":[1],"data_offsets":[1,2]}}`, 2),
			want: []Tensor{
				{Name: "A😀\\u0041", DType: dtype.BOOL, Shape: []int64{1}, Begin: 0, End: 1},
				{Name: "", DType: dtype.BOOL, Shape: []int64{1}, Begin: 1, End: 2},
			},
		},
		{
			// A huge dimension is fine next to a zero one, as in the reference.
			name: "huge dimension times zero",
			file: st(`{"e":{"dtype":"F64","shape":[0,9223372036854775807],"data_offsets":[0,0]}}`, 0),
			want: []Tensor{{Name: "e", DType: dtype.F64, Shape: []int64{0, 1<<63 - 1}, Begin: 0, End: 0}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Read(bytes.NewReader(tt.file), int64(len(tt.file)), 0)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if !reflect.DeepEqual(f.Metadata, tt.wantMeta) {
				t.Errorf("Metadata = %#v, want %#v", f.Metadata, tt.wantMeta)
			}
			if !reflect.DeepEqual(f.Tensors, tt.want) {
				t.Errorf("Tensors\n got %+v\nwant %+v", f.Tensors, tt.want)
			}
			n := int64(binary.LittleEndian.Uint64(tt.file))
			if f.DataStart != 8+n || f.Size != int64(len(tt.file)) {
				t.Errorf("DataStart, Size = %d, %d; want %d, %d", f.DataStart, f.Size, 8+n, len(tt.file))
			}
			for _, want := range tt.want {
				if got, ok := f.Lookup(want.Name); !ok || !reflect.DeepEqual(got, want) {
					t.Errorf("Lookup(%q) = %+v, %v; want %+v", want.Name, got, ok, want)
				}
			}
			if _, ok := f.Lookup("missing"); ok {
				t.Errorf("Lookup(missing) found a tensor")
			}
		})
	}
}

func TestReadRejects(t *testing.T) {
	z16 := strings.Repeat("\x00", 16)
	entry := func(name, body string) string { return fmt.Sprintf(`%q:{%s}`, name, body) }
	w := func(offsets string) string {
		return `"dtype":"F32","shape":[2,2],"data_offsets":` + offsets
	}
	var attack []string
	for i := range 10 {
		attack = append(attack, entry(fmt.Sprintf("weight_%d", i), w("[0,16]")))
	}
	tests := []struct {
		name      string
		file      []byte
		maxHeader int64
		kind      fault.Kind
		msg       string // must appear in the error
	}{
		// Step 1: HeaderTooSmall.
		{"reference too small", []byte{}, 0, fault.Malformed, "too short"},
		{"seven bytes", []byte{1, 0, 0, 0, 0, 0, 0}, 0, fault.Malformed, "7 bytes, too short"},
		// Step 2: HeaderTooLarge.
		{"reference too large", []byte("<\x00\x00\x00\x00\xff\xff\xff" + testI32 + z16), 0, fault.Limit, "over the limit of 100000000"},
		{"N of 2^64-1", []byte("\xff\xff\xff\xff\xff\xff\xff\xff{}"), 0, fault.Limit, "over the limit"},
		{"just over the reference limit", binary.LittleEndian.AppendUint64(nil, 100_000_001), 1 << 40, fault.Limit, "100000001"},
		{"over maxHeader", []byte("<\x00\x00\x00\x00\x00\x00\x00" + testI32 + z16), 59, fault.Limit, "header length 60 is over the limit of 59"},
		// Step 3: InvalidHeaderLength.
		{"reference invalid header length", []byte("<\x00\x00\x00\x00\x00\x00\x00"), 0, fault.Malformed, "runs past the end"},
		{"N one past the end", []byte("\x03\x00\x00\x00\x00\x00\x00\x00{}"), 0, fault.Malformed, "runs past the end"},
		// Step 4: InvalidHeader(Utf8Error).
		{"reference non-UTF-8", []byte("\x01\x00\x00\x00\x00\x00\x00\x00\xff"), 0, fault.Malformed, "UTF-8"},
		{"encoded surrogate in a name", st("{\"\xed\xa0\x80\":{}}", 0), 0, fault.Malformed, "header@10: the header is not valid UTF-8"},
		// Step 5: InvalidHeaderDeserialization, and what we add to it.
		{"reference not JSON", []byte("\x01\x00\x00\x00\x00\x00\x00\x00{"), 0, fault.Malformed, "ends early"},
		{"empty header", st("", 0), 0, fault.Malformed, "ends early"},
		{"top-level array", st(`[]`, 0), 0, fault.Malformed, "the header is an array, not an object"},
		{"top-level string", st(`"x"`, 0), 0, fault.Malformed, "not an object"},
		{"trailing NUL padding", st("{}\x00\x00\x00\x00\x00\x00", 0), 0, fault.Malformed, `'\x00' after its closing brace`},
		{"leading NUL padding", st("\x00{}", 0), 0, fault.Malformed, "not valid JSON"},
		{"trailing garbage", st(`{} x`, 0), 0, fault.Malformed, "after its closing brace"},
		{"two objects", st(`{}{}`, 0), 0, fault.Malformed, "after its closing brace"},
		{"trailing comma", st(`{"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]},}`, 1), 0, fault.Malformed, "not valid JSON"},
		{"duplicate __metadata__", st(`{"__metadata__":{},"__metadata__":{}}`, 0), 0, fault.Malformed, `key "__metadata__" appears twice (first at offset 9)`},
		{"duplicate __metadata__ after null", st(`{"__metadata__":null,"__metadata__":{"a":"b"}}`, 0), 0, fault.Malformed, "appears twice"},
		{"metadata not an object", st(`{"__metadata__":["format"]}`, 0), 0, fault.Malformed, "__metadata__ is an array"},
		{"metadata non-string value", st(`{"__metadata__":{"k":1}}`, 0), 0, fault.Malformed, `metadata value for "k" is a number, not a string`},
		{"metadata null value", st(`{"__metadata__":{"k":null}}`, 0), 0, fault.Malformed, "is null, not a string"},
		{"metadata nested object", st(`{"__metadata__":{"k":{}}}`, 0), 0, fault.Malformed, "is an object, not a string"},
		{"duplicate metadata key", st(`{"__metadata__":{"k":"a","k":"b"}}`, 0), 0, fault.Malformed, `metadata key "k" appears twice`},
		{"exact duplicate tensor", st("{"+entry("test", w("[0,16]"))+","+entry("test", w("[0,16]"))+"}", 16), 0, fault.Malformed, `key "test" appears twice`},
		{"duplicate after unescaping", st(`{"A":{`+w("[0,16]")+`},"\u0041":{`+w("[0,16]")+`}}`, 16), 0, fault.Malformed, `key "A" appears twice`},
		{"duplicate field", st(`{"t":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, 1), 0, fault.Malformed, `tensor "t": field dtype appears twice`},
		{"unknown field", st(`{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"align":8}}`, 1), 0, fault.Malformed, `tensor "t": unknown field "align"`},
		{"missing field", st(`{"t":{"dtype":"U8","data_offsets":[0,1]}}`, 1), 0, fault.Malformed, `tensor "t": missing field shape`},
		{"tensor null", st(`{"t":null}`, 0), 0, fault.Malformed, `tensor "t" is null, not an object`},
		{"three offsets", st(`{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}`, 1), 0, fault.Malformed, "more than 2 elements"},
		{"one offset", st(`{"t":{"dtype":"U8","shape":[1],"data_offsets":[1]}}`, 1), 0, fault.Malformed, "has 1 elements, want 2"},
		{"negative dimension", st(`{"t":{"dtype":"U8","shape":[-2],"data_offsets":[0,1]}}`, 1), 0, fault.Malformed, "-2, not a non-negative integer"},
		{"float dimension", st(`{"t":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}}`, 2), 0, fault.Malformed, "2.0, not a non-negative integer"},
		{"exponent dimension", st(`{"t":{"dtype":"U8","shape":[1e0],"data_offsets":[0,1]}}`, 1), 0, fault.Malformed, "not a non-negative integer"},
		{"string dimension", st(`{"t":{"dtype":"U8","shape":["1"],"data_offsets":[0,1]}}`, 1), 0, fault.Malformed, "holds a string, not an integer"},
		{"offset beyond u64", st(`{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}}`, 1), 0, fault.Malformed, "does not fit 64 bits"},
		{"lower-case dtype", st(`{"t":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}`, 4), 0, fault.Malformed, `unknown dtype "f32"`},
		{"dtype not a string", st(`{"t":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, 4), 0, fault.Malformed, "is a number, not a string"},
		{"reference-only dtype", st(`{"t":{"dtype":"F8_E8M0","shape":[1],"data_offsets":[0,1]}}`, 1), 0, fault.Unsupported, "F8_E8M0"},
		{"lone high surrogate", st(`{"\ud800":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, 1), 0, fault.Malformed, "header@10: a string holds an unpaired UTF-16 surrogate"},
		{"lone low surrogate", st(`{"__metadata__":{"a":"x\udc00"}}`, 0), 0, fault.Malformed, "unpaired UTF-16 surrogate"},
		{"high surrogate then letter", st(`{"\ud800\u0041":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, 1), 0, fault.Malformed, "unpaired UTF-16 surrogate"},
		// Step 7: InvalidOffset, ValidationOverflow, TensorInvalidInfo.
		{"reference json attack", st("{"+strings.Join(attack, ",")+"}", 16), 0, fault.Malformed, "overlaps"},
		{"gap", st("{"+entry("a", w("[0,16]"))+","+entry("b", w("[20,36]"))+"}", 36), 0, fault.Malformed, `tensor "b": data_offsets [20,36] leaves a gap after offset 16`},
		{"first not at zero", st("{"+entry("a", w("[4,20]"))+"}", 20), 0, fault.Malformed, "gap after offset 0"},
		{"end before begin", st(`{"a":{"dtype":"U8","shape":[5],"data_offsets":[0,5]},"b":{"dtype":"U8","shape":[0],"data_offsets":[5,2]}}`, 5), 0, fault.Malformed, `tensor "b": data_offsets [5,2] ends before it begins`},
		{"size mismatch with a huge end", st(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,18446744073709551615]}}`, 0), 0, fault.Malformed, "hold 18446744073709551615 bytes"},
		{"end before begin at start", st(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[1,0]}}`, 1), 0, fault.Malformed, "gap after offset 0"},
		{"reference invalid info", []byte("<\x00\x00\x00\x00\x00\x00\x00" + `{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0, 4]}}`), 0, fault.Malformed,
			`header@9: tensor "test": data_offsets [0,4] hold 4 bytes, but I32 [2 2] needs 16`},
		{"reference validation overflow", []byte("O\x00\x00\x00\x00\x00\x00\x00" + `{"test":{"dtype":"I32","shape":[2,18446744073709551614],"data_offsets":[0,16]}}` + z16), 0, fault.Limit, `tensor "test": the byte size`},
		{"bits overflow", st(`{"t":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,16]}}`, 16), 0, fault.Limit, "overflows"},
		// Step 8: MetadataIncompleteBuffer.
		{"reference polyglot", []byte("<\x00\x00\x00\x00\x00\x00\x00" + testI32 + z16 + "extra_bogus_data_for_polyglot_file"), 0, fault.Malformed, "cover 16 bytes of data but the file holds 50"},
		{"reference missing 2 bytes", []byte("<\x00\x00\x00\x00\x00\x00\x00" + testI32 + z16[:14]), 0, fault.Malformed, "holds 14"},
		{"empty header with data", st(`{}`, 1), 0, fault.Malformed, "cover 0 bytes"},
		// Ours: a dimension that fits the reference's u64 but not our int64.
		{"dimension over int64", st(`{"e":{"dtype":"F64","shape":[0,9223372036854775808],"data_offsets":[0,0]}}`, 0), 0, fault.Limit, "does not fit an int64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Read(bytes.NewReader(tt.file), int64(len(tt.file)), tt.maxHeader)
			checkFault(t, err, tt.kind, tt.msg)
			if f != nil {
				t.Errorf("Read returned a file with an error")
			}
		})
	}
}

// TestReadFirstFailureWins checks the order of the steps on inputs that fail several.
func TestReadFirstFailureWins(t *testing.T) {
	tests := []struct {
		name string
		file []byte
		msg  string
	}{
		// Too large beats too short for the file.
		{"step 2 before 3", []byte("\xff\xff\xff\xff\xff\xff\xff\x00"), "over the limit"},
		// Bad JSON beats bad offsets and coverage.
		{"step 5 before 7 and 8", st(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[5,9]},"b":1}`, 100), "is a number, not an object"},
		// Offsets are checked in offset order, not text order: "b" at 0 is fine, "a" overlaps.
		{"step 7 in offset order", st(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]},"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`, 3), `tensor "a": data_offsets [1,3] overlaps`},
		// Offsets before sizes, and both before coverage.
		{"InvalidOffset before TensorInvalidInfo", st(`{"a":{"dtype":"U8","shape":[9],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}`, 0), `tensor "a": data_offsets [0,1] hold 1 bytes`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(tt.file), int64(len(tt.file)), 0)
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error = %v, want one mentioning %q", err, tt.msg)
			}
		})
	}
}

func TestReadErrorLocation(t *testing.T) {
	// The second "w" key starts at header offset 64, file offset 72.
	hdr := `{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"v":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"w":{}}`
	i := strings.LastIndex(hdr, `"w"`)
	file := st(hdr, 2)
	_, err := Read(bytes.NewReader(file), int64(len(file)), 0)
	var fe *fault.Error
	if !errors.As(err, &fe) {
		t.Fatalf("error = %v, want a *fault.Error", err)
	}
	if want := int64(8 + i); fe.Offset != want {
		t.Errorf("Offset = %d, want %d (error: %v)", fe.Offset, want, err)
	}
	if fe.Entry == "" {
		t.Errorf("Entry is empty")
	}
}

// headerOnly serves the first len(header) bytes of a file of any claimed size and fails the
// test on any read beyond them.
type headerOnly struct {
	t      *testing.T
	header []byte
}

func (h headerOnly) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(h.header)) {
		h.t.Errorf("ReadAt(len %d, off %d) reads beyond the %d header bytes", len(p), off, len(h.header))
		return 0, io.ErrUnexpectedEOF
	}
	return copy(p, h.header[off:]), nil
}

func TestReadOnlyReadsTheHeader(t *testing.T) {
	// A 4 TiB file: reading or allocating its data would fail the test or the machine.
	l, err := Plan(map[string]string{"format": "pt"}, []Entry{
		{Name: "big", DType: dtype.F32, Shape: []int64{1 << 20, 1 << 20}},
		{Name: "small", DType: dtype.U8, Shape: []int64{3}},
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Read(headerOnly{t, l.Header}, l.Size, 0)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if got, want := f.Size, int64(4<<40+len(l.Header)+3); got != want {
		t.Errorf("Size = %d, want %d", got, want)
	}
}

func TestReadReaderError(t *testing.T) {
	// The file is shorter than the size the caller claims: an I/O failure, not a verdict.
	file := st(testI32, 16)
	_, err := Read(bytes.NewReader(file[:20]), int64(len(file)), 0)
	if err == nil || fault.KindOf(err) != fault.Internal || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("error = %v (kind %s), want an unclassified io.ErrUnexpectedEOF", err, fault.KindOf(err))
	}
}

func TestRoundTrip(t *testing.T) {
	var entries []Entry
	for d := dtype.BOOL; d <= dtype.U64; d++ {
		entries = append(entries,
			Entry{Name: "layer." + d.String() + ".weight", DType: d, Shape: []int64{3, 5}},
			Entry{Name: "layer." + d.String() + ".scalar", DType: d, Shape: []int64{}},
			Entry{Name: "layer." + d.String() + ".empty", DType: d, Shape: []int64{0, 7}},
		)
	}
	entries = append(entries,
		Entry{Name: "\"\\\n\x01<>&\u2028", DType: dtype.F32, Shape: []int64{1}},
		Entry{Name: "", DType: dtype.U8, Shape: []int64{1}},
		Entry{Name: "__metadata", DType: dtype.U8, Shape: []int64{1}},
	)
	meta := map[string]string{"format": "pt", "alias.weight": "layer.F32.weight", "odd\x00key": "\u2029"}
	l, err := Plan(meta, entries, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Read(headerOnly{t, l.Header}, l.Size, 0)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if !reflect.DeepEqual(f.Metadata, meta) {
		t.Errorf("Metadata = %#v, want %#v", f.Metadata, meta)
	}
	if f.DataStart != int64(len(l.Header)) || f.Size != l.Size {
		t.Errorf("DataStart, Size = %d, %d; want %d, %d", f.DataStart, f.Size, len(l.Header), l.Size)
	}
	if len(f.Tensors) != len(l.Tensors) {
		t.Fatalf("read %d tensors, planned %d", len(f.Tensors), len(l.Tensors))
	}
	for _, want := range l.Tensors {
		got, ok := f.Lookup(want.Name)
		if !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("Lookup(%q) = %+v, %v; want %+v", want.Name, got, ok, want)
		}
	}
}

func TestLookupOnHandBuiltFile(t *testing.T) {
	f := &File{Tensors: []Tensor{{Name: "a", DType: dtype.U8, Shape: []int64{1}, End: 1}}}
	if got, ok := f.Lookup("a"); !ok || got.Name != "a" {
		t.Errorf("Lookup(a) = %+v, %v", got, ok)
	}
	if _, ok := f.Lookup("b"); ok {
		t.Errorf("Lookup(b) found a tensor")
	}
}

func BenchmarkRead(b *testing.B) {
	entries := benchEntries()
	l, err := Plan(map[string]string{"format": "pt"}, entries, 0)
	if err != nil {
		b.Fatal(err)
	}
	r := bytes.NewReader(l.Header)
	b.SetBytes(int64(len(l.Header)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Read(r, l.Size, 0); err != nil {
			b.Fatal(err)
		}
	}
}

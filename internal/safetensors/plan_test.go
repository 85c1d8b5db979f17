package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
)

// header returns the 8-byte length prefix followed by json, padded with spaces to a multiple
// of 8 as the reference writer does.
func header(json string) []byte {
	n := (len(json) + 7) &^ 7
	b := binary.LittleEndian.AppendUint64(nil, uint64(n))
	b = append(b, json...)
	return append(b, bytes.Repeat([]byte(" "), n-len(json))...)
}

const scalarAndEmptyJSON = `{"__metadata__":{"format":"pt"},` +
	`"step":{"dtype":"I64","shape":[],"data_offsets":[0,8]},` +
	`"bias":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},` +
	`"empty":{"dtype":"F32","shape":[4,0],"data_offsets":[16,16]}}`

func TestPlanGolden(t *testing.T) {
	tests := []struct {
		name     string
		meta     map[string]string
		entries  []Entry
		want     []byte
		wantSize int64
	}{
		{
			// tensor.rs test_empty, no metadata: 16 bytes in all.
			name:     "empty",
			want:     []byte{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '},
			wantSize: 16,
		},
		{
			// tensor.rs test_empty with metadata {"framework":"pt"}: N=40.
			name: "metadata framework",
			meta: map[string]string{"framework": "pt"},
			want: []byte{40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95,
				95, 34, 58, 123, 34, 102, 114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112,
				116, 34, 125, 125, 32, 32, 32, 32, 32},
			wantSize: 48,
		},
		{
			// tensor.rs test_serialization: N=64, no padding needed, 24 data bytes.
			name:    "one F32 attn.0",
			entries: []Entry{{Name: "attn.0", DType: dtype.F32, Shape: []int64{1, 2, 3}}},
			want: []byte{64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
				116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
				58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
				101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125},
			wantSize: 8 + 64 + 24,
		},
		{
			// tensor.rs test_serialization_forced_alignement: 7 spaces of padding, N=72.
			name:    "one F32 attn0 padded",
			entries: []Entry{{Name: "attn0", DType: dtype.F32, Shape: []int64{1, 1, 2, 3}}},
			want: []byte{72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116,
				121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
				91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102,
				115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32,
				32, 32},
			wantSize: 8 + 72 + 24,
		},
		{
			// Some(empty map) is written as {}, unlike None.
			name:     "empty non-nil metadata",
			meta:     map[string]string{},
			want:     header(`{"__metadata__":{}}`),
			wantSize: 32,
		},
		{
			// Sorted bytewise: upper case before lower case.
			name:     "metadata keys sorted",
			meta:     map[string]string{"format": "pt", "b": "x", "B": "z", "a": "y"},
			want:     header(`{"__metadata__":{"B":"z","a":"y","b":"x","format":"pt"}}`),
			wantSize: 64,
		},
		{
			// A scalar is one element; a zero dimension gives [k,k].
			name: "scalar and empty tensors",
			meta: map[string]string{"format": "pt"},
			entries: []Entry{
				{Name: "step", DType: dtype.I64, Shape: []int64{}},
				{Name: "empty", DType: dtype.F32, Shape: []int64{4, 0}},
				{Name: "bias", DType: dtype.F32, Shape: []int64{2}},
			},
			want:     header(scalarAndEmptyJSON),
			wantSize: int64(len(header(scalarAndEmptyJSON))) + 16,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Plan(tt.meta, tt.entries, 0)
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			if !bytes.Equal(got.Header, tt.want) {
				t.Errorf("Header\n got %q\nwant %q", got.Header, tt.want)
			}
			if got.Size != tt.wantSize {
				t.Errorf("Size = %d, want %d", got.Size, tt.wantSize)
			}
			if len(got.Header)%8 != 0 {
				t.Errorf("len(Header) = %d, not a multiple of 8", len(got.Header))
			}
		})
	}
}

func TestPlanOrderAndAlignment(t *testing.T) {
	// Odd element counts everywhere, so any tensor placed after a smaller dtype would be
	// misaligned.
	entries := []Entry{
		{Name: "mask", DType: dtype.BOOL, Shape: []int64{3}},
		{Name: "bytes", DType: dtype.U8, Shape: []int64{5}},
		{Name: "half", DType: dtype.F16, Shape: []int64{3}},
		{Name: "brain", DType: dtype.BF16, Shape: []int64{1, 3}},
		{Name: "w.b", DType: dtype.F32, Shape: []int64{3}},
		{Name: "w.a", DType: dtype.F32, Shape: []int64{1}},
		{Name: "W.z", DType: dtype.F32, Shape: []int64{1}}, // 'W' < 'w' bytewise
		{Name: "count", DType: dtype.I64, Shape: []int64{}},
		{Name: "double", DType: dtype.F64, Shape: []int64{3}},
	}
	want := []string{"count", "double", "W.z", "w.a", "w.b", "brain", "half", "bytes", "mask"}
	l, err := Plan(nil, entries, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tn := range l.Tensors {
		got = append(got, tn.Name)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("order\n got %v\nwant %v", got, want)
	}
	for k, i := range l.Entries {
		if entries[i].Name != l.Tensors[k].Name {
			t.Errorf("Entries[%d] = %d, entry %q; want the entry of %q", k, i, entries[i].Name, l.Tensors[k].Name)
		}
	}
	if len(l.Entries) != len(entries) {
		t.Errorf("%d entries indexed, want %d", len(l.Entries), len(entries))
	}
	checkLayout(t, l)
}

func TestPlanAlignmentAllDTypes(t *testing.T) {
	var entries []Entry
	for d := dtype.BOOL; d <= dtype.U64; d++ {
		for i, shape := range [][]int64{{1}, {3}, {7, 5}} {
			entries = append(entries, Entry{Name: fmt.Sprintf("%s.%d", d, i), DType: d, Shape: shape})
		}
	}
	l, err := Plan(map[string]string{"format": "pt"}, entries, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(l.Tensors); i++ {
		if a, b := l.Tensors[i-1].DType.Rank(), l.Tensors[i].DType.Rank(); a < b {
			t.Errorf("%s (rank %d) before %s (rank %d)", l.Tensors[i-1].Name, a, l.Tensors[i].Name, b)
		}
	}
	checkLayout(t, l)
}

// checkLayout checks that tensors are contiguous from 0, sized by their shapes, start aligned to
// their element size in the file, and that Size adds up.
func checkLayout(t *testing.T, l *Layout) {
	t.Helper()
	var off int64
	for _, tn := range l.Tensors {
		if tn.Begin != off {
			t.Errorf("%s begins at %d, want %d", tn.Name, tn.Begin, off)
		}
		n := int64(tn.DType.Size())
		for _, d := range tn.Shape {
			n *= d
		}
		if tn.End-tn.Begin != n {
			t.Errorf("%s spans %d bytes, want %d", tn.Name, tn.End-tn.Begin, n)
		}
		if pos := int64(len(l.Header)) + tn.Begin; pos%int64(tn.DType.Size()) != 0 {
			t.Errorf("%s (%s) starts at file offset %d, not aligned to %d", tn.Name, tn.DType, pos, tn.DType.Size())
		}
		off = tn.End
	}
	if want := int64(len(l.Header)) + off; l.Size != want {
		t.Errorf("Size = %d, want %d", l.Size, want)
	}
}

func TestPlanEscaping(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // the JSON string literal serde_json writes
	}{
		{"quote backslash newline control html line-separator", "\"\\\n\x01<>&\u2028", `"\"\\\n\u0001<>&` + "\u2028" + `"`},
		{"short escapes", "\b\f\r\t", `"\b\f\r\t"`},
		{"other controls lower-case hex, DEL raw", "\x00\x1f\x7f", `"\u0000\u001f` + "\x7f" + `"`},
		{"paragraph separator and non-ASCII raw", "\u2029é😀", "\"\u2029é😀\""},
		{"solidus raw", "a/b", `"a/b"`},
		{"empty", "", `""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := Plan(map[string]string{tt.in: tt.in}, []Entry{{Name: tt.in, DType: dtype.U8, Shape: []int64{1}}}, 0)
			if err != nil {
				t.Fatal(err)
			}
			want := `{"__metadata__":{` + tt.want + `:` + tt.want + `},` + tt.want + `:{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`
			if got := string(bytes.TrimRight(l.Header[8:], " ")); got != want {
				t.Errorf("header\n got %q\nwant %q", got, want)
			}
			// The literal must decode back to the name.
			var back string
			if err := json.Unmarshal([]byte(tt.want), &back); err != nil || back != tt.in {
				t.Errorf("literal %s decodes to %q, %v; want %q", tt.want, back, err, tt.in)
			}
		})
	}
}

func TestPlanRejects(t *testing.T) {
	f32 := func(name string, shape ...int64) Entry { return Entry{Name: name, DType: dtype.F32, Shape: shape} }
	u8 := func(name string, shape ...int64) Entry { return Entry{Name: name, DType: dtype.U8, Shape: shape} }
	tests := []struct {
		name      string
		meta      map[string]string
		entries   []Entry
		maxHeader int64
		kind      fault.Kind
		msg       string // must appear in the error
	}{
		{"duplicate name", nil, []Entry{f32("w", 1), f32("v", 1), f32("w", 2)}, 0, fault.Malformed, `"w"`},
		{"duplicate name across dtypes", nil, []Entry{f32("w", 1), {Name: "w", DType: dtype.U8, Shape: []int64{1}}}, 0, fault.Malformed, "twice"},
		{"reserved name", nil, []Entry{f32("__metadata__", 1)}, 0, fault.Malformed, "reserved"},
		{"invalid UTF-8 name", nil, []Entry{f32("w\xff", 1)}, 0, fault.Malformed, "UTF-8"},
		{"lone surrogate as pickled with surrogatepass", nil, []Entry{f32("\xed\xa0\x80", 1)}, 0, fault.Malformed, "UTF-8"},
		{"invalid UTF-8 metadata key", map[string]string{"k\xc3": "v"}, nil, 0, fault.Malformed, "metadata key"},
		{"invalid UTF-8 metadata value", map[string]string{"k": "\x80"}, nil, 0, fault.Malformed, `metadata value for key "k"`},
		{"invalid dtype", nil, []Entry{{Name: "w", DType: dtype.Invalid, Shape: []int64{1}}}, 0, fault.Malformed, `tensor "w": invalid dtype`},
		{"out of range dtype", nil, []Entry{{Name: "w", DType: dtype.DType(200), Shape: []int64{1}}}, 0, fault.Malformed, "invalid dtype"},
		{"negative dimension", nil, []Entry{f32("w", 2, -1)}, 0, fault.Malformed, `tensor "w": dimension 1 is negative`},
		{"element count overflows", nil, []Entry{f32("w", 1<<32, 1<<32)}, 0, fault.Limit, `tensor "w"`},
		{"bits overflow", nil, []Entry{f32("w", 1<<60)}, 0, fault.Limit, "overflows"},
		{"element count fits, bits overflow", nil, []Entry{{Name: "w", DType: dtype.U8, Shape: []int64{1 << 62, 3}}}, 0, fault.Limit, "overflows"},
		{"total overflows", nil, []Entry{u8("a", 1<<61-1), u8("b", 1<<61-1), u8("c", 1<<61-1), u8("d", 1<<61-1), u8("e", 1<<61-1)}, 0, fault.Limit, "exceed"},
		{"header over maxHeader", nil, []Entry{f32("attn.0", 1, 2, 3)}, 63, fault.Limit, "64 bytes, over the limit of 63"},
		{"header over the reference limit", nil, []Entry{f32(strings.Repeat("x", 100_000_000), 1)}, 1 << 40, fault.Limit, "over the limit of 100000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := Plan(tt.meta, tt.entries, tt.maxHeader)
			checkFault(t, err, tt.kind, tt.msg)
			if l != nil {
				t.Errorf("Plan returned a layout with an error")
			}
		})
	}
}

// checkFault checks that err is a *fault.Error of the given kind whose message contains msg.
func checkFault(t *testing.T, err error, kind fault.Kind, msg string) {
	t.Helper()
	var fe *fault.Error
	if !errors.As(err, &fe) {
		t.Fatalf("error = %v, want a *fault.Error of kind %s", err, kind)
	}
	if fe.Kind != kind {
		t.Errorf("kind = %s, want %s (error: %v)", fe.Kind, kind, err)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Errorf("error %q does not mention %q", err, msg)
	}
}

func TestPlanHeaderLimitIsInclusive(t *testing.T) {
	// The reference refuses N > limit, so N == limit passes.
	if _, err := Plan(nil, []Entry{{Name: "attn.0", DType: dtype.F32, Shape: []int64{1, 2, 3}}}, 64); err != nil {
		t.Errorf("Plan with N == maxHeader: %v", err)
	}
}

func TestPlanCopiesShapes(t *testing.T) {
	shape := []int64{2, 3}
	l, err := Plan(nil, []Entry{{Name: "w", DType: dtype.F32, Shape: shape}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	shape[0] = 99
	if got := l.Tensors[0].Shape[0]; got != 2 {
		t.Errorf("Shape[0] = %d after the caller changed its slice, want 2", got)
	}
}

// benchEntries is the 100,000-tensor model the header benchmarks plan and read.
func benchEntries() []Entry {
	dts := []dtype.DType{dtype.F32, dtype.BF16, dtype.F16, dtype.I64, dtype.U8}
	entries := make([]Entry, 100_000)
	for i := range entries {
		entries[i] = Entry{
			Name:  fmt.Sprintf("model.layers.%d.block.%d.weight", i/10, i%10),
			DType: dts[i%len(dts)],
			Shape: []int64{int64(1024 + i%7), 4096},
		}
	}
	return entries
}

func BenchmarkPlan(b *testing.B) {
	entries := benchEntries()
	meta := map[string]string{"format": "pt"}
	b.ReportAllocs()
	var n int
	for b.Loop() {
		l, err := Plan(meta, entries, 0)
		if err != nil {
			b.Fatal(err)
		}
		n = len(l.Header)
	}
	b.ReportMetric(float64(n), "header-bytes")
}

package sandbox

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/rand"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"testing/quick"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/unpickler"
)

// roundTrip writes resp as a child does and reads it back as the parent does.
func roundTrip(t *testing.T, resp *response) *response {
	t.Helper()
	var buf bytes.Buffer
	if err := writeAnswer(&buf, resp, 0); err != nil {
		t.Fatal(err)
	}
	got, err := readAnswer(&buf, int64(buf.Len()))
	if err != nil {
		t.Fatalf("read back an answer of %d bytes: %v", buf.Len(), err)
	}
	return got
}

// sameJSON requires got and want to encode to the same JSON, the manifest's public form.
func sameJSON(t *testing.T, got, want any) {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g, w) {
		t.Errorf("round trip changed the JSON:\n got %.600s\nwant %.600s", g, w)
	}
}

// TestAnswerRoundTrip checks that what the parent decodes is what the child answered, as
// encoding/json writes it: nil and empty lists, scalars, tensors with and without offsets,
// every global class, aliases, a report, an error and the status.
func TestAnswerRoundTrip(t *testing.T) {
	full := &convert.Manifest{
		ConverterVersion: "v1.2.3",
		Source:           convert.Source{Path: "model.pt", Size: 1234, SHA256: "ab", Container: "zip", Prefix: "archive", Protocol: 2},
		Output:           &convert.Output{Path: "model.safetensors", Size: 99, SHA256: "cd"},
		Verdict:          "safe",
		Globals: []convert.GlobalRef{
			{Entry: "archive/data.pkl", Global: unpickler.Global{Module: "torch._utils", Name: "_rebuild_tensor_v2", Offset: 7, Class: unpickler.Allowed}},
			{Entry: "archive/data.pkl", Global: unpickler.Global{Module: "os", Name: "system", Offset: 1 << 40, Class: unpickler.Dangerous}},
			{Global: unpickler.Global{Module: "mylib", Name: "Config", Class: unpickler.Unknown}},
		},
		Tensors: []convert.Tensor{
			{Name: "w", DType: "F32", Shape: []int64{3, 4}, Bytes: 48, DataOffsets: &[2]int64{0, 48}, SHA256: "ef", Storage: "0"},
			{Name: "scalar", DType: "I64", Shape: []int64{}, Bytes: 8, Storage: "1"},
			{Name: "no shape", DType: "BOOL"},
			{Name: "négatif \x00\xff", Shape: []int64{-1, 0, 1 << 62}, Bytes: -5},
		},
		Aliases:     map[string]string{"b": "a", "c": "a", "": "x"},
		Dropped:     []convert.Dropped{{Path: "epoch", Type: "int"}, {Path: "opt.lr", Type: "float"}},
		DroppedMore: 3,
	}
	emptyLists := &convert.Manifest{Verdict: "unsafe", Globals: []convert.GlobalRef{}, Tensors: []convert.Tensor{},
		Aliases: map[string]string{}, Dropped: []convert.Dropped{},
		Error: &convert.ErrorInfo{Type: fault.Unsafe, Detail: "global os.system is known-dangerous"}}
	for _, c := range []struct {
		name string
		resp *response
	}{
		{"full manifest", &response{Manifest: full, Status: Status{Rlimits: true, Seccomp: "filter", Landlock: "abi 7"}}},
		{"empty lists", &response{Manifest: emptyLists, Error: encodeError(fault.New(fault.Unsafe, "archive/data.pkl", "global os.system is known-dangerous"))}},
		{"nil lists", &response{Manifest: &convert.Manifest{Verdict: "malformed"}}},
		{"report", &response{Report: &convert.Report{Path: "m.safetensors", Size: 10, Tensors: full.Tensors, Source: &full.Source}}},
		{"report without tensors", &response{Report: &convert.Report{Path: "m.safetensors"}}},
		{"error only", &response{Error: encodeError(errors.New("boom"))}},
		{"probe", &response{Probe: map[string]string{"a": "b"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			want := *c.resp
			got := roundTrip(t, c.resp)
			sameJSON(t, got, &want)
			if !reflect.DeepEqual(got.Manifest, want.Manifest) || !reflect.DeepEqual(got.Report, want.Report) {
				t.Errorf("round trip changed the lists:\n got %+v %+v\nwant %+v %+v", got.Manifest, got.Report, want.Manifest, want.Report)
			}
		})
	}
}

// TestAnswerListsQuick round-trips random lists: a field added to a list's element type that
// the records do not carry makes it fail.
func TestAnswerListsQuick(t *testing.T) {
	check := func(ts []convert.Tensor, gs []convert.GlobalRef, aliases map[string]string, ds []convert.Dropped, rts []convert.Tensor) bool {
		resp := &response{
			Manifest: &convert.Manifest{Tensors: ts, Globals: gs, Aliases: aliases, Dropped: ds},
			Report:   &convert.Report{Tensors: rts},
		}
		want := &response{Manifest: &convert.Manifest{Tensors: ts, Globals: gs, Aliases: aliases, Dropped: ds},
			Report: &convert.Report{Tensors: rts}}
		got := roundTrip(t, resp)
		return reflect.DeepEqual(got.Manifest, want.Manifest) && reflect.DeepEqual(got.Report, want.Report)
	}
	if err := quick.Check(check, &quick.Config{MaxCount: 300, Rand: rand.New(rand.NewSource(1))}); err != nil {
		t.Error(err)
	}
}

// TestReadAnswerHostile feeds the parent's decoder answers a confused or hostile child might
// give: each is refused with an error, the over-long ones as a limit fault, without
// allocating what they claim.
func TestReadAnswerHostile(t *testing.T) {
	head := []byte(`{"manifest":{"verdict":"safe"},"status":{}}` + "\n")
	withLists := func(lists ...byte) []byte { return append(bytes.Clone(head), lists...) }
	huge := binary.AppendUvarint(nil, 1<<62)
	for _, c := range []struct {
		name  string
		b     []byte
		max   int64
		limit bool
	}{
		{"empty", nil, 1 << 20, false},
		{"header only", head, 1 << 20, false},
		{"header without newline", head[:len(head)-1], 1 << 20, false},
		{"header over the limit", head, 10, true},
		{"a billion billion tensors", withLists(huge...), 1 << 20, true},
		{"a tensor name longer than the answer", withLists(append([]byte{2}, huge...)...), 1 << 20, true},
		{"truncated tensor", withLists(2, 1, 'w'), 1 << 20, false},
		{"bad offsets marker", withLists(2, 0, 0, 0, 0, 7), 1 << 20, false},
		{"bytes after the answer", withLists(0, 0, 0, 0, 'x'), 1 << 20, false},
		{"not JSON", []byte("nope\n"), 1 << 20, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, err := readAnswer(bytes.NewReader(c.b), c.max)
			if err == nil {
				t.Fatalf("decoded %+v, want an error", resp)
			}
			if got := fault.KindOf(err) == fault.Limit; got != c.limit {
				t.Errorf("error %v: limit fault %v, want %v", err, got, c.limit)
			}
		})
	}
	// The same lists, complete, decode.
	if _, err := readAnswer(bytes.NewReader(withLists(0, 0, 0, 0)), 1<<20); err != nil {
		t.Errorf("a complete answer with nil lists: %v", err)
	}
}

// TestReadAnswerClaimsCostNothing sends lists and strings whose claimed lengths the bytes-left
// bound admits (an answer limit of 512 MiB) and then ends: the decoder must fail having
// allocated little, not what the lengths would cost in memory (gigabytes for the tensors).
func TestReadAnswerClaimsCostNothing(t *testing.T) {
	const max = 512 << 20
	head := []byte(`{"manifest":{"verdict":"safe"},"status":{}}` + "\n")
	claim := func(lists ...uint64) []byte {
		b := bytes.Clone(head)
		for _, v := range lists {
			b = binary.AppendUvarint(b, v)
		}
		return b
	}
	for _, c := range []struct {
		name string
		b    []byte
	}{
		{"tensors", claim(max / 2 / minTensorBytes)},
		{"a tensor's name", claim(2, max/4)},
		{"a tensor's shape", claim(2, 2, 'w', 1, 'F', max/4)},
		{"globals", claim(0, max/2/minGlobalBytes)},
		{"aliases", claim(0, 0, max/2/minPairBytes)},
		{"dropped", claim(0, 0, 0, max/2/minPairBytes)},
	} {
		t.Run(c.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			if resp, err := readAnswer(bytes.NewReader(c.b), max); err == nil {
				t.Fatalf("decoded %+v, want an error", resp)
			}
			runtime.ReadMemStats(&after)
			if got := after.TotalAlloc - before.TotalAlloc; got > 8<<20 {
				t.Errorf("decoding a claim of no bytes allocated %d bytes; want under 8 MiB", got)
			}
		})
	}
}

// TestReadAnswerHeaderBounded: the JSON header line cannot carry what the records bound: a
// header with lists is refused, a long one is refused without being read whole, and an answer
// that fills its limit and goes on is a limit fault.
func TestReadAnswerHeaderBounded(t *testing.T) {
	const max = 512 << 20
	tensors := `{"manifest":{"verdict":"safe","tensors":[` + strings.Repeat("{},", 1000) + `{}]},"status":{}}` + "\n"
	long := append([]byte(`{"manifest":{"verdict":"safe","source":{"path":"`), bytes.Repeat([]byte("a"), 64<<20)...)
	for name, b := range map[string][]byte{"lists in the header": []byte(tensors), "a 64 MiB header": long} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if resp, err := readAnswer(bytes.NewReader(b), max); err == nil {
			t.Errorf("%s: decoded %+v, want an error", name, resp)
		}
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > 8<<20 {
			t.Errorf("%s: decoding allocated %d bytes; want under 8 MiB", name, got)
		}
	}
	full := []byte(`{"manifest":{"verdict":"safe"},"status":{}}` + "\n\x00\x00\x00\x00")
	if _, err := readAnswer(bytes.NewReader(append(bytes.Clone(full), 'x')), int64(len(full))); fault.KindOf(err) != fault.Limit {
		t.Errorf("an answer of its whole limit and one byte more: %v, want a limit fault", err)
	}
}

// FuzzReadAnswer decodes arbitrary answers: never a panic, and whatever decodes is written back
// to the same answer's meaning.
func FuzzReadAnswer(f *testing.F) {
	var buf bytes.Buffer
	m := &convert.Manifest{Verdict: "safe", Tensors: []convert.Tensor{{Name: "w", DType: "F32", Shape: []int64{2}, DataOffsets: &[2]int64{0, 8}}},
		Aliases: map[string]string{"v": "w"}, Globals: []convert.GlobalRef{{Entry: "e", Global: unpickler.Global{Module: "m", Name: "n"}}}}
	if err := writeAnswer(&buf, &response{Manifest: m}, 0); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		resp, err := readAnswer(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		again := roundTrip(t, resp)
		sameJSON(t, again, resp)
	})
}

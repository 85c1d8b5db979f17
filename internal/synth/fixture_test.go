package synth

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/dtype"
)

// The fixtures in testdata/ were written by torch 1.13.1 (testdata/make_fixtures.py); these tests
// feed the writers the same tensors and demand the same bytes.

type fixtureTensor struct {
	Name      string  `json:"name"`
	DType     string  `json:"dtype"`
	Shape     []int64 `json:"shape"`
	ZipKey    string  `json:"zip_key"`
	LegacyKey string  `json:"legacy_key"`
	Data      string  `json:"data"`
}

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(name, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b, err = io.ReadAll(zr); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	return b
}

// fixtureTensors returns the fixture's tensors with the zip or the legacy keys; with their
// recorded bytes as content when the fixture has them.
func fixtureTensors(t *testing.T, name string, legacy bool) (string, []Tensor) {
	t.Helper()
	var f struct {
		Prefix  string          `json:"prefix"`
		Tensors []fixtureTensor `json:"tensors"`
	}
	if err := json.Unmarshal(readFixture(t, name), &f); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	out := make([]Tensor, len(f.Tensors))
	for i, ft := range f.Tensors {
		dt, ok := dtype.FromTorch(ft.DType)
		if !ok {
			t.Fatalf("%s: tensor %s: unknown dtype %q", name, ft.Name, ft.DType)
		}
		data, err := hex.DecodeString(ft.Data)
		if err != nil {
			t.Fatalf("%s: tensor %s: %v", name, ft.Name, err)
		}
		key := ft.ZipKey
		if legacy {
			key = ft.LegacyKey
		}
		out[i] = Tensor{Name: ft.Name, DType: dt, Shape: ft.Shape, Key: key}
		out[i].src = func() io.Reader { return bytes.NewReader(data) }
		if ft.Data == "" { // pickles only: any bytes of the right size
			out[i].src = func() io.Reader { return io.LimitReader(zeros{}, out[i].Size()) }
		}
	}
	return f.Prefix, out
}

// firstDiff reports where two byte strings differ, for a readable failure.
func firstDiff(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	lo := max(i-16, 0)
	t.Errorf("%s: %d bytes, want %d; first difference at offset %d:\n got  %x\n want %x",
		what, len(got), len(want), i, got[lo:min(i+16, len(got))], want[lo:min(i+16, len(want))])
}

// TestSmallMatchesTorch: a 12-tensor state dict with every supported dtype, a scalar, a 4-d
// tensor and keys that sort out of order ("10" < "2") is written byte for byte as torch.save
// writes it, in the zip and the legacy format.
func TestSmallMatchesTorch(t *testing.T) {
	prefix, tensors := fixtureTensors(t, "small.json", false)
	var zipBuf bytes.Buffer
	if err := writeZip(&zipBuf, prefix, tensors, false, false); err != nil {
		t.Fatal(err)
	}
	firstDiff(t, "zip", zipBuf.Bytes(), readFixture(t, "small_zip.pt"))

	_, tensors = fixtureTensors(t, "small.json", true)
	var legBuf bytes.Buffer
	if err := writeLegacy(&legBuf, tensors); err != nil {
		t.Fatal(err)
	}
	firstDiff(t, "legacy", legBuf.Bytes(), readFixture(t, "small_legacy.pt"))
}

// TestManyMatchesTorch: 1001 tensors push the memo past 255 (LONG_BINPUT, LONG_BINGET for a
// storage class first seen late), split SETITEMS and APPENDS into batches of 1000 and use 2- and
// 4-byte ints; the pickles match torch's.
func TestManyMatchesTorch(t *testing.T) {
	_, tensors := fixtureTensors(t, "many.json.gz", false)
	firstDiff(t, "zip data.pkl", stateDict(tensors, false), readFixture(t, "many_zip_data.pkl.gz"))

	_, tensors = fixtureTensors(t, "many.json.gz", true)
	var w bytes.Buffer
	if err := writeLegacy(&w, tensors); err != nil {
		t.Fatal(err)
	}
	want := readFixture(t, "many_legacy_head.bin.gz")
	got := w.Bytes()[:min(len(want), w.Len())]
	firstDiff(t, "legacy pickles", got, want)
}

// skeleton keeps the first head and the last tail bytes written to it, so a multi-gigabyte zip
// can be compared with the torch fixture without storing it.
type skeleton struct {
	head, tail []byte
	headN      int
	tailN      int
	n          int64
}

func (s *skeleton) Write(p []byte) (int, error) {
	s.n += int64(len(p))
	q := p
	if room := s.headN - len(s.head); room > 0 {
		s.head = append(s.head, q[:min(room, len(q))]...)
	}
	if len(q) >= s.tailN {
		s.tail = append(s.tail[:0], q[len(q)-s.tailN:]...)
	} else {
		s.tail = append(s.tail, q...)
		if len(s.tail) > s.tailN {
			s.tail = append(s.tail[:0], s.tail[len(s.tail)-s.tailN:]...)
		}
	}
	return len(p), nil
}

// TestZip64MatchesTorch: a storage of 2^32+100 bytes and a storage whose record starts past
// 4 GiB get ZIP64 extra fields in the local header and the central directory, 24-byte data
// descriptors and a clamped end record exactly as torch writes them.
func TestZip64MatchesTorch(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 4 GiB through the zip writer")
	}
	ones := binary.LittleEndian.AppendUint32(nil, math.Float32bits(1))
	ones = bytes.Repeat(ones, 10)
	tensors := []Tensor{
		{Name: "a", DType: dtype.U8, Shape: []int64{1<<32 + 100}, Key: "0",
			src: func() io.Reader { return io.LimitReader(zeros{}, 1<<32+100) }},
		{Name: "b", DType: dtype.F32, Shape: []int64{10}, Key: "1",
			src: func() io.Reader { return bytes.NewReader(ones) }},
	}
	head, tail := readFixture(t, "big_head.bin"), readFixture(t, "big_tail.bin")
	s := &skeleton{headN: len(head), tailN: len(tail)}
	if err := writeZip(s, "big", tensors, false, false); err != nil {
		t.Fatal(err)
	}
	if want := int64(len(head)) + 1<<32 + 100 + int64(len(tail)); s.n != want {
		t.Errorf("wrote %d bytes, want %d", s.n, want)
	}
	firstDiff(t, "head", s.head, head)
	firstDiff(t, "tail", s.tail, tail)
}

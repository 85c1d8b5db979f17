package convert

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/synth"
)

// TestRereadDetectsDifference checks the comparison every written byte goes through: a byte
// that differs on disk, or a file that ends early, is an internal fault naming the offset.
func TestRereadDetectsDifference(t *testing.T) {
	want := make([]byte, 3000)
	for i := range want {
		want[i] = byte(i * 31)
	}
	path := filepath.Join(t.TempDir(), "out")
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1024) // several pieces per call
	if err := reread(context.Background(), f, 0, want, buf); err != nil {
		t.Fatalf("identical bytes: %v", err)
	}
	if err := reread(context.Background(), f, 1000, want[1000:], buf); err != nil {
		t.Fatalf("identical bytes at an offset: %v", err)
	}

	flipped := append([]byte(nil), want...)
	flipped[2500] ^= 0x40
	err = reread(context.Background(), f, 0, flipped, buf)
	if fault.KindOf(err) != fault.Internal || !strings.Contains(err.Error(), "at offset 2048 differ") {
		t.Errorf("a flipped byte: %v; want an internal fault naming the piece at offset 2048", err)
	}
	err = reread(context.Background(), f, 2000, want, buf)
	if fault.KindOf(err) != fault.Internal || !strings.Contains(err.Error(), "re-read output") {
		t.Errorf("a file shorter than what was written: %v; want an internal re-read fault", err)
	}
}

// TestChunkerPacks checks that the chunker packs consecutive pieces into shared buffers, never
// splits an element across buffers, and gives each chunk the data offset it starts at.
func TestChunkerPacks(t *testing.T) {
	pool := make(chan []byte, 4)
	for range 4 {
		pool <- make([]byte, 0, 10)
	}
	out := make(chan chunk, 4)
	k := &chunker{ctx: context.Background(), pool: pool, out: out}
	put := func(unit, n int) {
		t.Helper()
		b, err := k.space(unit)
		if err != nil {
			t.Fatal(err)
		}
		if len(b)%unit != 0 || len(b) < n {
			t.Fatalf("space(%d) = %d bytes; want a multiple of %d, at least %d", unit, len(b), unit, n)
		}
		k.fill(n)
	}
	put(1, 3) // three 1-byte elements: 0..3
	put(4, 4) // one 4-byte element: 3..7; 7 of 10 filled
	put(4, 8) // needs 4, only 3 free: the first chunk goes out with 7 bytes
	put(2, 2) // fits in the second buffer: 15..17
	if err := k.flush(); err != nil {
		t.Fatal(err)
	}
	close(out)
	var got [][2]int64
	for c := range out {
		got = append(got, [2]int64{c.off, int64(len(c.buf))})
	}
	want := [][2]int64{{0, 7}, {7, 10}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("chunks (offset, length) = %v; want %v", got, want)
	}
}

// TestStagingWritesTheSameFile checks that a staging copy (no early writeback, no fsync) is the
// same file, with the same digests, as a durable conversion: Staging changes when bytes reach
// the disk, never which bytes.
func TestStagingWritesTheSameFile(t *testing.T) {
	src := filepath.Join("..", "..", "testdata", "torch", "module_state_dict.pt")
	dir := t.TempDir()
	durable, err := File(context.Background(), src, filepath.Join(dir, "durable.safetensors"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	staged, err := File(context.Background(), src, filepath.Join(dir, "staged.safetensors"), Options{Staging: true})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(dir, "durable.safetensors"))
	b, _ := os.ReadFile(filepath.Join(dir, "staged.safetensors"))
	if string(a) != string(b) || durable.Output.SHA256 != staged.Output.SHA256 || len(a) == 0 {
		t.Errorf("staging output differs: %d vs %d bytes, sha256 %s vs %s", len(a), len(b), durable.Output.SHA256, staged.Output.SHA256)
	}
}

// TestStagingIsNotReadBack: a staging copy's check is its upload's, against the digests taken
// as it was written, so the conversion never reads it: it converts into an output it could
// not read.
func TestStagingIsNotReadBack(t *testing.T) {
	src := filepath.Join("..", "..", "testdata", "torch", "module_state_dict.pt")
	in, err := OpenInput(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	for _, staging := range []bool{false, true} {
		out, err := os.OpenFile(filepath.Join(t.TempDir(), "out.safetensors"), os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		_, err = FileFD(context.Background(), in, out, Options{Staging: staging})
		out.Close()
		if (err == nil) != staging {
			t.Errorf("conversion into a write-only output with Staging %v: %v; want success only for a staging copy", staging, err)
		}
	}
}

// TestPartDigests: with a part size, the manifest holds the SHA-256 of each part of the
// output as written, the last part shorter, which are the digests of the file's parts.
func TestPartDigests(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "model.pt")
	if err := synth.WriteFile(src, synth.Spec{Format: synth.ZipStored, Tensors: 5, TotalBytes: 3*MinHashPartSize + MinHashPartSize/2, DType: dtype.F16, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	for _, opts := range []Options{{PartSize: MinHashPartSize}, {PartSize: MinHashPartSize, Staging: true}} {
		dst := filepath.Join(dir, fmt.Sprintf("staging-%v.safetensors", opts.Staging))
		m, err := File(context.Background(), src, dst, opts)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for part := range slices.Chunk(data, MinHashPartSize) {
			sum := sha256.Sum256(part)
			want = append(want, hex.EncodeToString(sum[:]))
		}
		if len(want) != 4 || m.Output.PartSize != MinHashPartSize || !slices.Equal(m.Output.PartSHA256, want) {
			t.Errorf("Staging %v: parts of %d bytes %v; want the %d parts of %d bytes of the file, %v",
				opts.Staging, m.Output.PartSize, m.Output.PartSHA256, len(want), MinHashPartSize, want)
		}
	}
	m, err := File(context.Background(), src, filepath.Join(dir, "none.safetensors"), Options{})
	if err != nil || m.Output.PartSHA256 != nil {
		t.Errorf("without a part size: %v, part digests %v; want none", err, m.Output.PartSHA256)
	}
	_, err = File(context.Background(), src, filepath.Join(dir, "tiny.safetensors"), Options{PartSize: 1 << 10})
	if fault.KindOf(err) != fault.Internal || !strings.Contains(err.Error(), "below the minimum") {
		t.Errorf("a part size under the minimum: %v; want an internal fault", err)
	}
}

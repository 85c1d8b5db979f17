package convert

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/fault"
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

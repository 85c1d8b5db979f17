package convert

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"testing"
)

// TestPartHasher: however the bytes arrive, the digests are those of the consecutive parts,
// the last one shorter, and an empty file is one empty part.
func TestPartHasher(t *testing.T) {
	data := make([]byte, 3*MinHashPartSize+7)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name  string
		size  int
		write int // bytes a write
	}{
		{"empty", 0, 1},
		{"less than a part", 100, 33},
		{"exactly one part", MinHashPartSize, MinHashPartSize},
		{"one part and a byte, in writes that straddle the boundary", MinHashPartSize + 1, 3000},
		{"three parts and a tail, in one write", len(data), len(data)},
	} {
		p, err := newPartHasher(MinHashPartSize)
		if err != nil {
			t.Fatal(err)
		}
		for b := range slices.Chunk(data[:tc.size], tc.write) {
			p.write(b)
		}
		var want []string
		for part := range slices.Chunk(data[:tc.size], MinHashPartSize) {
			sum := sha256.Sum256(part)
			want = append(want, hex.EncodeToString(sum[:]))
		}
		if tc.size == 0 {
			sum := sha256.Sum256(nil)
			want = []string{hex.EncodeToString(sum[:])}
		}
		if got := p.finish(); !slices.Equal(got, want) {
			t.Errorf("%s: %d digests %v; want %d, %v", tc.name, len(got), got, len(want), want)
		}
	}
}

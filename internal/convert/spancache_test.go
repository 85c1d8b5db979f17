package convert

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/ptsafe/converter/internal/torchzip"
)

// TestSpanCache reads two records through one cache at random offsets and lengths (within a
// block, across blocks, past the end, more blocks than the cache holds) and requires what a
// direct read gives: the same bytes, the same count, io.EOF exactly when short. Many small
// reads of one region read the source once per block.
func TestSpanCache(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	c := newSpanCache()
	for _, size := range []int{3*cacheBlockSize + 123, (cacheBlocks + 40) * cacheBlockSize} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		src := bytes.NewReader(data)
		r := c.reader(&torchzip.Record{}, src)
		for range 20_000 {
			n := rng.IntN(2 * cacheBlockSize)
			off := rng.Int64N(int64(size) + 10)
			got, want := make([]byte, n), make([]byte, n)
			gn, gerr := r.ReadAt(got, off)
			wn, werr := src.ReadAt(want, off)
			if gn != wn || !bytes.Equal(got[:gn], want[:wn]) || (gerr == nil) != (werr == nil) {
				t.Fatalf("size %d: ReadAt(%d bytes, %d) = %d, %v; direct read: %d, %v", size, n, off, gn, gerr, wn, werr)
			}
		}
	}

	src := &countingReaderAt{r: bytes.NewReader(make([]byte, 1<<20))}
	r := newSpanCache().reader(&torchzip.Record{}, src)
	buf := make([]byte, 100)
	for i := range 10_000 {
		if _, err := r.ReadAt(buf, int64(i*7%(2*cacheBlockSize-100))); err != nil {
			t.Fatal(err)
		}
	}
	if src.n != 2*cacheBlockSize {
		t.Errorf("10,000 reads within two blocks read %d bytes from the source, want the two blocks (%d)", src.n, 2*cacheBlockSize)
	}
}

// TestSpanCacheError passes on a source's failure and caches nothing of it.
func TestSpanCacheError(t *testing.T) {
	boom := errors.New("boom")
	src := &failingReaderAt{err: boom}
	r := newSpanCache().reader(&torchzip.Record{}, src)
	for range 2 {
		if _, err := r.ReadAt(make([]byte, 10), 5); !errors.Is(err, boom) {
			t.Fatalf("ReadAt error %v, want %v", err, boom)
		}
	}
	if src.reads != 2 {
		t.Errorf("a failed block was read %d times, want 2 (not cached)", src.reads)
	}
}

type failingReaderAt struct {
	err   error
	reads int
}

func (f *failingReaderAt) ReadAt([]byte, int64) (int, error) {
	f.reads++
	return 0, f.err
}

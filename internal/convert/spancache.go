package convert

import (
	"io"

	"github.com/ptsafe/converter/internal/torchzip"
)

// The span cache's geometry: blocks small enough that a miss costs about what the read it
// replaces does (one system call), and enough of them (8 MiB) to hold a storage that many
// small views share.
const (
	cacheBlockSize = 16 << 10
	cacheBlocks    = 512
)

// spanCache serves the reads of small views (spans of at most cacheBlockSize bytes) from
// recently read blocks of their records, evicted first in, first out: a million small views of
// one record then cost a few hundred reads instead of a million system calls. It belongs to
// one stream (one goroutine) and holds at most cacheBlocks blocks.
type spanCache struct {
	index  map[blockKey]int
	blocks []cacheBlock
	next   int // the block to evict next, once all are in use
}

type blockKey struct {
	rec *torchzip.Record
	off int64 // a multiple of cacheBlockSize
}

type cacheBlock struct {
	key blockKey
	buf []byte // the bytes read: cacheBlockSize, fewer at the record's end
}

func newSpanCache() *spanCache { return &spanCache{index: map[blockKey]int{}} }

// reader returns src, which reads rec's bytes, reading through the cache.
func (c *spanCache) reader(rec *torchzip.Record, src io.ReaderAt) io.ReaderAt {
	return cachedReader{c: c, rec: rec, src: src}
}

type cachedReader struct {
	c   *spanCache
	rec *torchzip.Record
	src io.ReaderAt
}

// ReadAt reads as src.ReadAt does: fewer than len(p) bytes only with an error, io.EOF past the
// record's end.
func (r cachedReader) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		b, err := r.c.block(r.rec, r.src, pos-pos%cacheBlockSize)
		if err != nil {
			return n, err
		}
		i := pos % cacheBlockSize
		if i >= int64(len(b)) {
			return n, io.EOF
		}
		n += copy(p[n:], b[i:])
	}
	return n, nil
}

// block returns the bytes of rec at off, reading them from src unless cached.
func (c *spanCache) block(rec *torchzip.Record, src io.ReaderAt, off int64) ([]byte, error) {
	k := blockKey{rec, off}
	if i, ok := c.index[k]; ok {
		return c.blocks[i].buf, nil
	}
	i := c.next
	if len(c.blocks) < cacheBlocks {
		i = len(c.blocks)
		c.blocks = append(c.blocks, cacheBlock{buf: make([]byte, cacheBlockSize)})
	} else {
		delete(c.index, c.blocks[i].key)
		c.next = (i + 1) % cacheBlocks
	}
	b := &c.blocks[i]
	m, err := src.ReadAt(b.buf[:cacheBlockSize], off)
	if err != nil && err != io.EOF {
		return nil, err
	}
	b.key, b.buf = k, b.buf[:m]
	c.index[k] = i
	return b.buf, nil
}

package convert

import (
	"context"
	"io"
	"maps"
	"os"

	"golang.org/x/sync/errgroup"

	"github.com/ptsafe/converter/internal/ctxio"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/torchzip"
	"github.com/ptsafe/converter/internal/unpickler"
)

// chunkSize is the unit tensor bytes move in: large enough to amortise syscalls and channel
// operations, small enough that the few chunks in flight keep memory flat.
const chunkSize = 1 << 20

// chunksInFlight bounds the chunks between the reader, the writer and the re-reader.
const chunksInFlight = 8

// chunk is a piece of the output's data section: buf holds the bytes at data offset off. Small
// tensors share a chunk and large ones span several; a chunk never splits an element.
type chunk struct {
	off int64
	buf []byte
}

// newPool returns the chunksInFlight buffers a stream circulates.
func newPool() chan []byte {
	pool := make(chan []byte, chunksInFlight)
	for range chunksInFlight {
		pool <- make([]byte, 0, chunkSize)
	}
	return pool
}

// chunker packs tensor bytes, in output order, into pool buffers and sends each buffer on
// when the next element no longer fits.
type chunker struct {
	ctx  context.Context
	pool <-chan []byte
	out  chan<- chunk
	buf  []byte // the buffer being filled; nil before the first and after a flush
	off  int64  // data offset of buf[0]
}

// space returns the free room of the current buffer as a whole number of unit-byte elements,
// starting a new buffer when not even one fits.
func (k *chunker) space(unit int) ([]byte, error) {
	if k.buf != nil && cap(k.buf)-len(k.buf) < unit {
		if err := k.flush(); err != nil {
			return nil, err
		}
	}
	if k.buf == nil {
		select {
		case b := <-k.pool:
			k.buf = b[:0]
		case <-k.ctx.Done():
			return nil, k.ctx.Err()
		}
	}
	free := k.buf[len(k.buf):cap(k.buf)]
	return free[:len(free)/unit*unit], nil
}

// fill marks the first n bytes of the last space as output.
func (k *chunker) fill(n int) { k.buf = k.buf[:len(k.buf)+n] }

// flush sends the current buffer on, if it holds anything.
func (k *chunker) flush() error {
	if len(k.buf) == 0 {
		return nil
	}
	c := chunk{off: k.off, buf: k.buf}
	k.off += int64(len(k.buf))
	k.buf = nil
	select {
	case k.out <- c:
		return nil
	case <-k.ctx.Done():
		return k.ctx.Err()
	}
}

// sink takes one tensor's output bytes: space returns room for whole elements, put commits
// the first bytes of that room (converting them to little-endian when the source is not).
type sink interface {
	space() ([]byte, error)
	put(b []byte)
}

// tensorSink is the sink for one tensor of a chunker's stream.
type tensorSink struct {
	k    *chunker
	size int // element size
	swap int // byte-swap unit, or 0
}

func (s tensorSink) space() ([]byte, error) { return s.k.space(s.size) }

func (s tensorSink) put(b []byte) {
	if s.swap > 0 {
		swapBytes(b, s.swap)
	}
	s.k.fill(len(b))
}

// produce streams the plan's tensors, in output order, as chunks of their final (contiguous,
// little-endian) bytes, to out, which it closes. It stops at the first error or when ctx ends.
func (p *plan) produce(ctx context.Context, pool <-chan []byte, out chan<- chunk) error {
	defer close(out)
	k := &chunker{ctx: ctx, pool: pool, out: out}
	sc := p.newScratch(ctx)
	defer sc.closeAll()
	checked := map[*torchzip.Record]bool{}
	for _, t := range p.tensors {
		s := tensorSink{k: k, size: t.ref.DType.Size()}
		if p.swap {
			s.swap = t.ref.DType.SwapUnit()
		}
		whole, err := p.readTensor(t, s, sc)
		if err != nil {
			return err
		}
		if whole {
			checked[t.record] = true
		}
	}
	if err := k.flush(); err != nil {
		return err
	}
	// Records read only in part still get their CRC checked, once each.
	for _, t := range p.tensors {
		if !checked[t.record] && t.record.NeedsCheck() {
			if err := t.record.Check(); err != nil {
				return err
			}
			checked[t.record] = true
		}
	}
	return nil
}

// readTensor puts one tensor's bytes into s. It reports whether its record has been read whole
// through the CRC-checking stream (by this tensor, or into a scratch file).
func (p *plan) readTensor(t planned, s sink, sc *scratch) (bool, error) {
	ref := t.ref
	isz := int64(ref.DType.Size())
	n := ref.Numel() * isz
	if n == 0 {
		return false, nil
	}
	start := ref.Offset * isz
	// A small view reads its record through the stream's span cache.
	at := func(r io.ReaderAt) io.ReaderAt {
		if spanBytes(ref) <= cacheBlockSize {
			return sc.spans.reader(t.record, r)
		}
		return r
	}
	switch {
	case p.inflate[t.record] > 0:
		f, err := sc.get(t.record)
		if err != nil {
			return false, err
		}
		defer sc.release(t.record)
		if !contiguous(ref) {
			return true, gather(ref, at(f), s, maxSpanInMemory)
		}
		return true, copyTo(s, io.NewSectionReader(at(f), start, n), n, t.record)
	case !contiguous(ref):
		return false, gather(ref, at(t.record.ReaderAt()), s, maxSpanInMemory)
	case t.record.Stored() && (start != 0 || n != t.record.Size):
		return false, copyTo(s, io.NewSectionReader(at(t.record.ReaderAt()), start, n), n, t.record)
	}
	// The record's only reader (deflated), or one that reads it whole: one pass through the
	// stream, which checks the CRC, and that nothing follows, when it is read to its end.
	r, _ := t.record.Open()
	if _, err := io.CopyN(io.Discard, r, start); err != nil {
		return false, readErr(t.record, err)
	}
	if err := copyTo(s, r, n, t.record); err != nil {
		return false, err
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return false, readErr(t.record, err)
	}
	return true, nil
}

// copyTo puts the next n bytes of r into s.
func copyTo(s sink, r io.Reader, n int64, rec *torchzip.Record) error {
	for left := n; left > 0; {
		b, err := s.space()
		if err != nil {
			return err
		}
		b = b[:min(int64(len(b)), left)]
		if _, err := io.ReadFull(r, b); err != nil {
			return readErr(rec, err)
		}
		s.put(b)
		left -= int64(len(b))
	}
	return nil
}

// scratch holds one stream's scratch files: each deflated record the plan inflates is inflated
// once, at its first reader, into an unlinked temporary file (disk, never memory; nothing is
// left behind however the process ends) that is closed after its last reader. Small views read
// those files, and stored records, through spans.
type scratch struct {
	ctx   context.Context
	dir   string
	files map[*torchzip.Record]*os.File
	left  map[*torchzip.Record]int
	spans *spanCache
}

func (p *plan) newScratch(ctx context.Context) *scratch {
	return &scratch{ctx: ctx, dir: p.scratchDir, files: map[*torchzip.Record]*os.File{}, left: maps.Clone(p.inflate),
		spans: newSpanCache()}
}

// get returns rec's scratch file, inflating the record into it on first use.
func (sc *scratch) get(rec *torchzip.Record) (*os.File, error) {
	if f, ok := sc.files[rec]; ok {
		return f, nil
	}
	f, err := os.CreateTemp(sc.dir, ".inflate-*")
	if err != nil {
		return nil, fault.Wrap(fault.Internal, rec.Entry, fault.PathFree(err), "scratch file")
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fault.Wrap(fault.Internal, rec.Entry, fault.PathFree(err), "unlink scratch file")
	}
	sc.files[rec] = f
	r, _ := rec.Open()
	if _, err := io.Copy(f, ctxio.Reader(sc.ctx, r)); err != nil {
		return nil, readErr(rec, err)
	}
	return f, nil
}

// release records that one reader of rec is done, closing its file after the last.
func (sc *scratch) release(rec *torchzip.Record) {
	if sc.left[rec]--; sc.left[rec] == 0 {
		sc.files[rec].Close()
		delete(sc.files, rec)
	}
}

// closeAll closes the files of a stream that ended early.
func (sc *scratch) closeAll() {
	for _, f := range sc.files {
		f.Close()
	}
}

func readErr(rec *torchzip.Record, err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fault.New(fault.Malformed, rec.Entry, "record ends early")
	}
	if fault.KindOf(err) == fault.Internal {
		// A scratch file's failure names its path, a server's; the message names the record.
		return fault.Wrap(fault.Internal, rec.Entry, fault.PathFree(err), "read")
	}
	return err
}

// contiguous reports whether a view's elements are one row-major run of its storage.
func contiguous(t *unpickler.TensorRef) bool {
	want := int64(1)
	for i := len(t.Shape) - 1; i >= 0; i-- {
		if t.Shape[i] != 1 && t.Stride[i] != want {
			return false
		}
		want *= t.Shape[i]
	}
	return true
}

// swapBytes reverses each unit-byte group of b in place (big-endian to little-endian).
func swapBytes(b []byte, unit int) {
	switch unit {
	case 2:
		for i := 0; i+1 < len(b); i += 2 {
			b[i], b[i+1] = b[i+1], b[i]
		}
	case 4:
		for i := 0; i+3 < len(b); i += 4 {
			b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
		}
	case 8:
		for i := 0; i+7 < len(b); i += 8 {
			b[i], b[i+1], b[i+2], b[i+3], b[i+4], b[i+5], b[i+6], b[i+7] = b[i+7], b[i+6], b[i+5], b[i+4], b[i+3], b[i+2], b[i+1], b[i]
		}
	}
}

// sourceDigests streams every tensor from the source and returns their SHA-256 digests in
// output order, without writing anything (verify --source).
func (p *plan) sourceDigests(ctx context.Context) ([]string, error) {
	g, ctx := errgroup.WithContext(ctx)
	pool := newPool()
	chunks := make(chan chunk, chunksInFlight)
	g.Go(func() error { return p.produce(ctx, pool, chunks) })
	d := digestTensors(g, p.layout.Tensors, chunks, pool)
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return d.finish(), nil
}

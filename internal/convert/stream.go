package convert

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/torchzip"
	"github.com/ptsafe/converter/internal/unpickler"
)

// chunkSize is the unit tensor bytes move in: large enough to amortise syscalls, small enough
// that the few chunks in flight keep memory flat. A multiple of every element size.
const chunkSize = 1 << 20

// chunksInFlight bounds the chunks between the reader and the hash/write stages.
const chunksInFlight = 8

// chunk is a piece of one tensor's output bytes.
type chunk struct {
	buf    []byte
	tensor int  // index into plan.tensors
	last   bool // the tensor's final chunk
	done   chan struct{}
}

// produce streams the plan's tensors, in output order, as chunks of their final
// (contiguous, little-endian) bytes, to out. It stops at the first error or when ctx ends.
func (p *plan) produce(ctx context.Context, pool chan []byte, out chan<- chunk) error {
	defer close(out)
	checked := map[*torchzip.Record]bool{}
	for i, t := range p.tensors {
		emit := func(b []byte, last bool) error {
			if p.swap {
				swapBytes(b, t.ref.DType.SwapUnit())
			}
			select {
			case out <- chunk{buf: b, tensor: i, last: last}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		get := func() ([]byte, error) {
			select {
			case b := <-pool:
				return b[:chunkSize], nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		whole, err := p.readTensor(t, get, emit)
		if err != nil {
			return err
		}
		if whole {
			checked[t.record] = true
		}
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

// readTensor emits one tensor's bytes. It reports whether it read its whole record through the
// CRC-checking stream.
func (p *plan) readTensor(t planned, get func() ([]byte, error), emit func([]byte, bool) error) (bool, error) {
	ref := t.ref
	isz := int64(ref.DType.Size())
	n := ref.Numel() * isz
	if n == 0 {
		b, err := get()
		if err != nil {
			return false, err
		}
		return false, emit(b[:0], true)
	}
	if contiguous(ref) {
		start := ref.Offset * isz
		var r io.Reader
		whole := start == 0 && n == t.record.Size
		switch {
		case whole:
			r, _ = t.record.Open()
		case t.record.Stored():
			r = io.NewSectionReader(t.record.ReaderAt(), start, n)
		default:
			rd, _ := t.record.Open()
			if _, err := io.CopyN(io.Discard, rd, start); err != nil {
				return false, err
			}
			r = io.LimitReader(rd, n)
		}
		for left := n; left > 0; {
			b, err := get()
			if err != nil {
				return false, err
			}
			if int64(len(b)) > left {
				b = b[:left]
			}
			if _, err := io.ReadFull(r, b); err != nil {
				return false, readErr(t.record, err)
			}
			left -= int64(len(b))
			if err := emit(b, left == 0); err != nil {
				return false, err
			}
		}
		if whole {
			// Read to EOF so the stream checks the CRC and that nothing follows.
			if _, err := io.Copy(io.Discard, r); err != nil {
				return false, readErr(t.record, err)
			}
		}
		return whole, nil
	}
	src, release, err := p.randomAccess(t.record)
	if err != nil {
		return false, err
	}
	defer release()
	return false, gather(ref, src, get, emit)
}

func readErr(rec *torchzip.Record, err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fault.New(fault.Malformed, rec.Entry, "record ends early")
	}
	if fault.KindOf(err) == fault.Internal {
		return fault.Wrap(fault.Internal, rec.Entry, err, "read")
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

// digests hashes each tensor's chunks as they pass: SHA-256 per tensor, in output order.
type digests struct {
	sums []string
	h    hash.Hash
}

func newDigests(n int) *digests { return &digests{sums: make([]string, n), h: sha256.New()} }

func (d *digests) add(c chunk) {
	d.h.Write(c.buf)
	if c.last {
		d.sums[c.tensor] = hex.EncodeToString(d.h.Sum(nil))
		d.h.Reset()
	}
}

// pump runs produce and feeds every chunk to hash (per-tensor digests) and to w, concurrently:
// reading, hashing and writing overlap across cores, with at most chunksInFlight chunks alive.
func (p *plan) pump(ctx context.Context, w io.Writer) ([]string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pool := make(chan []byte, chunksInFlight)
	for range chunksInFlight {
		pool <- make([]byte, chunkSize)
	}
	chunks := make(chan chunk, chunksInFlight)
	toHash := make(chan chunk, chunksInFlight)
	prodErr := make(chan error, 1)
	go func() { prodErr <- p.produce(ctx, pool, chunks) }()

	d := newDigests(len(p.tensors))
	hashDone := make(chan struct{})
	go func() {
		defer close(hashDone)
		for c := range toHash {
			d.add(c)
			c.done <- struct{}{}
		}
	}()
	var werr error
	for c := range chunks {
		c.done = make(chan struct{}, 1)
		toHash <- c
		if werr == nil {
			if _, err := w.Write(c.buf); err != nil {
				werr = fault.Wrap(fault.Internal, "", err, "write output")
				cancel()
			}
		}
		<-c.done
		pool <- c.buf[:cap(c.buf)]
	}
	close(toHash)
	<-hashDone
	if err := <-prodErr; err != nil {
		return nil, err
	}
	if werr != nil {
		return nil, werr
	}
	return d.sums, nil
}

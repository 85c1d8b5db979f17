package unpickler

import (
	"bytes"
	"encoding/binary"
	"math/bits"
)

// edit records that the n bytes from the current opcode's offset become repl in the VM's copy.
func (s *scanner) edit(n int64, repl []byte) {
	s.edits = append(s.edits, edit{off: s.op, n: n, repl: repl})
}

// edit is one rewrite of the VM's copy of a stream.
type edit struct {
	off, n int64
	repl   []byte
}

// vmStream returns the stream with every collected edit applied, every dead memo store
// removed, and every FRAME length adjusted to the edits inside its frame; with nothing to
// change, the stream itself. It is called once, after the walk reached STOP.
//
// A memo store is dead when no GET reads it before its key is stored again or the stream ends.
// CPython memoizes nearly every object it pickles and torch reads back almost none, and gopickle
// keeps its memo in a map that would hold every one of them (a million tensors make seven
// million entries and pin every intermediate tuple); without the dead stores it holds only what
// is read, and builds the same objects. A MEMOIZE stores under the memo's current size, which
// dropping an earlier store would change: a stream with any MEMOIZE keeps all its stores.
func (s *scanner) vmStream() []byte {
	drop := !s.memoize && s.dead != nil
	if drop {
		s.memo.each(func(e memoEntry) {
			if !e.read() {
				s.dead.set(e.store)
			}
		})
		_, drop = s.dead.next(0)
	}
	if len(s.edits) == 0 && !drop {
		return s.buf
	}
	// First pass: how much each frame, and the whole stream, grows.
	frameGrow := make([]int64, len(s.frames))
	total, fi := int64(0), 0
	for r := s.rewrites(drop); ; {
		e, ok := r.next()
		if !ok {
			break
		}
		d := int64(len(e.repl)) - e.n
		total += d
		for fi < len(s.frames) && e.off >= s.frameLimit(fi) {
			fi++
		}
		if fi < len(s.frames) && e.off > s.frames[fi] {
			frameGrow[fi] += d
		}
	}
	out := make([]byte, 0, int64(len(s.buf))+max(total, 0))
	prev, fi := int64(0), 0
	// flushFrames rewrites the length of every frame whose operand starts before off.
	flushFrames := func(off int64) {
		for ; fi < len(s.frames) && s.frames[fi] < off; fi++ {
			if frameGrow[fi] == 0 {
				continue
			}
			fo := s.frames[fi]
			out = append(out, s.buf[prev:fo]...)
			out = binary.LittleEndian.AppendUint64(out, uint64(s.frameLimit(fi)-fo-8+frameGrow[fi]))
			prev = fo + 8
		}
	}
	for r := s.rewrites(drop); ; {
		e, ok := r.next()
		if !ok {
			break
		}
		flushFrames(e.off)
		out = append(append(out, s.buf[prev:e.off]...), e.repl...)
		prev = e.off + e.n
	}
	flushFrames(int64(len(s.buf)))
	return append(out, s.buf[prev:]...)
}

// frameLimit returns the offset just past the i-th frame's contents.
func (s *scanner) frameLimit(i int) int64 {
	start := s.frames[i] + 8
	return start + int64(binary.LittleEndian.Uint64(s.buf[s.frames[i]:start]))
}

// rewrites returns the VM copy's edits in stream order: the collected ones merged with, when
// drop is set, the removal of every dead memo store.
func (s *scanner) rewrites(drop bool) *rewriter {
	r := &rewriter{s: s, drop: drop}
	r.advanceDead(0)
	return r
}

// rewriter merges two sorted sequences of edits that never overlap: each is one opcode.
type rewriter struct {
	s       *scanner
	i       int // next collected edit
	drop    bool
	deadOff int64 // next dead store, or -1
}

func (r *rewriter) advanceDead(from int64) {
	r.deadOff = -1
	if r.drop {
		if off, ok := r.s.dead.next(from); ok {
			r.deadOff = off
		}
	}
}

func (r *rewriter) next() (edit, bool) {
	if r.i < len(r.s.edits) && (r.deadOff < 0 || r.s.edits[r.i].off < r.deadOff) {
		r.i++
		return r.s.edits[r.i-1], true
	}
	if r.deadOff < 0 {
		return edit{}, false
	}
	e := edit{off: r.deadOff, n: r.s.storeLen(r.deadOff)}
	r.advanceDead(r.deadOff + 1)
	return e, true
}

// storeLen returns the length of the memo-store opcode at off, which the walk decoded.
func (s *scanner) storeLen(off int64) int64 {
	switch s.buf[off] {
	case opBinPut:
		return 2
	case opLongBinPut:
		return 5
	default: // opPut: the key's line
		return int64(bytes.IndexByte(s.buf[off:], '\n')) + 1
	}
}

// bitset is a set of stream offsets, one bit each.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) set(i int64) { b[i/64] |= 1 << (i % 64) }

// next returns the smallest member at or after from.
func (b bitset) next(from int64) (int64, bool) {
	w := from / 64
	if w >= int64(len(b)) {
		return 0, false
	}
	if rest := b[w] >> (from % 64); rest != 0 {
		return from + int64(bits.TrailingZeros64(rest)), true
	}
	for w++; w < int64(len(b)); w++ {
		if b[w] != 0 {
			return w*64 + int64(bits.TrailingZeros64(b[w])), true
		}
	}
	return 0, false
}

package unpickler

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
)

// Source is what Prescan reads: a byte stream read one opcode at a time (bufio.Reader and
// bytes.Reader both qualify).
type Source interface {
	io.Reader
	io.ByteReader
}

// Scan is what the pre-scanner learned about one pickle stream.
type Scan struct {
	// Protocol is the PROTO operand, or 0/1 when the stream has no PROTO opcode.
	Protocol int
	// Globals lists every GLOBAL, STACK_GLOBAL and INST reference in stream order, classified.
	Globals []Global
	// Length is the number of bytes up to and including STOP. When Prescan fails it is the
	// number of bytes read before the failure.
	Length int64
}

// Bounds on text-line operands that no limit field covers: they are format sanity bounds, far
// above anything CPython writes (a float repr is at most 24 characters, a memo index 10 digits,
// a module path a few dozen bytes).
const (
	maxFloatLine = 64
	maxIndexLine = 20
	maxNameLine  = 1024
)

// Prescan walks one pickle stream from src without building any object, and copies its bytes
// into the returned slice for the VM. avail is the number of bytes left in the underlying input
// (a zip entry's size, or the rest of a legacy file); entry names the stream in errors.
//
// Prescan reads exactly one pickle: it stops right after STOP and never reads beyond it, so the
// caller can check for trailing bytes or read the next pickle of a legacy file. On success the
// returned slice holds exactly Scan.Length bytes.
//
// It exists so that no input can crash, exhaust memory or stall gopickle v0.3.0, and it fails
// closed on every anomaly with a *fault.Error carrying the offset of the offending opcode:
//   - only the opcodes of protocols 0-5 are known (anything else is Malformed); INST, OBJ,
//     EXT1/2/4, text PERSID, NEXT_BUFFER and READONLY_BUFFER are refused as Unsafe;
//   - every length field is checked against the bytes left (avail) and lim.MaxPickleBytes
//     before anything is allocated, and payloads are read in chunks so that memory follows the
//     bytes actually read; text-line operands have bounded lengths;
//   - integers: LONG1/LONG4 and text INT/LONG at most lim.MaxLongBytes bytes or digits, and an
//     empty LONG1/LONG4 is refused (gopickle panics on it);
//   - a symbolic stack: underflow, DICT/SETITEMS with an odd item count, bytes used as a
//     dict or set key (gopickle panics on all of these), more than lim.MaxMarks open MARKs,
//     more than lim.MaxMemo memo entries or stack items, more than lim.MaxObjects values
//     created (constants, literals, containers, globals, calls' results), container nesting
//     built on the stack beyond lim.MaxNesting, a GET of a memo key never set, and anything but exactly one item
//     and no open MARK at STOP;
//   - STACK_GLOBAL operands must be string literals (pushed by a string opcode, directly or
//     through the memo); array._array_reconstructor is refused (gopickle resolves it before
//     any allowlist and it can panic);
//   - FRAME: a frame must fit in the input, must not start before the previous one ends, and
//     no opcode may straddle a frame end;
//   - PROTO at most 5; every str literal must decode as CPython decodes it under torch.load's
//     encoding='utf-8' (BINUNICODE*, BINSTRING and SHORT_BINSTRING as UTF-8; STRING through
//     escape_decode, then UTF-8; UNICODE as raw-unicode-escape), and must not hold a lone
//     surrogate (refused as Unsupported: no tensor name can hold one).
//
// Dangerous or unknown globals are not errors here: every GLOBAL, STACK_GLOBAL and INST is
// recorded in Scan.Globals, classified by pol, and the caller decides. The Scan is returned
// even with an error, listing every global found before the failure and, as far as opcode
// boundaries are known, after it up to STOP (a payload must not hide behind a refusal that
// CPython would not share); the error is Unsafe if any refusal was.
//
// A container added directly to itself is refused. Nesting built through memo aliasing (GET of
// a container modified after its PUT) and longer reference cycles are not visible to a symbolic
// stack: walkers of the object graph must bound their own depth and detect cycles.
func Prescan(src Source, avail int64, entry string, lim limits.Limits, pol *Policy) (*Scan, []byte, error) {
	if avail < 0 {
		return &Scan{}, nil, fault.At(fault.Internal, entry, 0, "pre-scanner: negative input size %d", avail)
	}
	s := newScanner(src, avail, entry, lim, pol)
	err := s.run()
	s.scan.Length = int64(len(s.buf))
	if err != nil {
		return s.scan, nil, s.salvage(err)
	}
	return s.scan, s.buf[:len(s.buf):len(s.buf)], nil
}

func newScanner(src Source, avail int64, entry string, lim limits.Limits, pol *Policy) *scanner {
	s := &scanner{
		src:      src,
		avail:    avail,
		max:      min(avail, lim.MaxPickleBytes),
		entry:    entry,
		lim:      lim,
		pol:      pol,
		frameEnd: -1,
		scan:     &Scan{},
	}
	s.buf = make([]byte, 0, min(s.max, initialBuf))
	return s
}

// grow makes room for n more bytes in the copy of the stream. The copy doubles with the bytes
// actually read, never with a claimed length, and never past s.max (room and readByte keep
// every read within it); once doubling would reach a quarter of s.max it takes s.max at once.
// For a zip record (s.max is its size) a pickle that fills it then costs at most 1.25 times
// its size while the last copy is made, not the 3 times of doubling past it (the old array,
// and a new one twice as large). A legacy stream's s.max runs to the end of the file; one that
// grows that far is allotted at most MaxPickleBytes, which the sandbox's address space covers.
func (s *scanner) grow(n int) {
	need := len(s.buf) + n
	if need <= cap(s.buf) {
		return
	}
	c := 2 * cap(s.buf)
	if int64(c) >= s.max/4 {
		c = int(s.max)
	}
	c = max(c, need)
	grown := make([]byte, len(s.buf), c)
	copy(grown, s.buf)
	s.buf = grown
}

const (
	// initialBuf is the starting capacity of the copy of the stream (see grow).
	initialBuf = 4 << 10
	// readChunk is the largest single allocation step when reading a long payload.
	readChunk = 1 << 20
)

// Item kinds on the symbolic stack and in the memo. kUnset marks an empty memo slot.
const (
	kUnset uint8 = iota
	kOther
	kStr
	kBytes
	kGlobal // a GLOBAL or STACK_GLOBAL result: the only thing REDUCE and NEWOBJ may call
)

// String encodings: how CPython turns a string literal's bytes into a str under torch.load's
// encoding='utf-8'.
const (
	encRaw     uint8 = iota // BINUNICODE*, SHORT_BINUNICODE, BINSTRING, SHORT_BINSTRING: UTF-8
	encEscape               // STRING: escape_decode of the quoted text, then UTF-8
	encRawUESC              // UNICODE: raw-unicode-escape
)

// item is one symbolic stack value: string literals remember where their bytes sit in the copy
// of the stream (off, n); containers and objects carry an identity in off (0 for scalars) and
// their nesting depth.
type item struct {
	off   int64
	n     int64
	depth int32
	kind  uint8
	enc   uint8
}

// memoTable maps memo keys to entries: keys CPython writes are dense from 0, so they live in
// fixed-size pages indexed by key (growing never copies what is stored: a million tensors make
// seven million entries); sparse keys fall back to a map. The pages never cover more than about
// twice the number of entries plus a page, so a hostile key pattern cannot inflate them.
type memoTable struct {
	pages  [][]memoEntry
	sparse map[uint64]memoEntry
	n      int
}

const memoPage = 1 << 12 // entries per page

// memoEntry is one memo value and, for the VM's copy of the stream, where it was stored.
type memoEntry struct {
	item
	// store is the offset of the opcode that stored the value, or -1 minus that offset once a
	// GET has read it (see scanner.dead).
	store int64
}

func (e memoEntry) read() bool { return e.store < 0 }

// slot returns the paged entry for k, or nil when k lies beyond the pages.
func (m *memoTable) slot(k uint64) *memoEntry {
	if p := k / memoPage; p < uint64(len(m.pages)) {
		return &m.pages[p][k%memoPage]
	}
	return nil
}

func (m *memoTable) get(k uint64) (memoEntry, bool) {
	if e := m.slot(k); e != nil && e.kind != kUnset {
		return *e, true
	}
	if m.sparse != nil {
		e, ok := m.sparse[k]
		return e, ok
	}
	return memoEntry{}, false
}

// markRead records that a GET read the entry under k, which must exist.
func (m *memoTable) markRead(k uint64) {
	if e := m.slot(k); e != nil && e.kind != kUnset {
		e.store = -1 - e.store
		return
	}
	e := m.sparse[k]
	e.store = -1 - e.store
	m.sparse[k] = e
}

// put stores e under k and returns the entry it replaces, if any; ok is false when that would
// exceed limit entries.
func (m *memoTable) put(k uint64, e memoEntry, limit int) (prev memoEntry, replaced, ok bool) {
	prev, replaced = m.get(k)
	if !replaced {
		if m.n >= limit {
			return prev, false, false
		}
		m.n++
	}
	for k/memoPage >= uint64(len(m.pages)) && k < 2*uint64(m.n)+memoPage {
		m.pages = append(m.pages, make([]memoEntry, memoPage))
	}
	if s := m.slot(k); s != nil {
		*s = e
		if m.sparse != nil {
			delete(m.sparse, k)
		}
		return prev, replaced, true
	}
	if m.sparse == nil {
		m.sparse = make(map[uint64]memoEntry)
	}
	m.sparse[k] = e
	return prev, replaced, true
}

// each calls fn with every entry.
func (m *memoTable) each(fn func(memoEntry)) {
	for _, p := range m.pages {
		for _, e := range p {
			if e.kind != kUnset {
				fn(e)
			}
		}
	}
	for _, e := range m.sparse {
		fn(e)
	}
}

type scanner struct {
	src      Source
	buf      []byte // copy of the stream so far; len(buf) is the offset of the next byte
	avail    int64
	max      int64 // min(avail, MaxPickleBytes)
	frameEnd int64 // end offset of the current frame, -1 outside frames
	op       int64 // offset of the opcode being decoded
	entry    string
	lim      limits.Limits
	pol      *Policy
	scan     *Scan

	stack     []item
	marks     []int // stack length at each open MARK
	memo      memoTable
	ids       int64 // last container identity handed out
	objects   int64 // values created so far (see add)
	sawBinary bool  // a protocol-1+ opcode was seen (for Scan.Protocol without PROTO)
	sawProto  bool

	// vm, when set, collects in edits the rewrites that make gopickle build what CPython
	// builds (see vmStream), in frames the offset of every FRAME's length operand, and in dead
	// (when set) the memo stores no GET reads; memoize records that a MEMOIZE was seen.
	vm      bool
	edits   []edit
	frames  []int64
	dead    bitset
	memoize bool

	stuck     bool // no opcode boundary is known past the last failure
	salvaging bool
	weight    int64 // see aliasFactor
}

// Opcode bytes (pickletools names).
const (
	opMark           = '('
	opStop           = '.'
	opPop            = '0'
	opPopMark        = '1'
	opDup            = '2'
	opFloat          = 'F'
	opInt            = 'I'
	opBinInt         = 'J'
	opBinInt1        = 'K'
	opLong           = 'L'
	opBinInt2        = 'M'
	opNone           = 'N'
	opPersID         = 'P'
	opBinPersID      = 'Q'
	opReduce         = 'R'
	opString         = 'S'
	opBinString      = 'T'
	opShortBinString = 'U'
	opUnicode        = 'V'
	opBinUnicode     = 'X'
	opAppend         = 'a'
	opBuild          = 'b'
	opGlobal         = 'c'
	opDict           = 'd'
	opEmptyDict      = '}'
	opAppends        = 'e'
	opGet            = 'g'
	opBinGet         = 'h'
	opInst           = 'i'
	opLongBinGet     = 'j'
	opList           = 'l'
	opEmptyList      = ']'
	opObj            = 'o'
	opPut            = 'p'
	opBinPut         = 'q'
	opLongBinPut     = 'r'
	opSetItem        = 's'
	opTuple          = 't'
	opEmptyTuple     = ')'
	opSetItems       = 'u'
	opBinFloat       = 'G'

	opProto    = 0x80
	opNewObj   = 0x81
	opExt1     = 0x82
	opExt2     = 0x83
	opExt4     = 0x84
	opTuple1   = 0x85
	opTuple2   = 0x86
	opTuple3   = 0x87
	opNewTrue  = 0x88
	opNewFalse = 0x89
	opLong1    = 0x8a
	opLong4    = 0x8b

	opBinBytes      = 'B'
	opShortBinBytes = 'C'

	opShortBinUnicode = 0x8c
	opBinUnicode8     = 0x8d
	opBinBytes8       = 0x8e
	opEmptySet        = 0x8f
	opAddItems        = 0x90
	opFrozenSet       = 0x91
	opNewObjEx        = 0x92
	opStackGlobal     = 0x93
	opMemoize         = 0x94
	opFrame           = 0x95

	opByteArray8     = 0x96
	opNextBuffer     = 0x97
	opReadOnlyBuffer = 0x98
)

// protocol0Ops are the opcodes of protocol 0.
const protocol0Ops = "(.02FILNPRSVabcdgilpst"

// IsOpcode reports whether CPython's unpickler knows b as an opcode, so that a stream may
// start with it: torch.load unpickles any file that is not a zip or a tar, whatever its first
// opcode (PROTO is optional), so a container sniffer must treat every such byte as a possible
// bare pickle.
func IsOpcode(b byte) bool { return binaryOps[b] || strings.IndexByte(protocol0Ops, b) >= 0 }

// binaryOps are the opcodes introduced after protocol 0; seeing one in a stream without PROTO
// makes it protocol 1.
var binaryOps = func() (t [256]bool) {
	for _, c := range []byte{opPopMark, opBinFloat, opBinInt, opBinInt1, opBinInt2, opBinPersID,
		opBinString, opShortBinString, opBinUnicode, opEmptyDict, opAppends, opBinGet,
		opLongBinGet, opEmptyList, opObj, opBinPut, opLongBinPut, opEmptyTuple, opSetItems,
		opBinBytes, opShortBinBytes} {
		t[c] = true
	}
	for c := opProto; c <= opReadOnlyBuffer; c++ {
		t[c] = true
	}
	return t
}()

func (s *scanner) pos() int64 { return int64(len(s.buf)) }

func (s *scanner) fail(kind fault.Kind, format string, args ...any) error {
	if err := s.quiet(kind); err != nil {
		return err
	}
	return fault.At(kind, s.entry, s.op, format, args...)
}

// quiet returns errQuiet while salvaging for a refusal of a kind other than Unsafe, nil
// otherwise: past the first refusal only an unsafe one is reported, and a flood of the others
// (a MARK per byte past MaxMarks) must cost nothing. Refusals a stream can repeat once per
// byte call it before boxing their message arguments.
func (s *scanner) quiet(kind fault.Kind) error {
	if s.salvaging && kind != fault.Unsafe {
		return errQuiet
	}
	return nil
}

// errQuiet stands for every refusal but an unsafe one while salvaging; it never leaves salvage.
var errQuiet = errors.New("refused while salvaging")

// halt fails where the walk cannot go on: the input is cut or the next opcode boundary is
// unknown (see salvage).
func (s *scanner) halt(kind fault.Kind, format string, args ...any) error {
	s.stuck = true
	return s.fail(kind, format, args...)
}

func (s *scanner) opName(op byte) string {
	if op >= 0x20 && op < 0x7f {
		return fmt.Sprintf("opcode %q", rune(op))
	}
	return fmt.Sprintf("opcode 0x%02x", op)
}

// room checks that n more bytes may be read, before anything is allocated for them.
func (s *scanner) room(n int64, what string) error {
	p := s.pos()
	switch {
	case n < 0:
		return s.halt(fault.Malformed, "%s: negative length %d", what, n)
	case n > s.avail-p:
		return s.halt(fault.Malformed, "%s: length %d exceeds the %d bytes left in the input", what, n, s.avail-p)
	case n > s.lim.MaxPickleBytes-p:
		return s.halt(fault.Limit, "%s: length %d takes the pickle past the %d-byte limit (MaxPickleBytes)", what, n, s.lim.MaxPickleBytes)
	case s.frameEnd >= 0 && n > s.frameEnd-p:
		return s.halt(fault.Malformed, "%s straddles the end of its frame at offset %d", what, s.frameEnd)
	}
	return nil
}

func (s *scanner) readErr(err error, what string) error {
	s.stuck = true
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return s.fail(fault.Malformed, "%s: input ends at offset %d, before the %d bytes it was said to hold", what, s.pos(), s.avail)
	}
	// A reader that already classified its failure (a zip entry's CRC or deflate check) keeps
	// that classification; only a plain I/O error is internal.
	return &fault.Error{Kind: fault.KindOf(err), Entry: s.entry, Offset: s.op, Msg: "reading " + what, Err: err}
}

// read appends n bytes of the stream to buf and returns the offset where they start.
func (s *scanner) read(n int64, what string) (int64, error) {
	if err := s.room(n, what); err != nil {
		return 0, err
	}
	start := s.pos()
	for n > 0 {
		step := min(n, readChunk)
		s.grow(int(step))
		p := len(s.buf)
		s.buf = s.buf[:p+int(step)]
		if step <= 8 {
			for i := range int(step) {
				b, err := s.src.ReadByte()
				if err != nil {
					s.buf = s.buf[:p+i]
					return 0, s.readErr(err, what)
				}
				s.buf[p+i] = b
			}
		} else if m, err := io.ReadFull(s.src, s.buf[p:]); err != nil {
			s.buf = s.buf[:p+m]
			return 0, s.readErr(err, what)
		}
		n -= step
	}
	return start, nil
}

func (s *scanner) readByte(what string) (byte, error) {
	if p := int64(len(s.buf)); p < s.max && (s.frameEnd < 0 || p < s.frameEnd) {
		c, err := s.src.ReadByte()
		if err != nil {
			return 0, s.readErr(err, what)
		}
		s.grow(1)
		s.buf = append(s.buf, c)
		return c, nil
	}
	off, err := s.read(1, what)
	if err != nil {
		return 0, err
	}
	return s.buf[off], nil
}

func (s *scanner) readUint(n int64, what string) (uint64, error) {
	off, err := s.read(n, what)
	if err != nil {
		return 0, err
	}
	b := s.buf[off : off+n]
	switch n {
	case 1:
		return uint64(b[0]), nil
	case 2:
		return uint64(binary.LittleEndian.Uint16(b)), nil
	case 4:
		return uint64(binary.LittleEndian.Uint32(b)), nil
	default:
		return binary.LittleEndian.Uint64(b), nil
	}
}

// readLine reads a newline-terminated operand of at most maxLen bytes (0: no bound beyond the
// input and MaxPickleBytes) and returns the offsets of its text, without the newline.
func (s *scanner) readLine(maxLen int64, what string) (int64, int64, error) {
	start := s.pos()
	for {
		b, err := s.readByte(what)
		if err != nil {
			return 0, 0, err
		}
		if b == '\n' {
			return start, s.pos() - 1, nil
		}
		if maxLen > 0 && s.pos()-start > maxLen {
			return 0, 0, s.halt(fault.Limit, "%s: line longer than %d bytes", what, maxLen)
		}
	}
}

// add pushes a value the current opcode creates, counted against MaxObjects: gopickle builds
// one Go value (and CPython one object) for each, whatever its size in the stream, so their
// number, not the stream's length, bounds the memory of a pickle of many small values. DUP and
// memo GETs push a reference to a value already counted. The value is pushed even when it is
// one too many, so that salvage walks on over the stack CPython would have (a missing global
// would make a later REDUCE look unsafe); salvage's own memory is bounded by the stack limit.
func (s *scanner) add(it item) error {
	if err := s.push(it); err != nil {
		return err
	}
	s.objects++
	if s.objects <= int64(s.lim.MaxObjects) || s.salvaging {
		return nil
	}
	return s.fail(fault.Limit, "pickle builds more than %d objects (limit max-objects %d)", s.lim.MaxObjects, s.lim.MaxObjects)
}

func (s *scanner) push(it item) error {
	if len(s.stack) >= s.lim.MaxMemo {
		if err := s.quiet(fault.Limit); err != nil {
			return err
		}
		return s.fail(fault.Limit, "more than %d items on the pickle stack (MaxMemo)", s.lim.MaxMemo)
	}
	s.stack = append(s.stack, it)
	s.weight += it.n
	return nil
}

// notGlobal refuses a call of something other than a global: a container (gopickle calls
// lists and dicts, formatting every argument when it fails) or a call's result (the
// getattr(module, name)(...) pattern). CPython calls any callable; torch calls only globals.
func (s *scanner) notGlobal(what string) error {
	return s.fail(fault.Unsafe, "%s of a value that is not a global (a container or a call's result)", what)
}

// aliasFactor and aliasFloor bound weight, the bytes of str, bytes and integer literals pushed
// with every memo GET and DUP of one counted again, to aliasFactor times the stream's length
// plus aliasFloor at STOP. gopickle formats stack values with %#v in its error messages, so a
// tuple of 2,000 GETs of one 100 KB string costs gigabytes in one message; a pickle torch
// writes fetches only short strings from the memo ('storage', 'cpu') and stays near 1.
const (
	aliasFactor = 8
	aliasFloor  = 1 << 20
)

func (s *scanner) base() int {
	if len(s.marks) == 0 {
		return 0
	}
	return s.marks[len(s.marks)-1]
}

func (s *scanner) pop(what string) (item, error) {
	if len(s.stack) <= s.base() {
		if err := s.quiet(fault.Malformed); err != nil {
			return item{}, err
		}
		return item{}, s.fail(fault.Malformed, "%s: stack underflow", what)
	}
	it := s.stack[len(s.stack)-1]
	s.stack = s.stack[:len(s.stack)-1]
	return it, nil
}

// top returns a pointer to the item on top of the stack (above the current MARK).
func (s *scanner) top(what string) (*item, error) {
	if len(s.stack) <= s.base() {
		if err := s.quiet(fault.Malformed); err != nil {
			return nil, err
		}
		return nil, s.fail(fault.Malformed, "%s: stack underflow", what)
	}
	return &s.stack[len(s.stack)-1], nil
}

// popMark removes the items above the topmost MARK and the MARK itself, returning the items;
// the slice stays valid until the next push.
func (s *scanner) popMark(what string) ([]item, error) {
	if len(s.marks) == 0 {
		if err := s.quiet(fault.Malformed); err != nil {
			return nil, err
		}
		return nil, s.fail(fault.Malformed, "%s without a MARK", what)
	}
	b := s.marks[len(s.marks)-1]
	s.marks = s.marks[:len(s.marks)-1]
	items := s.stack[b:]
	s.stack = s.stack[:b]
	return items, nil
}

// nest returns the depth of a container holding items, checked against MaxNesting.
func (s *scanner) nest(d int32) (int32, error) {
	if int(d)+1 > s.lim.MaxNesting {
		if err := s.quiet(fault.Limit); err != nil {
			return 0, err
		}
		return 0, s.fail(fault.Limit, "containers nested deeper than %d (MaxNesting)", s.lim.MaxNesting)
	}
	return d + 1, nil
}

func maxDepth(items []item) int32 {
	var d int32
	for _, it := range items {
		d = max(d, it.depth)
	}
	return d
}

// object pushes a new container or object of nesting depth d with a fresh identity.
func (s *scanner) object(d int32) error {
	s.ids++
	return s.add(item{kind: kOther, off: s.ids, depth: d})
}

// container pushes a container built from items.
func (s *scanner) container(items []item) error {
	d, err := s.nest(maxDepth(items))
	if err != nil {
		return err
	}
	return s.object(d)
}

// fill records that the container on top of the stack received values of depth d. It refuses
// a container added to itself (a list appended to itself, a dict holding itself): the cycles a
// symbolic stack can see. Longer cycles are left to the graph walker.
func (s *scanner) fill(what string, d int32, values ...item) error {
	t, err := s.top(what)
	if err != nil {
		return err
	}
	if t.kind == kOther && t.off != 0 {
		for _, v := range values {
			if v.kind == kOther && v.off == t.off {
				if err := s.quiet(fault.Malformed); err != nil {
					return err
				}
				return s.fail(fault.Malformed, "%s adds a container to itself (reference cycle)", what)
			}
		}
	}
	nd, err := s.nest(d)
	if err != nil {
		return err
	}
	t.kind = kOther
	t.depth = max(t.depth, nd)
	return nil
}

func (s *scanner) noBytesKeys(items []item, step int, what string) error {
	for i := 0; i < len(items); i += step {
		if items[i].kind == kBytes {
			return s.fail(fault.Malformed, "%s: bytes used as a key", what)
		}
	}
	return nil
}

// literal pushes a string or bytes literal whose bytes are buf[off:off+n].
func (s *scanner) literal(kind, enc uint8, off, n int64) error {
	return s.add(item{kind: kind, enc: enc, off: off, n: n})
}

// counted reads a length-prefixed payload: lenBytes of little-endian length, then the data.
func (s *scanner) counted(lenBytes int64, signed bool, what string) (int64, int64, error) {
	u, err := s.readUint(lenBytes, what)
	if err != nil {
		return 0, 0, err
	}
	var n int64
	switch {
	case signed:
		n = int64(int32(uint32(u)))
	case u > math.MaxInt64:
		return 0, 0, s.halt(fault.Malformed, "%s: length %d exceeds the %d bytes left in the input", what, u, s.avail-s.pos())
	default:
		n = int64(u)
	}
	off, err := s.read(n, what)
	return off, n, err
}

func (s *scanner) unicode(lenBytes int64, what string) error {
	off, n, err := s.counted(lenBytes, false, what)
	if err != nil {
		return err
	}
	return s.text(encRaw, off, n, what)
}

func (s *scanner) long(lenBytes int64, what string) error {
	_, n, err := s.counted(lenBytes, lenBytes == 4, what)
	if err != nil {
		return err
	}
	if n == 0 {
		// Python reads an empty LONG1/LONG4 as 0, but gopickle v0.3.0 indexes bytes[len-1]
		// and panics; torch never writes one (the pickler emits 0 as BININT1).
		return s.fail(fault.Malformed, "%s with zero length (valid Python, but crashes gopickle; never written by torch)", what)
	}
	if n > int64(s.lim.MaxLongBytes) {
		return s.fail(fault.Limit, "%s of %d bytes exceeds %d (MaxLongBytes)", what, n, s.lim.MaxLongBytes)
	}
	return s.add(item{kind: kOther, n: n})
}

// textInt checks a text INT or LONG operand: an optional sign, at most MaxLongBytes digits,
// and for LONG an optional trailing 'L'.
func (s *scanner) textInt(long bool, what string) error {
	a, b, err := s.readLine(int64(s.lim.MaxLongBytes)+2, what)
	if err != nil {
		return err
	}
	t := s.buf[a:b]
	if long && len(t) > 0 && t[len(t)-1] == 'L' {
		t = t[:len(t)-1]
	}
	if len(t) > 0 && (t[0] == '-' || t[0] == '+') {
		t = t[1:]
	}
	if len(t) == 0 {
		return s.fail(fault.Malformed, "%s: no digits", what)
	}
	if len(t) > s.lim.MaxLongBytes {
		return s.fail(fault.Limit, "%s of %d digits exceeds %d (MaxLongBytes)", what, len(t), s.lim.MaxLongBytes)
	}
	for _, c := range t {
		if c < '0' || c > '9' {
			return s.fail(fault.Malformed, "%s: %q is not a decimal integer", what, s.buf[a:b])
		}
	}
	return s.add(item{kind: kOther, n: int64(len(t))})
}

// memoKey reads a text memo index.
func (s *scanner) memoKey(what string) (uint64, error) {
	a, b, err := s.readLine(maxIndexLine, what)
	if err != nil {
		return 0, err
	}
	t := s.buf[a:b]
	if len(t) == 0 {
		return 0, s.fail(fault.Malformed, "%s: empty memo index", what)
	}
	var k uint64
	for _, c := range t {
		if c < '0' || c > '9' || k > (math.MaxInt64-9)/10 {
			return 0, s.fail(fault.Malformed, "%s: bad memo index %q", what, t)
		}
		k = k*10 + uint64(c-'0')
	}
	return k, nil
}

func (s *scanner) get(k uint64, what string) error {
	e, ok := s.memo.get(k)
	if !ok {
		if err := s.quiet(fault.Malformed); err != nil {
			return err
		}
		return s.fail(fault.Malformed, "%s of memo key %d, which was never set", what, k)
	}
	if s.dead != nil && !e.read() {
		s.memo.markRead(k)
	}
	return s.push(e.item)
}

func (s *scanner) put(k uint64, what string) error {
	t, err := s.top(what)
	if err != nil {
		return err
	}
	prev, replaced, ok := s.memo.put(k, memoEntry{item: *t, store: s.op}, s.lim.MaxMemo)
	if !ok {
		if err := s.quiet(fault.Limit); err != nil {
			return err
		}
		return s.fail(fault.Limit, "more than %d memo entries (MaxMemo)", s.lim.MaxMemo)
	}
	if s.dead != nil && replaced && !prev.read() {
		s.dead.set(prev.store)
	}
	return nil
}

// name reads one newline-terminated GLOBAL/INST operand; CPython decodes it as UTF-8.
func (s *scanner) name(what string) (string, error) {
	a, b, err := s.readLine(maxNameLine, what)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(s.buf[a:b]) {
		return "", s.fail(fault.Malformed, "%s: invalid UTF-8 in name", what)
	}
	return string(s.buf[a:b]), nil
}

// record adds a global to the scan and refuses array._array_reconstructor, which gopickle
// resolves before any FindClass hook and which panics on a bad type code.
func (s *scanner) record(module, name string) error {
	s.scan.Globals = append(s.scan.Globals, Global{
		Module: module, Name: name, Offset: s.op, Class: s.pol.Classify(module, name),
	})
	if nm, nn := Normalize(module, name); nm == "array" && nn == "_array_reconstructor" {
		return s.fail(fault.Unsafe, "global array._array_reconstructor is resolved by gopickle before any allowlist")
	}
	return nil
}

// decodeText returns the str CPython reads from a string literal's bytes under torch.load's
// encoding='utf-8', or why CPython would raise (errSurrogate: it would not, but no tensor name
// can hold the result).
func decodeText(enc uint8, raw []byte) (string, error) {
	switch enc {
	case encEscape:
		v, err := escapeDecode(raw)
		if err == nil && !utf8.ValidString(v) {
			err = errNotUTF8
		}
		return v, err
	case encRawUESC:
		return rawUnicodeEscapeDecode(raw)
	}
	if !utf8.Valid(raw) {
		return "", errNotUTF8
	}
	return string(raw), nil
}

var errNotUTF8 = errors.New("invalid UTF-8 (torch.load decodes it as UTF-8)")

// errSurrogate marks a UNICODE escape of a lone UTF-16 surrogate: a valid Python str that no
// UTF-8 tensor name or safetensors header can hold.
var errSurrogate = errors.New("escape of a UTF-16 surrogate, which no UTF-8 name can hold")

// text pushes a str literal whose bytes are buf[off:off+n], refusing what CPython refuses. When
// collecting VM edits, a literal gopickle would read differently (it decodes no escape and no
// Latin-1) is replaced by a BINUNICODE of the decoded text.
func (s *scanner) text(enc uint8, off, n int64, what string) error {
	raw := s.buf[off : off+n]
	if enc == encRaw && utf8.Valid(raw) {
		return s.literal(kStr, enc, off, n) // the common case, without copying the text
	}
	v, err := decodeText(enc, raw)
	switch {
	case errors.Is(err, errSurrogate):
		return s.fail(fault.Unsupported, "%s: %v", what, err)
	case err != nil:
		return s.fail(fault.Malformed, "%s: %v", what, err)
	case s.vm && v != string(raw):
		s.edit(int64(len(s.buf))-s.op, binUnicode(v))
	}
	return s.literal(kStr, enc, off, n)
}

// binUnicode encodes a str push that gopickle reads verbatim.
func binUnicode(v string) []byte {
	if uint64(len(v)) <= math.MaxUint32 {
		return append(append([]byte{opBinUnicode}, le32(uint32(len(v)))...), v...)
	}
	return append(binary.LittleEndian.AppendUint64([]byte{opBinUnicode8}, uint64(len(v))), v...)
}

func le32(n uint32) []byte { return binary.LittleEndian.AppendUint32(nil, n) }

// gopickleBuiltins are the globals gopickle v0.3.0 resolves itself before any FindClass hook,
// to constructors that drop dict(pairs) and OrderedDict(pairs) items or format their arguments
// without bound. The VM's copy of the stream names them with vmAlias before the module, so
// that they reach our FindClass instead (array._array_reconstructor is refused outright).
var gopickleBuiltins = map[string]bool{
	"collections.OrderedDict": true,
	"builtins.list":           true,
	"builtins.dict":           true,
	"__builtin__.object":      true,
	"copy_reg._reconstructor": true,
}

// vmAlias prefixes a module name in the VM's copy of a stream; no importable module starts
// with it.
const vmAlias = "\x00"

// renameBuiltin makes the VM's copy of the current GLOBAL or STACK_GLOBAL opcode, n bytes
// long (pops bytes first: the two STACK_GLOBAL operands), name a gopickle builtin through
// vmAlias.
func (s *scanner) renameBuiltin(module, name string, n int64, pops string) {
	if s.vm && gopickleBuiltins[module+"."+name] {
		s.edit(n, []byte(pops+"c"+vmAlias+module+"\n"+name+"\n"))
	}
}

func (s *scanner) stackGlobal() error {
	const what = "STACK_GLOBAL"
	nameIt, err := s.pop(what)
	if err != nil {
		return err
	}
	modIt, err := s.pop(what)
	if err != nil {
		return err
	}
	if nameIt.kind != kStr || modIt.kind != kStr {
		return s.fail(fault.Unsafe, "STACK_GLOBAL with non-literal operands")
	}
	if modIt.n > maxNameLine || nameIt.n > maxNameLine {
		// Reports and error messages repeat the name: a 100 MB one is not recorded.
		return s.fail(fault.Unsafe, "STACK_GLOBAL operand longer than %d bytes: no allowed global is named so", maxNameLine)
	}
	// Both literals were decoded without error when they were pushed.
	module, _ := decodeText(modIt.enc, s.buf[modIt.off:modIt.off+modIt.n])
	name, _ := decodeText(nameIt.enc, s.buf[nameIt.off:nameIt.off+nameIt.n])
	if err := s.record(module, name); err != nil {
		return err
	}
	s.renameBuiltin(module, name, 1, string([]byte{opPop, opPop}))
	return s.add(item{kind: kGlobal})
}

func (s *scanner) run() error {
	for {
		if s.frameEnd >= 0 && s.pos() == s.frameEnd {
			s.frameEnd = -1
		}
		s.op = s.pos()
		op, err := s.readByte("opcode")
		if err != nil {
			return err
		}
		if binaryOps[op] {
			s.sawBinary = true
		}
		done, err := s.step(op)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// salvage keeps walking after err, the stream's first refusal, up to STOP, to report the
// globals CPython could still reach: most refusals here are valid Python (an empty LONG1,
// bytes as a dict key, a container inside itself, every limit), and a payload placed after
// one must not hide behind "malformed". Checks go on but no longer stop the walk; it ends
// where no opcode boundary is known (the input is cut, an operand is too long to skip, an
// opcode is unknown). It returns the first refusal as Unsafe, if any (an opcode outside the
// allowlist, STACK_GLOBAL on operands that are not literals), else err. Memory stays within
// the limits: a refused push, MARK or memo entry is not stored.
func (s *scanner) salvage(err error) error {
	s.salvaging = true
	for unsafe := fault.KindOf(err) == fault.Unsafe; !s.stuck && !unsafe; {
		if s.frameEnd >= 0 && s.pos() >= s.frameEnd {
			s.frameEnd = -1
		}
		s.op = s.pos()
		op, rerr := s.readByte("opcode")
		if rerr != nil || op == opStop {
			break
		}
		// While salvaging, every refusal but an unsafe one is errQuiet.
		if _, serr := s.step(op); serr != nil && serr != errQuiet && fault.KindOf(serr) == fault.Unsafe {
			err, unsafe = serr, true
		}
	}
	return err
}

// step decodes one opcode; it reports true after STOP.
func (s *scanner) step(op byte) (bool, error) {
	var err error
	switch op {
	case opMark:
		if len(s.marks) >= s.lim.MaxMarks {
			if err := s.quiet(fault.Limit); err != nil {
				return false, err
			}
			return false, s.fail(fault.Limit, "more than %d open MARKs (MaxMarks)", s.lim.MaxMarks)
		}
		s.marks = append(s.marks, len(s.stack))
	case opStop:
		if _, err = s.pop("STOP"); err != nil {
			return false, err
		}
		if len(s.stack) != 0 || len(s.marks) != 0 {
			return false, s.fail(fault.Malformed, "STOP leaves %d more stack items and %d open MARKs (want none)", len(s.stack), len(s.marks))
		}
		if s.frameEnd >= 0 && s.frameEnd != s.pos() {
			return false, s.fail(fault.Malformed, "STOP inside a frame that extends %d bytes further", s.frameEnd-s.pos())
		}
		if s.weight > aliasFactor*s.pos()+aliasFloor {
			return false, s.fail(fault.Limit, "strings and integers fetched from the memo total %d bytes, more than %d times the %d-byte pickle", s.weight, aliasFactor, s.pos())
		}
		if !s.sawProto && s.sawBinary {
			s.scan.Protocol = 1
		}
		return true, nil
	case opPop:
		if len(s.stack) > s.base() {
			s.stack = s.stack[:len(s.stack)-1]
		} else if len(s.marks) > 0 {
			// CPython: POP on an empty frame discards the MARK.
			s.marks = s.marks[:len(s.marks)-1]
		} else {
			err = s.fail(fault.Malformed, "POP: stack underflow")
		}
	case opPopMark:
		_, err = s.popMark("POP_MARK")
	case opDup:
		var t *item
		if t, err = s.top("DUP"); err == nil {
			err = s.push(*t)
		}

	case opNone, opNewTrue, opNewFalse:
		err = s.add(item{kind: kOther})
	case opBinInt1:
		if _, err = s.read(1, "BININT1"); err == nil {
			err = s.add(item{kind: kOther})
		}
	case opBinInt2:
		if _, err = s.read(2, "BININT2"); err == nil {
			err = s.add(item{kind: kOther})
		}
	case opBinInt:
		if _, err = s.read(4, "BININT"); err == nil {
			err = s.add(item{kind: kOther})
		}
	case opBinFloat:
		if _, err = s.read(8, "BINFLOAT"); err == nil {
			err = s.add(item{kind: kOther})
		}
	case opInt:
		err = s.textInt(false, "INT")
	case opLong:
		err = s.textInt(true, "LONG")
	case opFloat:
		if _, _, err = s.readLine(maxFloatLine, "FLOAT"); err == nil {
			err = s.add(item{kind: kOther})
		}
	case opLong1:
		err = s.long(1, "LONG1")
	case opLong4:
		err = s.long(4, "LONG4")

	case opString:
		var a, b int64
		if a, b, err = s.readLine(0, "STRING"); err != nil {
			return false, err
		}
		t := s.buf[a:b]
		if len(t) < 2 || t[0] != t[len(t)-1] || (t[0] != '\'' && t[0] != '"') {
			return false, s.fail(fault.Malformed, "STRING operand is not quoted")
		}
		err = s.text(encEscape, a+1, b-a-2, "STRING")
	case opBinString:
		var off, n int64
		if off, n, err = s.counted(4, true, "BINSTRING"); err == nil {
			err = s.text(encRaw, off, n, "BINSTRING")
		}
	case opShortBinString:
		var off, n int64
		if off, n, err = s.counted(1, false, "SHORT_BINSTRING"); err == nil {
			err = s.text(encRaw, off, n, "SHORT_BINSTRING")
		}
	case opUnicode:
		var a, b int64
		if a, b, err = s.readLine(0, "UNICODE"); err == nil {
			err = s.text(encRawUESC, a, b-a, "UNICODE")
		}
	case opBinUnicode:
		err = s.unicode(4, "BINUNICODE")
	case opShortBinUnicode:
		err = s.unicode(1, "SHORT_BINUNICODE")
	case opBinUnicode8:
		err = s.unicode(8, "BINUNICODE8")
	case opBinBytes, opShortBinBytes, opBinBytes8:
		lb, what := int64(4), "BINBYTES"
		if op == opShortBinBytes {
			lb, what = 1, "SHORT_BINBYTES"
		} else if op == opBinBytes8 {
			lb, what = 8, "BINBYTES8"
		}
		var off, n int64
		if off, n, err = s.counted(lb, false, what); err == nil {
			err = s.literal(kBytes, encRaw, off, n)
		}
	case opByteArray8:
		if _, _, err = s.counted(8, false, "BYTEARRAY8"); err == nil {
			err = s.add(item{kind: kOther})
		}

	case opEmptyList, opEmptyDict, opEmptyTuple, opEmptySet:
		err = s.object(1)
	case opList, opTuple:
		what := "LIST"
		if op == opTuple {
			what = "TUPLE"
		}
		var items []item
		if items, err = s.popMark(what); err == nil {
			err = s.container(items)
		}
	case opTuple1, opTuple2, opTuple3:
		n := int(op-opTuple1) + 1
		if len(s.stack)-s.base() < n {
			if err := s.quiet(fault.Malformed); err != nil {
				return false, err
			}
			return false, s.fail(fault.Malformed, "TUPLE%d: stack underflow", n)
		}
		items := s.stack[len(s.stack)-n:]
		s.stack = s.stack[:len(s.stack)-n]
		err = s.container(items)
	case opDict:
		var items []item
		if items, err = s.popMark("DICT"); err != nil {
			return false, err
		}
		if len(items)%2 != 0 {
			return false, s.fail(fault.Malformed, "DICT with an odd number (%d) of items", len(items))
		}
		err = s.container(items)
	case opFrozenSet:
		var items []item
		if items, err = s.popMark("FROZENSET"); err != nil {
			return false, err
		}
		if err = s.noBytesKeys(items, 1, "FROZENSET"); err == nil {
			err = s.container(items)
		}
	case opAppend:
		var v item
		if v, err = s.pop("APPEND"); err == nil {
			err = s.fill("APPEND", v.depth, v)
		}
	case opAppends:
		var items []item
		if items, err = s.popMark("APPENDS"); err == nil {
			err = s.fill("APPENDS", maxDepth(items), items...)
		}
	case opSetItem:
		var k, v item
		if v, err = s.pop("SETITEM"); err != nil {
			return false, err
		}
		if k, err = s.pop("SETITEM"); err != nil {
			return false, err
		}
		if k.kind == kBytes {
			return false, s.fail(fault.Malformed, "SETITEM: bytes used as a key")
		}
		err = s.fill("SETITEM", max(k.depth, v.depth), k, v)
	case opSetItems:
		var items []item
		if items, err = s.popMark("SETITEMS"); err != nil {
			return false, err
		}
		if len(items)%2 != 0 {
			return false, s.fail(fault.Malformed, "SETITEMS with an odd number (%d) of items", len(items))
		}
		if err = s.noBytesKeys(items, 2, "SETITEMS"); err == nil {
			err = s.fill("SETITEMS", maxDepth(items), items...)
		}
	case opAddItems:
		var items []item
		if items, err = s.popMark("ADDITEMS"); err != nil {
			return false, err
		}
		if err = s.noBytesKeys(items, 1, "ADDITEMS"); err == nil {
			err = s.fill("ADDITEMS", maxDepth(items), items...)
		}
	case opBuild:
		var st item
		if st, err = s.pop("BUILD"); err != nil {
			return false, err
		}
		if t, terr := s.top("BUILD"); terr == nil && t.kind == kGlobal {
			return false, s.fail(fault.Unsafe, "BUILD on a global (it would set attributes of a class or function)")
		}
		err = s.fill("BUILD", st.depth, st)

	case opGet:
		var k uint64
		if k, err = s.memoKey("GET"); err == nil {
			err = s.get(k, "GET")
		}
	case opBinGet, opLongBinGet:
		lb, what := int64(1), "BINGET"
		if op == opLongBinGet {
			lb, what = 4, "LONG_BINGET"
		}
		var k uint64
		if k, err = s.readUint(lb, what); err == nil {
			err = s.get(k, what)
		}
	case opPut:
		var k uint64
		if k, err = s.memoKey("PUT"); err == nil {
			err = s.put(k, "PUT")
		}
	case opBinPut, opLongBinPut:
		lb, what := int64(1), "BINPUT"
		if op == opLongBinPut {
			lb, what = 4, "LONG_BINPUT"
		}
		var k uint64
		if k, err = s.readUint(lb, what); err == nil {
			err = s.put(k, what)
		}
	case opMemoize:
		s.memoize = true
		err = s.put(uint64(s.memo.n), "MEMOIZE")

	case opGlobal, opInst:
		what := "GLOBAL"
		if op == opInst {
			what = "INST"
		}
		var module, name string
		if module, err = s.name(what); err != nil {
			return false, err
		}
		if name, err = s.name(what); err != nil {
			return false, err
		}
		if err = s.record(module, name); err != nil {
			return false, err
		}
		s.renameBuiltin(module, name, s.pos()-s.op, "")
		if op == opInst {
			return false, s.fail(fault.Unsafe, "opcode INST (%s.%s) is outside the allowlist", module, name)
		}
		err = s.add(item{kind: kGlobal})
	case opStackGlobal:
		err = s.stackGlobal()
	case opReduce, opNewObj:
		what := "REDUCE"
		if op == opNewObj {
			what = "NEWOBJ"
		}
		var a, f item
		if a, err = s.pop(what); err != nil {
			return false, err
		}
		if f, err = s.pop(what); err != nil {
			return false, err
		}
		if f.kind != kGlobal {
			return false, s.notGlobal(what)
		}
		err = s.object(max(a.depth, f.depth))
	case opNewObjEx:
		var kw, a, c item
		if kw, err = s.pop("NEWOBJ_EX"); err != nil {
			return false, err
		}
		if a, err = s.pop("NEWOBJ_EX"); err != nil {
			return false, err
		}
		if c, err = s.pop("NEWOBJ_EX"); err != nil {
			return false, err
		}
		if c.kind != kGlobal {
			return false, s.notGlobal("NEWOBJ_EX")
		}
		err = s.object(max(kw.depth, a.depth, c.depth))
	case opBinPersID:
		var pid item
		if pid, err = s.pop("BINPERSID"); err == nil {
			err = s.add(item{kind: kOther, depth: pid.depth})
		}

	case opProto:
		var v byte
		if v, err = s.readByte("PROTO"); err != nil {
			return false, err
		}
		if v > 5 {
			return false, s.halt(fault.Malformed, "unsupported pickle protocol %d", v)
		}
		s.scan.Protocol, s.sawProto = int(v), true
	case opFrame:
		var u uint64
		if u, err = s.readUint(8, "FRAME"); err != nil {
			return false, err
		}
		if s.frameEnd >= 0 && s.frameEnd != s.pos() {
			return false, s.fail(fault.Malformed, "FRAME before the end of the current frame")
		}
		if u > math.MaxInt64 {
			return false, s.halt(fault.Malformed, "FRAME: length %d exceeds the %d bytes left in the input", u, s.avail-s.pos())
		}
		s.frameEnd = -1
		if err = s.room(int64(u), "FRAME"); err != nil {
			return false, err
		}
		s.frameEnd = s.pos() + int64(u)
		if s.vm {
			s.frames = append(s.frames, s.op+1)
		}

	case opPersID:
		err = s.fail(fault.Unsafe, "opcode PERSID (text persistent id) is outside the allowlist")
	case opObj:
		err = s.fail(fault.Unsafe, "opcode OBJ is outside the allowlist")
	case opExt1, opExt2, opExt4:
		err = s.fail(fault.Unsafe, "opcode EXT%d (copyreg extension registry) is outside the allowlist", [...]int{1, 2, 4}[op-opExt1])
	case opNextBuffer:
		err = s.fail(fault.Unsafe, "opcode NEXT_BUFFER (out-of-band data) is outside the allowlist")
	case opReadOnlyBuffer:
		err = s.fail(fault.Unsafe, "opcode READONLY_BUFFER (out-of-band data) is outside the allowlist")
	default:
		err = s.halt(fault.Malformed, "unknown %s", s.opName(op))
	}
	return false, err
}

// escapeDecode mirrors Python's codecs.escape_decode, which CPython applies to the quoted text
// of a STRING operand.
func escapeDecode(b []byte) (string, error) {
	if !strings.ContainsRune(string(b), '\\') {
		return string(b), nil
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i == len(b) {
			return "", errors.New(`trailing \ in string`)
		}
		switch c = b[i]; c {
		case '\n':
		case '\\', '\'', '"':
			out = append(out, c)
		case 'a':
			out = append(out, '\a')
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'v':
			out = append(out, '\v')
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := int(c - '0')
			for k := 0; k < 2 && i+1 < len(b) && b[i+1] >= '0' && b[i+1] <= '7'; k++ {
				i++
				v = v*8 + int(b[i]-'0')
			}
			out = append(out, byte(v))
		case 'x':
			if i+2 >= len(b) {
				return "", errors.New(`truncated \x escape`)
			}
			hi, ok1 := unhex(b[i+1])
			lo, ok2 := unhex(b[i+2])
			if !ok1 || !ok2 {
				return "", errors.New(`invalid \x escape`)
			}
			out = append(out, hi<<4|lo)
			i += 2
		default:
			out = append(out, '\\', c)
		}
	}
	return string(out), nil
}

// rawUnicodeEscapeDecode mirrors Python's raw-unicode-escape codec (UNICODE operands): only
// \uXXXX and \UXXXXXXXX are escapes, every other byte is a Latin-1 code point.
func rawUnicodeEscapeDecode(b []byte) (string, error) {
	ascii := true
	for _, c := range b {
		if c == '\\' || c >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return string(b), nil
	}
	var sb strings.Builder
	for i := 0; i < len(b); {
		c := b[i]
		if c != '\\' {
			sb.WriteRune(rune(c))
			i++
			continue
		}
		// A run of backslashes is literal, except that an odd run followed by u or U makes
		// its last backslash start an escape (CPython counts the run the same way).
		run := 0
		for i < len(b) && b[i] == '\\' {
			run++
			i++
		}
		if run%2 == 0 || i == len(b) || (b[i] != 'u' && b[i] != 'U') {
			sb.WriteString(strings.Repeat("\\", run))
			continue
		}
		sb.WriteString(strings.Repeat("\\", run-1))
		n := 4
		if b[i] == 'U' {
			n = 8
		}
		if i+1+n > len(b) {
			return "", errors.New(`truncated \u escape`)
		}
		var r rune
		for _, h := range b[i+1 : i+1+n] {
			v, ok := unhex(h)
			if !ok {
				return "", errors.New(`invalid \u escape`)
			}
			r = r<<4 | rune(v)
		}
		if r > utf8.MaxRune {
			return "", errors.New(`\U escape out of range`)
		}
		if r >= 0xd800 && r <= 0xdfff {
			return "", errSurrogate
		}
		sb.WriteRune(r)
		i += 1 + n
	}
	return sb.String(), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

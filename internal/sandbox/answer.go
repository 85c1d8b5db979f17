package sandbox

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/unpickler"
)

// The child's answer is a line of JSON, the response without its lists, followed by the lists
// (a manifest's tensors, globals, aliases and dropped leaves, then a report's tensors) as
// compact binary records the parent decodes as they arrive. A million tensors make a 187 MB
// JSON manifest, which encoding/json took about 20 s to write and read back; the records
// take a fraction of that, and neither side holds the answer whole. The lists' element types
// are the manifest's own, so the JSON the parent writes from them is unchanged.
//
// A record is a sequence of fields: unsigned and signed integers as varints, strings as their
// length then their bytes. A list is its length plus one (0 for a nil list, so that JSON's
// null and [] both survive), then its elements.

// errAnswerTooLong reports an answer that does not fit its byte limit.
var errAnswerTooLong = errors.New("answer too long")

// maxAnswerHeader bounds the answer's JSON header line, whatever the answer's limit: the parent
// decodes it whole, so a hostile child must not make it large. An honest header holds no list,
// and writeAnswer shortens its error texts (to maxErrorText each) when it would not fit.
const maxAnswerHeader = 1 << 20

// answerWriter writes the fields of records to a buffered writer, keeping the first error.
type answerWriter struct {
	w   *bufio.Writer
	n   int64
	err error
	buf [binary.MaxVarintLen64]byte
}

func (w *answerWriter) bytes(b []byte) {
	if w.err == nil {
		var n int
		n, w.err = w.w.Write(b)
		w.n += int64(n)
	}
}

func (w *answerWriter) uvarint(v uint64) { w.bytes(binary.AppendUvarint(w.buf[:0], v)) }
func (w *answerWriter) varint(v int64)   { w.bytes(binary.AppendVarint(w.buf[:0], v)) }

func (w *answerWriter) str(s string) {
	w.uvarint(uint64(len(s)))
	if w.err == nil {
		var n int
		n, w.err = w.w.WriteString(s)
		w.n += int64(n)
	}
}

// count writes the length of a list, or of a map, that is nil when isNil.
func (w *answerWriter) count(n int, isNil bool) {
	if isNil {
		w.uvarint(0)
		return
	}
	w.uvarint(uint64(n) + 1)
}

func (w *answerWriter) tensors(ts []convert.Tensor) {
	w.count(len(ts), ts == nil)
	for i := range ts {
		t := &ts[i]
		w.str(t.Name)
		w.str(t.DType)
		w.count(len(t.Shape), t.Shape == nil)
		for _, d := range t.Shape {
			w.varint(d)
		}
		w.varint(t.Bytes)
		if t.DataOffsets == nil {
			w.uvarint(0)
		} else {
			w.uvarint(1)
			w.varint(t.DataOffsets[0])
			w.varint(t.DataOffsets[1])
		}
		w.str(t.SHA256)
		w.str(t.Storage)
	}
}

// lists writes the lists of resp, which the JSON header of the answer leaves out.
func (w *answerWriter) lists(resp *response) {
	if m := resp.Manifest; m != nil {
		w.tensors(m.Tensors)
		w.count(len(m.Globals), m.Globals == nil)
		for _, g := range m.Globals {
			w.str(g.Entry)
			w.str(g.Module)
			w.str(g.Name)
			w.varint(g.Offset)
			w.varint(int64(g.Class))
		}
		w.count(len(m.Aliases), m.Aliases == nil)
		for alias, kept := range m.Aliases {
			w.str(alias)
			w.str(kept)
		}
		w.count(len(m.Dropped), m.Dropped == nil)
		for _, d := range m.Dropped {
			w.str(d.Path)
			w.str(d.Type)
		}
	}
	if resp.Report != nil {
		w.tensors(resp.Report.Tensors)
	}
}

// header returns the JSON line that opens resp's answer: resp without its lists.
func header(resp *response) ([]byte, error) {
	h := *resp
	if resp.Manifest != nil {
		m := *resp.Manifest
		m.Tensors, m.Globals, m.Aliases, m.Dropped = nil, nil, nil, nil
		h.Manifest = &m
	}
	if resp.Report != nil {
		rep := *resp.Report
		rep.Tensors = nil
		h.Report = &rep
	}
	b, err := json.Marshal(&h)
	return append(b, '\n'), err
}

// listBytes returns the length of resp's lists as the answer writes them.
func listBytes(resp *response) int64 {
	w := &answerWriter{w: bufio.NewWriterSize(io.Discard, 64<<10)}
	w.lists(resp)
	return w.n
}

// writeAnswer writes resp to out, fitting it in max bytes (no bound when max is 0) by what it
// can shorten: an answer too long loses its lists (tensors, globals, aliases, dropped; a
// report's tensors) and the tail of its error texts, but never its verdict or its error's
// kind and location: an unsafe file stays unsafe. When nothing else says the answer failed, a
// limit error does. The fields never shortened (paths, the probe) are small beside the
// limit's slack; an answer still too long is refused by the parent as a limit fault.
func writeAnswer(out io.Writer, resp *response, max int64) error {
	head, err := header(resp)
	if err != nil {
		return err
	}
	if total := int64(len(head)) + listBytes(resp); max > 0 && total > max || len(head) > maxAnswerHeader {
		shortenAnswer(resp, total, max)
		if head, err = header(resp); err != nil {
			return err
		}
	}
	w := &answerWriter{w: bufio.NewWriterSize(out, 64<<10)}
	w.bytes(head)
	w.lists(resp)
	if w.err != nil {
		return w.err
	}
	return w.w.Flush()
}

// maxErrorText bounds each text of an error in an answer that had to be shortened.
const maxErrorText = 64 << 10

// shortenAnswer empties the lists of resp, whose answer of total bytes exceeds max, and cuts
// its error texts; see writeAnswer.
func shortenAnswer(resp *response, total, max int64) {
	if w := resp.Manifest; w != nil {
		m := *w
		m.Tensors, m.Aliases, m.Dropped = []convert.Tensor{}, map[string]string{}, []convert.Dropped{}
		m.Globals = []convert.GlobalRef{}
		resp.Manifest = &m
	}
	if resp.Report != nil {
		rep := *resp.Report
		rep.Tensors = []convert.Tensor{}
		resp.Report = &rep
	}
	if resp.Error == nil { // a judged file's error travels beside its manifest
		resp.Error = encodeError(fault.New(fault.Limit, "", "the answer of %d bytes exceeds the %d-byte limit on a sandbox child's answer", total, max))
	}
	if e := resp.Error; e != nil {
		e.Text = shorten(e.Text)
		if e.Fault != nil {
			e.Fault.Msg, e.Fault.Cause = shorten(e.Fault.Msg), shorten(e.Fault.Cause)
		}
	}
	if m := resp.Manifest; m != nil && m.Error != nil {
		m.Error.Detail = shorten(m.Error.Detail)
	}
}

// shorten cuts s to maxErrorText bytes, on a rune boundary, marking the cut.
func shorten(s string) string {
	if len(s) <= maxErrorText {
		return s
	}
	cut := maxErrorText
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "... (shortened)"
}

// answerReader decodes an answer from a child, which the parent does not trust: every length
// is checked against the bytes the answer may still hold, and lists and strings grow as their
// bytes arrive rather than being allocated at the length claimed.
type answerReader struct {
	r    *bufio.Reader
	max  int64
	left int64 // bytes the answer may still hold
	err  error
}

func (r *answerReader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *answerReader) ReadByte() (byte, error) {
	b, err := r.r.ReadByte()
	switch {
	case err != nil:
		return 0, err
	case r.left <= 0:
		return 0, errAnswerTooLong
	}
	r.left--
	return b, nil
}

func (r *answerReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, err := binary.ReadUvarint(r)
	r.fail(unexpected(err))
	return v
}

func (r *answerReader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, err := binary.ReadVarint(r)
	r.fail(unexpected(err))
	return v
}

// unexpected turns the end of the answer inside a record into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (r *answerReader) str() string {
	n := r.uvarint()
	if r.err != nil || n == 0 {
		return ""
	}
	if n > uint64(r.left) {
		r.fail(errAnswerTooLong)
		return ""
	}
	r.left -= int64(n)
	if b, err := r.r.Peek(int(n)); err == nil {
		s := string(b)
		_, _ = r.r.Discard(len(b))
		return s
	}
	// Grown as the bytes arrive, so that a length claimed and not sent costs nothing.
	var sb strings.Builder
	_, err := io.CopyN(&sb, r.r, int64(n))
	r.fail(unexpected(err))
	return sb.String()
}

// count reads the length of a list written by answerWriter.count; nil is true for a nil list.
// Each element takes at least minBytes, which bounds the length by what is left of the answer.
func (r *answerReader) count(minBytes int64) (n int, isNil bool) {
	v := r.uvarint()
	if r.err != nil || v == 0 {
		return 0, true
	}
	if v-1 > uint64(r.left/minBytes) {
		r.fail(errAnswerTooLong)
		return 0, true
	}
	return int(v - 1), false
}

// Each element of a list takes at least one byte per field.
const (
	minTensorBytes = 7
	minGlobalBytes = 5
	minPairBytes   = 2
)

// listChunk bounds the elements a list is allocated for before they arrive: an element in
// memory takes several times its smallest encoding, so a list grows as its elements are
// decoded rather than being allocated at the length the answer claims.
const listChunk = 1024

// readList reads a list of elements of at least minBytes each with read; nil for a nil list,
// and nil once the answer is found bad.
func readList[T any](r *answerReader, minBytes int64, read func() T) []T {
	n, isNil := r.count(minBytes)
	if isNil {
		return nil
	}
	list := make([]T, 0, min(n, listChunk))
	for range n {
		v := read()
		if r.err != nil {
			return nil
		}
		list = append(list, v)
	}
	return list
}

func (r *answerReader) tensors() []convert.Tensor {
	return readList(r, minTensorBytes, func() convert.Tensor {
		var t convert.Tensor
		t.Name = r.str()
		t.DType = r.str()
		t.Shape = readList(r, 1, r.varint)
		t.Bytes = r.varint()
		switch r.uvarint() {
		case 0:
		case 1:
			t.DataOffsets = &[2]int64{r.varint(), r.varint()}
		default:
			r.fail(errors.New("bad data offsets marker"))
		}
		t.SHA256 = r.str()
		t.Storage = r.str()
		return t
	})
}

// lists reads the lists of resp, decoded from the answer's header, into it.
func (r *answerReader) lists(resp *response) {
	if m := resp.Manifest; m != nil {
		m.Tensors = r.tensors()
		m.Globals = readList(r, minGlobalBytes, func() convert.GlobalRef {
			var g convert.GlobalRef
			g.Entry, g.Module, g.Name = r.str(), r.str(), r.str()
			g.Offset, g.Class = r.varint(), unpickler.Class(r.varint())
			return g
		})
		if n, isNil := r.count(minPairBytes); !isNil {
			m.Aliases = make(map[string]string, min(n, listChunk))
			for range n {
				alias := r.str()
				m.Aliases[alias] = r.str()
				if r.err != nil {
					break
				}
			}
		}
		m.Dropped = readList(r, minPairBytes, func() convert.Dropped {
			return convert.Dropped{Path: r.str(), Type: r.str()}
		})
	}
	if resp.Report != nil {
		resp.Report.Tensors = r.tensors()
	}
}

// readAnswer decodes a child's answer from in, refusing one of more than max bytes with a
// limit fault: whatever the child does, the parent reads no more than that of it. Any other
// error means the answer is missing or malformed (a child that crashed mid-answer, say).
func readAnswer(in io.Reader, max int64) (*response, error) {
	r := &answerReader{r: bufio.NewReaderSize(in, 64<<10), max: max, left: max}
	head, err := r.line()
	if err != nil {
		return nil, r.classify(err)
	}
	var resp response
	if err := json.Unmarshal(head, &resp); err != nil {
		return nil, fmt.Errorf("decode answer: %w", err)
	}
	if listsInHeader(&resp) {
		return nil, errors.New("decode answer: its header holds lists, which only the records may")
	}
	r.lists(&resp)
	if r.err == nil {
		switch _, err := r.ReadByte(); {
		case errors.Is(err, errAnswerTooLong):
			r.fail(err)
		case err != io.EOF:
			r.fail(errors.New("bytes after the answer"))
		}
	}
	if r.err != nil {
		return nil, r.classify(r.err)
	}
	return &resp, nil
}

// listsInHeader reports whether the header decoded into resp carried any of the lists that
// header leaves out.
func listsInHeader(resp *response) bool {
	if m := resp.Manifest; m != nil && (m.Tensors != nil || m.Globals != nil || m.Aliases != nil || m.Dropped != nil) {
		return true
	}
	return resp.Report != nil && resp.Report.Tensors != nil
}

// line reads the answer's header line, without its newline.
func (r *answerReader) line() ([]byte, error) {
	var head []byte
	for {
		chunk, err := r.r.ReadSlice('\n')
		if int64(len(chunk)) > r.left {
			return nil, errAnswerTooLong
		}
		if len(head)+len(chunk) > maxAnswerHeader+1 { // its newline included
			return nil, errAnswerTooLong // more than the parent reads of any honest header
		}
		r.left -= int64(len(chunk))
		head = append(head, chunk...)
		switch {
		case err == nil:
			return bytes.TrimSuffix(head, []byte("\n")), nil
		case !errors.Is(err, bufio.ErrBufferFull):
			return nil, unexpected(err)
		}
	}
}

// classify makes the limit fault of an answer that is too long; other errors stay as they are.
func (r *answerReader) classify(err error) error {
	if errors.Is(err, errAnswerTooLong) {
		return fault.New(fault.Limit, "", "sandbox child's answer exceeds %d bytes", r.max)
	}
	return fmt.Errorf("decode answer: %w", err)
}

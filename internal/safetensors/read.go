package safetensors

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
)

// File is a strictly validated safetensors header.
type File struct {
	// Metadata is the "__metadata__" map, nil when the key is absent or null.
	Metadata map[string]string
	// Tensors are sorted by Begin (then End, then name, so zero-size tensors have a stable
	// order); Begin/End are relative to DataStart.
	Tensors []Tensor
	// DataStart is the file offset of the data section, 8+N.
	DataStart int64
	// Size is the size of the file, as passed to Read.
	Size int64

	index map[string]int // name → position in Tensors; nil for a File built by hand
}

// Lookup returns the tensor with the given name.
func (f *File) Lookup(name string) (Tensor, bool) {
	if f.index != nil {
		i, ok := f.index[name]
		if !ok {
			return Tensor{}, false
		}
		return f.Tensors[i], true
	}
	for _, t := range f.Tensors {
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}

// referenceOnlyDTypes are dtypes the reference reader accepts but this converter does not
// model; a file using them is well formed, so it is refused as fault.Unsupported.
var referenceOnlyDTypes = []string{"F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}

// Read validates the header of the size-byte safetensors file behind r and returns it. It
// reads exactly the first 8+N bytes through r and nothing else, so the memory it uses is
// bounded by maxHeader (a maxHeader of zero or less, or above 100,000,000, means 100,000,000,
// the reference reader's limit).
//
// It runs the reference reader's checks in its order (safetensors tensor.rs read_metadata and
// validate), the first failure winning:
//  1. the file holds at least 8 bytes;
//  2. N fits and is at most the limit (fault.Limit);
//  3. 8+N fits in the file;
//  4. the header is valid UTF-8;
//  5. the header is a JSON object of tensor entries {"dtype","shape","data_offsets"} plus an
//     optional "__metadata__" object of strings (or null), with only JSON whitespace around it;
//  6. entries are ordered by data_offsets, whatever their order in the text;
//  7. offsets are contiguous from 0 without gaps or overlaps, and each tensor's byte length
//     matches its shape and dtype (an overflowing shape is fault.Limit);
//  8. the tensors cover the data section exactly: no trailing bytes, no truncation.
//
// Step 5 is stricter than the reference, which keeps the last of duplicate keys and ignores
// unknown fields: Read rejects duplicate keys at any level (including inside "__metadata__")
// and unknown fields in tensor entries. It also refuses what the reference refuses but
// encoding/json would let through: lone UTF-16 surrogate escapes, non-string metadata values,
// non-integer numbers. Finally it rejects a dimension that does not fit an int64 (possible
// only next to a zero dimension) with fault.Limit.
//
// Errors on bad input are *fault.Error values that name the tensor and, where one applies, the
// file offset of the offending JSON. An error from r is returned wrapped and unclassified.
func Read(r io.ReaderAt, size int64, maxHeader int64) (*File, error) {
	limit := effectiveLimit(maxHeader)

	// 1. HeaderTooSmall.
	if size < 8 {
		return nil, malformedAt(0, "the file is %d bytes, too short for the 8-byte header length", size)
	}
	var nb [8]byte
	if err := readFull(r, nb[:], 0); err != nil {
		return nil, err
	}
	n64 := binary.LittleEndian.Uint64(nb[:])

	// 2. HeaderTooLarge.
	if n64 > uint64(limit) {
		return nil, fault.At(fault.Limit, faultEntry, 0,
			"the header length %d is over the limit of %d bytes", n64, limit)
	}
	n := int64(n64)

	// 3. InvalidHeaderLength.
	if n > size-8 {
		return nil, malformedAt(0, "the header length %d runs past the end of the %d-byte file", n, size)
	}
	hdr := make([]byte, n)
	if err := readFull(r, hdr, 8); err != nil {
		return nil, err
	}

	// 4. InvalidHeader(Utf8Error).
	if !utf8.Valid(hdr) {
		return nil, malformedAt(8+int64(firstInvalidUTF8(hdr)), "the header is not valid UTF-8")
	}

	// 5. InvalidHeaderDeserialization.
	p := parser{hdr: hdr, dec: newTokenizer(hdr)}
	meta, raws, err := p.object()
	if err != nil {
		return nil, err
	}

	// 6. Sort by data_offsets: the order in the JSON text does not matter.
	slices.SortFunc(raws, func(a, b rawTensor) int {
		if c := cmp.Compare(a.begin, b.begin); c != 0 {
			return c
		}
		if c := cmp.Compare(a.end, b.end); c != 0 {
			return c
		}
		return cmp.Compare(a.name, b.name)
	})

	// 7. validate: InvalidOffset, ValidationOverflow, TensorInvalidInfo.
	var start uint64
	for _, t := range raws {
		name := nameForError(t.name)
		if t.begin != start || t.end < t.begin {
			why := "ends before it begins"
			switch {
			case t.begin > start:
				why = fmt.Sprintf("leaves a gap after offset %d", start)
			case t.begin < start:
				why = fmt.Sprintf("overlaps the data before offset %d", start)
			}
			return nil, malformedAt(t.off, "tensor %s: data_offsets [%d,%d] %s", name, t.begin, t.end, why)
		}
		start = t.end
		nbytes, ok := tensorBytes(t.dtype, t.shape)
		if !ok {
			return nil, fault.At(fault.Limit, faultEntry, t.off,
				"tensor %s: the byte size of %s %v overflows", name, t.dtype, t.shape)
		}
		if t.end-t.begin != nbytes {
			return nil, malformedAt(t.off, "tensor %s: data_offsets [%d,%d] hold %d bytes, but %s %v needs %d",
				name, t.begin, t.end, t.end-t.begin, t.dtype, t.shape, nbytes)
		}
	}

	// 8. MetadataIncompleteBuffer.
	dataLen := uint64(size - 8 - n)
	if start != dataLen {
		return nil, malformedAt(8+n, "the tensors cover %d bytes of data but the file holds %d after the header",
			start, dataLen)
	}

	f := &File{
		Metadata:  meta,
		Tensors:   make([]Tensor, len(raws)),
		DataStart: 8 + n,
		Size:      size,
		index:     make(map[string]int, len(raws)),
	}
	ndims := 0
	for _, t := range raws {
		ndims += len(t.shape)
	}
	dims := make([]int64, 0, ndims)
	for i, t := range raws {
		s := len(dims)
		for _, d := range t.shape {
			if d > maxInt64 {
				return nil, fault.At(fault.Limit, faultEntry, t.off,
					"tensor %s: dimension %d does not fit an int64", nameForError(t.name), d)
			}
			dims = append(dims, int64(d))
		}
		// After step 8 both offsets are at most size, so they fit an int64.
		f.Tensors[i] = Tensor{
			Name:  t.name,
			DType: t.dtype,
			Shape: dims[s:len(dims):len(dims)],
			Begin: int64(t.begin),
			End:   int64(t.end),
		}
		f.index[t.name] = i
	}
	return f, nil
}

// readFull reads len(p) bytes at off, accepting io.EOF together with a full read as
// io.ReaderAt allows.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	m, err := r.ReadAt(p, off)
	if m == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("safetensors: reading %d header bytes at offset %d: %w", len(p), off, err)
}

func firstInvalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return len(b)
}

// rawTensor is a tensor entry as parsed, before validation; numbers keep the reference's
// unsigned 64-bit range so that every check runs on the same values as the reference's.
type rawTensor struct {
	name       string
	off        int64 // file offset of the entry's key
	dtype      dtype.DType
	shape      []uint64
	begin, end uint64
}

// parser walks the header one token at a time, as encoding/json's Decoder yields them (see
// newTokenizer). Unlike decoding into a map or struct, this sees every key, so duplicates can
// be refused, and it never descends more than three levels: anything unexpected is refused at
// its first token. Error messages are only formatted on failure, so a large valid header costs
// no string building.
type parser struct {
	hdr   []byte
	dec   tokenizer
	prev  int64      // header offset just after the previous token
	start int64      // header offset where the last token began
	last  json.Token // the last token
}

// fields are the tensor entry fields, in the order the reference writes them.
var fields = [3]string{"dtype", "shape", "data_offsets"}

// next returns the next token. p.start is left at the token's first byte.
func (p *parser) next() (json.Token, error) {
	tok, err := p.dec.Token()
	if err != nil {
		var se *json.SyntaxError
		switch {
		case errors.As(err, &se):
			return nil, malformedAt(8+se.Offset, "the header is not valid JSON: %v", se)
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return nil, malformedAt(8+int64(len(p.hdr)), "the header JSON ends early")
		default:
			return nil, malformedAt(8+p.dec.InputOffset(), "the header is not valid JSON: %v", err)
		}
	}
	cur := p.dec.InputOffset()
	s := p.prev
	for s < cur {
		switch p.hdr[s] {
		case ' ', '\t', '\n', '\r', ',', ':':
			s++
			continue
		}
		break
	}
	p.start, p.prev, p.last = s, cur, tok
	return tok, nil
}

// at returns the file offset of the last token.
func (p *parser) at() int64 { return 8 + p.start }

// str returns the next token; ok is false when it is not a string. It refuses lone surrogate
// escapes, which encoding/json silently turns into U+FFFD and the reference rejects.
func (p *parser) str() (s string, ok bool, err error) {
	tok, err := p.next()
	if err != nil {
		return "", false, err
	}
	s, ok = tok.(string)
	if !ok {
		return "", false, nil
	}
	raw := p.hdr[p.start:p.prev]
	if bytes.IndexByte(raw, '\\') >= 0 {
		if i, bad := loneSurrogate(raw); bad {
			return "", false, malformedAt(p.at()+int64(i), "a string holds an unpaired UTF-16 surrogate escape")
		}
	}
	return s, true, nil
}

// key returns the next object key; encoding/json guarantees it is a string.
func (p *parser) key() (string, error) {
	s, ok, err := p.str()
	if err == nil && !ok {
		err = malformedAt(p.at(), "an object key is %s", describe(p.last))
	}
	return s, err
}

// delim consumes the next token and reports whether it is the delimiter d.
func (p *parser) delim(d json.Delim) (bool, error) {
	tok, err := p.next()
	if err != nil {
		return false, err
	}
	return tok == d, nil
}

// object parses the whole header: one object and nothing but JSON whitespace around it.
func (p *parser) object() (map[string]string, []rawTensor, error) {
	if ok, err := p.delim('{'); err != nil || !ok {
		if err == nil {
			err = malformedAt(p.at(), "the header is %s, not an object", describe(p.last))
		}
		return nil, nil, err
	}
	var meta map[string]string
	var tensors []rawTensor
	// Sized for the most tensors a header of this length is likely to hold (an entry takes at
	// least 50 bytes, usually 80 or more), so that a million names are not hashed again at each
	// of the map's twenty doublings; a header of other things wastes about half its length.
	seen := make(map[string]int64, len(p.hdr)/64)
	for p.dec.More() {
		key, err := p.key()
		if err != nil {
			return nil, nil, err
		}
		off := p.at()
		if first, dup := seen[key]; dup {
			return nil, nil, malformedAt(off, "key %s appears twice (first at offset %d)", nameForError(key), first)
		}
		seen[key] = off
		if key == metadataKey {
			if meta, err = p.metadata(); err != nil {
				return nil, nil, err
			}
			continue
		}
		t, err := p.tensor(key, off)
		if err != nil {
			return nil, nil, err
		}
		tensors = append(tensors, t)
	}
	if err := p.close('}', "the header"); err != nil {
		return nil, nil, err
	}
	for i := p.dec.InputOffset(); i < int64(len(p.hdr)); i++ {
		switch p.hdr[i] {
		case ' ', '\t', '\n', '\r':
		default:
			return nil, nil, malformedAt(8+i, "the header has %s after its closing brace", strconv.QuoteRune(rune(p.hdr[i])))
		}
	}
	return meta, tensors, nil
}

// close consumes the closing delimiter d once More has reported the end of a container.
func (p *parser) close(d json.Delim, what string) error {
	ok, err := p.delim(d)
	if err == nil && !ok {
		err = malformedAt(p.at(), "%s does not end with %s", what, d)
	}
	return err
}

// metadata parses the value of "__metadata__": null, or an object of string values with
// distinct keys.
func (p *parser) metadata() (map[string]string, error) {
	tok, err := p.next()
	if err != nil {
		return nil, err
	}
	if tok == nil {
		return nil, nil // null is accepted and means absent, as in the reference
	}
	if tok != json.Delim('{') {
		return nil, malformedAt(p.at(), "__metadata__ is %s, not an object of strings", describe(tok))
	}
	m := make(map[string]string)
	offs := make(map[string]int64)
	for p.dec.More() {
		k, err := p.key()
		if err != nil {
			return nil, err
		}
		off := p.at()
		if first, dup := offs[k]; dup {
			return nil, malformedAt(off, "metadata key %s appears twice (first at offset %d)", nameForError(k), first)
		}
		offs[k] = off
		v, ok, err := p.str()
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, malformedAt(p.at(), "the metadata value for %s is %s, not a string", nameForError(k), describe(p.last))
		}
		m[k] = v
	}
	return m, p.close('}', "__metadata__")
}

// tensor parses one tensor entry, which must have exactly the fields dtype, shape and
// data_offsets, each once.
func (p *parser) tensor(name string, off int64) (rawTensor, error) {
	t := rawTensor{name: name, off: off}
	if ok, err := p.delim('{'); err != nil || !ok {
		if err == nil {
			err = malformedAt(p.at(), "tensor %s is %s, not an object", nameForError(name), describe(p.last))
		}
		return t, err
	}
	var have [len(fields)]bool
	for p.dec.More() {
		field, err := p.key()
		if err != nil {
			return t, err
		}
		idx := slices.Index(fields[:], field)
		if idx < 0 {
			return t, malformedAt(p.at(), "tensor %s: unknown field %s", nameForError(name), nameForError(field))
		}
		if have[idx] {
			return t, malformedAt(p.at(), "tensor %s: field %s appears twice", nameForError(name), field)
		}
		have[idx] = true
		switch idx {
		case 0:
			err = p.dtype(&t)
		case 1:
			err = p.shape(&t)
		case 2:
			err = p.offsets(&t)
		}
		if err != nil {
			return t, err
		}
	}
	if err := p.close('}', "tensor "+nameForError(name)); err != nil {
		return t, err
	}
	for i, f := range fields {
		if !have[i] {
			return t, malformedAt(off, "tensor %s: missing field %s", nameForError(name), f)
		}
	}
	return t, nil
}

func (p *parser) dtype(t *rawTensor) error {
	s, ok, err := p.str()
	if err != nil {
		return err
	}
	if !ok {
		return malformedAt(p.at(), "tensor %s: dtype is %s, not a string", nameForError(t.name), describe(p.last))
	}
	d, ok := dtype.Parse(s)
	if !ok {
		if slices.Contains(referenceOnlyDTypes, s) {
			return fault.At(fault.Unsupported, faultEntry, p.at(),
				"tensor %s: dtype %s is not supported by the converter", nameForError(t.name), s)
		}
		return malformedAt(p.at(), "tensor %s: unknown dtype %s", nameForError(t.name), nameForError(s))
	}
	t.dtype = d
	return nil
}

func (p *parser) shape(t *rawTensor) error {
	if ok, err := p.delim('['); err != nil || !ok {
		if err == nil {
			err = malformedAt(p.at(), "tensor %s: shape is %s, not an array", nameForError(t.name), describe(p.last))
		}
		return err
	}
	t.shape = []uint64{}
	for p.dec.More() {
		v, err := p.uint(t, "shape")
		if err != nil {
			return err
		}
		t.shape = append(t.shape, v)
	}
	return p.close(']', "shape")
}

func (p *parser) offsets(t *rawTensor) error {
	if ok, err := p.delim('['); err != nil || !ok {
		if err == nil {
			err = malformedAt(p.at(), "tensor %s: data_offsets is %s, not an array", nameForError(t.name), describe(p.last))
		}
		return err
	}
	var offs [2]uint64
	for i := range offs {
		if !p.dec.More() {
			return malformedAt(8+p.dec.InputOffset(), "tensor %s: data_offsets has %d elements, want 2", nameForError(t.name), i)
		}
		v, err := p.uint(t, "data_offsets")
		if err != nil {
			return err
		}
		offs[i] = v
	}
	if p.dec.More() {
		return malformedAt(8+p.dec.InputOffset(), "tensor %s: data_offsets has more than 2 elements", nameForError(t.name))
	}
	t.begin, t.end = offs[0], offs[1]
	return p.close(']', "data_offsets")
}

// uint returns the next token, which must be a JSON integer in [0, 2^64).
func (p *parser) uint(t *rawTensor, field string) (uint64, error) {
	tok, err := p.next()
	if err != nil {
		return 0, err
	}
	num, ok := tok.(json.Number)
	if !ok {
		return 0, malformedAt(p.at(), "tensor %s: %s holds %s, not an integer", nameForError(t.name), field, describe(tok))
	}
	v, err := strconv.ParseUint(string(num), 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, malformedAt(p.at(), "tensor %s: %s holds %s, which does not fit 64 bits", nameForError(t.name), field, num)
		}
		return 0, malformedAt(p.at(), "tensor %s: %s holds %s, not a non-negative integer", nameForError(t.name), field, num)
	}
	return v, nil
}

func describe(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		switch v {
		case '{':
			return "an object"
		case '[':
			return "an array"
		}
		return "a " + v.String()
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", tok)
}

// loneSurrogate reports the position of the first \u escape in the raw JSON string literal s
// that is an unpaired UTF-16 surrogate. The literal is known to be valid JSON.
func loneSurrogate(s []byte) (int, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			continue
		}
		i++ // the escaped character; skipping it keeps "\\u" from looking like an escape
		if i >= len(s) || s[i] != 'u' || i+4 >= len(s) {
			continue
		}
		at := i - 1
		r := hex4(s[i+1 : i+5])
		i += 4
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return at, true
		case r >= 0xD800 && r <= 0xDBFF:
			if i+6 < len(s) && s[i+1] == '\\' && s[i+2] == 'u' {
				if r2 := hex4(s[i+3 : i+7]); r2 >= 0xDC00 && r2 <= 0xDFFF {
					i += 6
					continue
				}
			}
			return at, true
		}
	}
	return 0, false
}

func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		}
	}
	return r
}

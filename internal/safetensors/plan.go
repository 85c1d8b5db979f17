package safetensors

import (
	"cmp"
	"encoding/binary"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/ptsafe/converter/internal/fault"
)

// Layout is the planned file.
type Layout struct {
	// Header is the complete prefix to write first: the 8-byte little-endian header length N,
	// the compact JSON header, and 0x20 padding up to a multiple of 8.
	Header []byte
	// Tensors are in file order, with offsets relative to the data section, which starts at
	// len(Header).
	Tensors []Tensor
	// Entries gives, for each of Tensors, the index of its entry in what Plan was given, so
	// that a caller finds its own record of a tensor without an index by name.
	Entries []int
	// Size is the size of the whole file: len(Header) plus the bytes of every tensor.
	Size int64
}

// Plan lays out entries exactly as the reference writer (safetensors serialize / save_file)
// would, so that writing Header and then each tensor's bytes in Tensors order produces a file
// byte-identical to the reference's output:
//
//   - "__metadata__" comes first when meta is non-nil (an empty non-nil map is written as {},
//     a nil map omits the key, as Python's metadata=None does). Its keys are sorted bytewise.
//     The reference iterates a randomly seeded HashMap there, so its order is not
//     deterministic with two or more keys; we chose sorted so our output is reproducible.
//   - Tensors are ordered by dtype rank descending (see dtype.DType.Rank), then by name
//     bytewise, with contiguous offsets from 0. Because the header is padded to a multiple of
//     8 and larger element sizes come first, every tensor starts at a file offset aligned to
//     its element size.
//   - Each entry has the fields dtype, shape, data_offsets in that order; strings are escaped
//     as serde_json does (only '"', '\\' and control characters; '<', '>', '&', U+2028 and
//     U+2029 are written raw).
//
// Plan refuses, with fault.Malformed naming the tensor: a duplicate name, the name
// "__metadata__", invalid UTF-8 in a name or in metadata, an Invalid dtype, and a negative
// dimension. It refuses with fault.Limit a shape whose element count or size in bits overflows
// (the checks the reference reader makes), a total size that overflows int64, and a padded
// header longer than maxHeader bytes. A maxHeader of zero or less, or above 100,000,000 (the
// reference reader's limit), means 100,000,000.
//
// Plan allocates only the header and the returned slices: nothing proportional to tensor data.
// Shapes are copied, so the caller may reuse entries afterwards.
func Plan(meta map[string]string, entries []Entry, maxHeader int64) (*Layout, error) {
	limit := effectiveLimit(maxHeader)

	var keys []string
	if meta != nil {
		keys = make([]string, 0, len(meta))
		for k := range meta {
			keys = append(keys, k)
		}
		slices.Sort(keys) // also makes the first error reported deterministic
		for _, k := range keys {
			if !utf8.ValidString(k) {
				return nil, malformed("metadata key %s is not valid UTF-8", nameForError(k))
			}
			if !utf8.ValidString(meta[k]) {
				return nil, malformed("metadata value for key %s is not valid UTF-8", nameForError(k))
			}
		}
	}

	sizes := make([]int64, len(entries))
	names := make(map[string]struct{}, len(entries))
	ndims := 0
	for i, e := range entries {
		switch {
		case e.Name == metadataKey:
			return nil, malformed("tensor %s: the name is reserved for the metadata map", nameForError(e.Name))
		case !utf8.ValidString(e.Name):
			return nil, malformed("tensor %s: the name is not valid UTF-8", nameForError(e.Name))
		case e.DType.Size() == 0 || e.DType.Rank() < 0:
			return nil, malformed("tensor %s: invalid dtype %d", nameForError(e.Name), uint8(e.DType))
		}
		if _, dup := names[e.Name]; dup {
			return nil, malformed("tensor %s: the name appears twice", nameForError(e.Name))
		}
		names[e.Name] = struct{}{}
		for j, d := range e.Shape {
			if d < 0 {
				return nil, malformed("tensor %s: dimension %d is negative (%d)", nameForError(e.Name), j, d)
			}
		}
		n, ok := tensorBytes(e.DType, e.Shape)
		if !ok || n > maxInt64 {
			return nil, fault.New(fault.Limit, faultEntry,
				"tensor %s: the byte size of %s %v overflows", nameForError(e.Name), e.DType, e.Shape)
		}
		sizes[i] = int64(n)
		ndims += len(e.Shape)
	}

	order := make([]int, len(entries))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := cmp.Compare(entries[b].DType.Rank(), entries[a].DType.Rank()); c != 0 {
			return c
		}
		return cmp.Compare(entries[a].Name, entries[b].Name)
	})

	tensors := make([]Tensor, len(entries))
	dims := make([]int64, 0, ndims)
	var offset int64
	for k, i := range order {
		e := entries[i]
		if sizes[i] > maxInt64-offset {
			return nil, fault.New(fault.Limit, faultEntry,
				"tensor %s: the data section would exceed %d bytes", nameForError(e.Name), int64(maxInt64))
		}
		start := len(dims)
		dims = append(dims, e.Shape...)
		tensors[k] = Tensor{
			Name:  e.Name,
			DType: e.DType,
			Shape: dims[start:len(dims):len(dims)],
			Begin: offset,
			End:   offset + sizes[i],
		}
		offset += sizes[i]
	}

	// Measure first so that an oversized header is refused before it is allocated.
	w := headerWriter{count: true}
	w.json(meta, keys, tensors)
	n := (w.n + 7) &^ 7
	if n > limit {
		return nil, fault.New(fault.Limit, faultEntry,
			"the header would be %d bytes, over the limit of %d", n, limit)
	}
	if offset > maxInt64-8-n {
		return nil, fault.New(fault.Limit, faultEntry, "the file would exceed %d bytes", int64(maxInt64))
	}
	w = headerWriter{buf: make([]byte, 8, 8+n)}
	binary.LittleEndian.PutUint64(w.buf, uint64(n))
	w.json(meta, keys, tensors)
	for int64(len(w.buf)) < 8+n {
		w.buf = append(w.buf, ' ')
	}
	return &Layout{Header: w.buf, Tensors: tensors, Entries: order, Size: 8 + n + offset}, nil
}

const maxInt64 = 1<<63 - 1

// headerWriter either measures (count) or appends (buf) the header JSON, so that the two passes
// cannot disagree.
type headerWriter struct {
	count bool
	n     int64
	buf   []byte
}

func (w *headerWriter) json(meta map[string]string, keys []string, tensors []Tensor) {
	w.raw("{")
	sep := false
	if meta != nil {
		w.raw(`"__metadata__":{`)
		for i, k := range keys {
			if i > 0 {
				w.raw(",")
			}
			w.str(k)
			w.raw(":")
			w.str(meta[k])
		}
		w.raw("}")
		sep = true
	}
	for _, t := range tensors {
		if sep {
			w.raw(",")
		}
		sep = true
		w.str(t.Name)
		w.raw(`:{"dtype":"`)
		w.raw(t.DType.String())
		w.raw(`","shape":[`)
		for i, d := range t.Shape {
			if i > 0 {
				w.raw(",")
			}
			w.int(d)
		}
		w.raw(`],"data_offsets":[`)
		w.int(t.Begin)
		w.raw(",")
		w.int(t.End)
		w.raw("]}")
	}
	w.raw("}")
}

func (w *headerWriter) raw(s string) {
	if w.count {
		w.n += int64(len(s))
		return
	}
	w.buf = append(w.buf, s...)
}

func (w *headerWriter) int(v int64) {
	if w.count {
		n := int64(1)
		for ; v >= 10; v /= 10 {
			n++
		}
		w.n += n
		return
	}
	w.buf = strconv.AppendInt(w.buf, v, 10)
}

// str writes s as a JSON string escaped exactly as serde_json does: '"' and '\\' with a
// backslash, \b \f \n \r \t by their short forms, other bytes below 0x20 as \u00xx with
// lower-case hex, everything else (including '<', '>', '&', DEL, U+2028 and U+2029) raw. It is
// hand-written because encoding/json escapes <>& and U+2028/9 and rewrites invalid UTF-8.
func (w *headerWriter) str(s string) {
	if w.count {
		n := int64(2)
		for i := 0; i < len(s); i++ {
			n += int64(escapedLen(s[i]))
		}
		w.n += n
		return
	}
	const hex = "0123456789abcdef"
	w.buf = append(w.buf, '"')
	last := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if escapedLen(c) == 1 {
			continue
		}
		w.buf = append(w.buf, s[last:i]...)
		last = i + 1
		switch c {
		case '"':
			w.buf = append(w.buf, '\\', '"')
		case '\\':
			w.buf = append(w.buf, '\\', '\\')
		case '\b':
			w.buf = append(w.buf, '\\', 'b')
		case '\f':
			w.buf = append(w.buf, '\\', 'f')
		case '\n':
			w.buf = append(w.buf, '\\', 'n')
		case '\r':
			w.buf = append(w.buf, '\\', 'r')
		case '\t':
			w.buf = append(w.buf, '\\', 't')
		default:
			w.buf = append(w.buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
	}
	w.buf = append(w.buf, s[last:]...)
	w.buf = append(w.buf, '"')
}

// escapedLen is the number of bytes serde_json writes for byte c inside a string.
func escapedLen(c byte) int {
	switch {
	case c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t':
		return 2
	case c < 0x20:
		return 6
	default:
		return 1
	}
}

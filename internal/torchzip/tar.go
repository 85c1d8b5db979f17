package torchzip

import (
	"archive/tar"
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"strings"

	"github.com/ptsafe/converter/internal/fault"
)

// torch.load tries formats in a fixed order (torch/serialization.py, 1.13): a file starting with
// a zip local header is a zip; otherwise, if Python's tarfile opens it, it is the pre-0.1.10 tar
// format (legacy_load); only when tarfile refuses does it read the legacy pickles. tarfile
// accepts any first block whose checksum field matches, ustar magic or not, so a legacy
// checkpoint can also be a tar, and torch then runs the tar's pickles, not the legacy ones.

const tarBlock = 512

// isPythonTar reports whether Python's tarfile would take the file's first block as a header
// (TarInfo.frombuf): a full block, not all zeros, whose checksum field, parsed as tarfile's nti
// parses it, equals the unsigned or the signed byte sum of the block with the field as spaces.
// It accepts at least everything tarfile accepts, so no tar that torch would open is read as
// anything else.
func isPythonTar(block []byte) bool {
	if len(block) < tarBlock {
		return false
	}
	block = block[:tarBlock]
	zero := true
	var unsigned, signed int64
	for i, b := range block {
		if 148 <= i && i < 156 {
			b = ' '
		}
		zero = zero && block[i] == 0
		unsigned += int64(b)
		signed += int64(int8(b))
	}
	if zero {
		return false
	}
	sum, ok := pythonNTI(block[148:156])
	return ok && (sum == unsigned || sum == signed)
}

// pythonNTI parses a tar number field as tarfile's nti does: base-256 when the first byte is
// 0x80 or 0xff, else the ASCII text before the first NUL, stripped of whitespace, as
// int(text, 8) reads it (a sign, an optional 0o prefix, underscores between digits; empty is
// 0). Underscores are accepted anywhere: being looser than Python only refuses more files.
func pythonNTI(field []byte) (int64, bool) {
	if field[0] == 0x80 || field[0] == 0xff {
		var n int64
		for _, b := range field[1:] {
			n = n<<8 | int64(b)
		}
		if field[0] == 0xff {
			n -= 1 << (8 * (len(field) - 1))
		}
		return n, true
	}
	if i := strings.IndexByte(string(field), 0); i >= 0 {
		field = field[:i]
	}
	text := strings.Trim(string(field), " \t\n\r\v\f\x1c\x1d\x1e\x1f")
	if text == "" {
		return 0, true
	}
	neg := text[0] == '-'
	if text[0] == '+' || text[0] == '-' {
		text = text[1:]
	}
	if len(text) > 1 && text[0] == '0' && (text[1] == 'o' || text[1] == 'O') {
		text = text[2:]
	}
	var n int64
	digits := 0
	for _, r := range text {
		switch {
		case r == '_':
		case '0' <= r && r <= '7':
			n = n*8 + int64(r-'0')
			digits++
		default:
			return 0, false
		}
	}
	if digits == 0 {
		return 0, false
	}
	if neg {
		n = -n
	}
	return n, true
}

// maxTarMembers bounds the members walked: torch's tar files have three.
const maxTarMembers = 64

// openTar refuses a pre-0.1.10 tar checkpoint (torch itself no longer loads these with
// weights_only), after scanning every pickle torch's tar loader would run. A file that also
// starts like a pickle is judged by that reading too: a legacy reader would run those pickles.
func (c *Container) openTar() error {
	c.scanTarMembers()
	if looksLikePickle(firstByte(c.ra, 0)) {
		if err := c.openPickles(); err != nil {
			return err
		}
		polyglot := c.Kind == Legacy
		c.Kind, c.Main, c.Keys = Tar, nil, nil
		if polyglot {
			// Two readings of one file: ambiguous, whatever either reading holds.
			c.Problem = fault.New(fault.Malformed, "", "ambiguous file: both a tar archive (which torch.load reads first) and a legacy checkpoint")
			return nil
		}
	}
	c.Problem = fault.New(fault.Unsupported, "", "legacy tar checkpoint (torch < 0.1.10): not supported, re-save it with a current torch")
	return nil
}

// scanTarMembers walks the tar's members as torch's legacy_load reads them: "storages" is a
// count, then per storage an argument pickle and its raw elements, then the views pickle;
// "tensors" a count, then per tensor an argument pickle and its raw geometry; any other member
// ("pickle") back-to-back pickles.
func (c *Container) scanTarMembers() {
	tr := tar.NewReader(io.NewSectionReader(c.ra, 0, c.size))
	for i := 0; i < maxTarMembers; i++ {
		h, err := tr.Next()
		if err != nil {
			return
		}
		m := &tarMember{c: c, name: "tar:" + h.Name, left: h.Size, r: bufio.NewReaderSize(tr, 64<<10)}
		switch h.Name {
		case "storages":
			m.walk(storageElemSize)
		case "tensors":
			m.walk(nil)
		default:
			for m.left > 0 && m.peekPickle() && m.next() != nil {
			}
		}
	}
}

// tarMember reads one member's pickles and raw fields in sequence.
type tarMember struct {
	c    *Container
	name string
	left int64
	r    *bufio.Reader
	n    int
}

// peekPickle reports whether the next byte can start a pickle.
func (m *tarMember) peekPickle() bool {
	b, err := m.r.Peek(1)
	return err == nil && looksLikePickle(b[0])
}

// next scans the next pickle, or returns nil when it is refused.
func (m *tarMember) next() *Stream {
	m.n++
	s := m.c.scan(m.r, m.left, fmt.Sprintf("%s#%d", m.name, m.n), -1)
	m.left -= s.Scan.Length
	if s.Err != nil {
		return nil
	}
	return s
}

// skip discards n raw bytes; it reports false when the member holds fewer.
func (m *tarMember) skip(n int64) bool {
	if n < 0 || n > m.left {
		return false
	}
	m.left -= n
	_, err := io.CopyN(io.Discard, m.r, n)
	return err == nil
}

// int64LE reads a raw little-endian integer of 4 or 8 bytes.
func (m *tarMember) int64LE(width int) (int64, bool) {
	if int64(width) > m.left {
		return 0, false
	}
	var b [8]byte
	if _, err := io.ReadFull(m.r, b[:width]); err != nil {
		return 0, false
	}
	m.left -= int64(width)
	return int64(binary.LittleEndian.Uint64(b[:])), true
}

// walk reads a count pickle, then per item an argument pickle and the raw bytes that follow
// it, then (for storages) the views pickle. With elemSize set (storages), the raw bytes are an
// int64 element count and the elements; with it nil (tensors), an int32 dimension count, 4
// bytes of padding and 8 bytes per dimension twice plus an offset.
func (m *tarMember) walk(elemSize func(*Stream) int64) {
	count := m.next()
	if count == nil {
		return
	}
	v, err := m.c.literal(count)
	n, ok := v.(int)
	if err != nil || !ok || n < 0 {
		return
	}
	for i := 0; i < n; i++ {
		args := m.next()
		if args == nil {
			return
		}
		if elemSize != nil {
			size := elemSize(args)
			elems, ok := m.int64LE(8)
			if !ok || size == 0 || elems < 0 || elems > m.left/size || !m.skip(elems*size) {
				return
			}
			continue
		}
		ndim, ok := m.int64LE(4)
		if !ok || !m.skip(4) || int32(ndim) < 0 || !m.skip(16*int64(int32(ndim))+8) {
			return
		}
	}
	if elemSize != nil {
		m.next()
	}
}

// storageElemSize is the element size of the storage type an argument pickle (key, location,
// storage type) names, or 0 when it names none torch knows.
func storageElemSize(s *Stream) int64 {
	sizes := map[string]int64{
		"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "LongStorage": 8, "IntStorage": 4,
		"ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1, "BFloat16Storage": 2,
		"ComplexDoubleStorage": 16, "ComplexFloatStorage": 8,
	}
	for _, g := range s.Scan.Globals {
		if g.Module == "torch" && sizes[g.Name] != 0 {
			return sizes[g.Name]
		}
	}
	return 0
}

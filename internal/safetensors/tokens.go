package safetensors

import (
	"bytes"
	"encoding/json"
	"io"
	"unicode/utf8"
)

// tokenizer is what the parser needs of encoding/json's Decoder (created with UseNumber).
type tokenizer interface {
	Token() (json.Token, error)
	More() bool
	InputOffset() int64
}

// newTokenizer returns a json.Decoder over hdr, or, when hdr is valid UTF-8 and valid JSON, a
// validTokens that yields the same tokens and offsets at a fraction of the cost: the Decoder
// decodes each scalar separately and builds an error message to find its end (4 s of a
// million-tensor header's 6 s). Invalid JSON goes to the Decoder, whose errors locate the fault.
func newTokenizer(hdr []byte) tokenizer {
	if utf8.Valid(hdr) && json.Valid(hdr) {
		return &validTokens{b: hdr}
	}
	dec := json.NewDecoder(bytes.NewReader(hdr))
	dec.UseNumber()
	return dec
}

// validTokens tokenizes valid JSON in valid UTF-8 as json.Decoder.Token does with UseNumber: commas and colons
// are skipped, strings decoded, numbers kept as json.Number; InputOffset is the offset just past
// the last token, or of the next non-space byte after More.
type validTokens struct {
	b   []byte
	pos int
}

func (v *validTokens) InputOffset() int64 { return int64(v.pos) }

// skipSpace moves to the next non-space byte; at the end of the input it stays put, as the
// Decoder does.
func (v *validTokens) skipSpace() {
	for i := v.pos; i < len(v.b); i++ {
		if !isSpace(v.b[i]) {
			v.pos = i
			return
		}
	}
}

func (v *validTokens) More() bool {
	v.skipSpace()
	return v.pos < len(v.b) && !isSpace(v.b[v.pos]) && v.b[v.pos] != ']' && v.b[v.pos] != '}'
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func (v *validTokens) Token() (json.Token, error) {
	for {
		v.skipSpace()
		start := v.pos
		if start >= len(v.b) || isSpace(v.b[start]) {
			return nil, io.EOF
		}
		switch c := v.b[start]; c {
		case ',', ':':
			v.pos++
		case '{', '}', '[', ']':
			v.pos++
			return json.Delim(c), nil
		case '"':
			v.pos++
			for v.b[v.pos] != '"' {
				if v.b[v.pos] == '\\' {
					v.pos++
				}
				v.pos++
			}
			v.pos++
			raw := v.b[start:v.pos]
			if bytes.IndexByte(raw, '\\') < 0 {
				return string(raw[1 : len(raw)-1]), nil
			}
			var s string
			err := json.Unmarshal(raw, &s)
			return s, err
		case 't':
			v.pos += len("true")
			return true, nil
		case 'f':
			v.pos += len("false")
			return false, nil
		case 'n':
			v.pos += len("null")
			return nil, nil
		default:
			for v.pos < len(v.b) && numberByte(v.b[v.pos]) {
				v.pos++
			}
			return json.Number(v.b[start:v.pos]), nil
		}
	}
}

func numberByte(c byte) bool {
	return '0' <= c && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'
}

package torchzip

import "testing"

// Sniff sees only the first bytes, as a tree scan does before deciding whether a file is worth
// a parse at all.
func TestSniff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		head string
		want Kind
	}{
		{"torch zip", "PK\x03\x04rest", Zip},
		{"7z", "7z\xbc\xaf\x27\x1c\x00\x04", SevenZip},
		{"npy", "\x93NUMPY\x01\x00", Numpy},
		{"protocol 2 pickle (legacy checkpoint)", "\x80\x02\x8a\x0a", Pickle},
		{"text starting with an opcode letter (vocab.txt)", "]PAD\n", Pickle},
		{"JSON config", `{"architectures": []}`, Unknown},
		{"empty file", "", Unknown},
	} {
		if got := Sniff([]byte(tc.head)); got != tc.want {
			t.Errorf("%s: Sniff = %q, want %q", tc.name, got, tc.want)
		}
	}
}

package unpickler

import "testing"

// TestClassText checks that every class decodes from the text it encodes to, and that an
// unknown name is refused: manifests cross the sandbox pipe as JSON.
func TestClassText(t *testing.T) {
	for c := Unknown; c <= Dangerous; c++ {
		b, err := c.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var got Class
		if err := got.UnmarshalText(b); err != nil || got != c {
			t.Errorf("%q decodes to %v, %v; want %v", b, got, err, c)
		}
	}
	var c Class
	if err := c.UnmarshalText([]byte("harmless")); err == nil {
		t.Error("unknown class name accepted")
	}
}

package safetensors

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"unicode/utf8"
)

// TestValidTokens requires validTokens to yield what json.Decoder (UseNumber) yields on valid
// JSON: the same tokens, More answers and input offsets, whether or not More is asked before
// each token.
func TestValidTokens(t *testing.T) {
	for _, h := range tokenHeaders {
		for _, more := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/more=%v", h, more), func(t *testing.T) {
				if !json.Valid([]byte(h)) {
					t.Fatalf("test header is not valid JSON")
				}
				checkTokens(t, []byte(h), more)
			})
		}
	}
}

// FuzzValidTokens is TestValidTokens on arbitrary valid JSON in valid UTF-8 (newTokenizer's
// condition).
func FuzzValidTokens(f *testing.F) {
	for _, h := range tokenHeaders {
		f.Add([]byte(h))
	}
	f.Fuzz(func(t *testing.T, h []byte) {
		if utf8.Valid(h) && json.Valid(h) {
			checkTokens(t, h, false)
			checkTokens(t, h, true)
		}
	})
}

func checkTokens(t *testing.T, h []byte, more bool) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(h))
	dec.UseNumber()
	if got, want := trace(&validTokens{b: h}, more), trace(dec, more); got != want {
		t.Errorf("validTokens:\n%s\njson.Decoder:\n%s", got, want)
	}
}

var tokenHeaders = []string{
	`{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{"format":"pt"}}`,
	" \t\r\n{ \"a\" : { \"dtype\" :\"F32\" , \"shape\" : [ ] ,\"data_offsets\":[ 0 , 0 ] } } \n",
	`{"q\"uo\\te\u00e9\ud83d\ude00\/":{"x":[-1,1.5e+3,0.0E-2,true,false,null,{}]}}`,
	`{"\ud800":"lone surrogate", "é":"raw"}`,
	`[1,[2,[3,{"k":[]}]]]`,
	`"top-level string"`,
	`12345678901234567890123`,
	`{}`,
}

// trace records every answer of a tokenizer run to the end of its input.
func trace(tk tokenizer, more bool) string {
	var b bytes.Buffer
	for range 100 {
		if more {
			fmt.Fprintf(&b, "more %v @%d; ", tk.More(), tk.InputOffset())
		}
		tok, err := tk.Token()
		fmt.Fprintf(&b, "%T %#v %v @%d\n", tok, tok, err, tk.InputOffset())
		if err != nil {
			break
		}
	}
	return b.String()
}

package api

import (
	"fmt"
	"strings"
	"testing"
)

func TestLimitRanges(t *testing.T) {
	ranges := func(n, step int) string {
		var s []string
		for i := range n {
			s = append(s, fmt.Sprintf("%d-%d", i*step, i*step))
		}
		return "bytes=" + strings.Join(s, ",")
	}
	const size = 1000
	for _, c := range []struct{ name, spec, want string }{
		{"one range", "bytes=0-7", "bytes=0-7"},
		{"open end", "bytes=990-", "bytes=990-999"},
		{"end past the size", "bytes=990-5000", "bytes=990-999"},
		{"end at MaxInt64", "bytes=990-9223372036854775807", "bytes=990-999"},
		{"suffix", "bytes=-10", "bytes=990-999"},
		{"suffix longer than the file", "bytes=-5000", "bytes=0-999"},
		{"spaces", "bytes= 0-1 , 5-6 ", "bytes=0-1,5-6"},
		{"overlapping merged and sorted", "bytes=5-9,0-5", "bytes=0-9"},
		{"192 adjacent one-byte ranges are one", ranges(192, 1), "bytes=0-191"},
		{"four disjoint kept, sorted", "bytes=30-31,0-1,20-21,10-11", "bytes=0-1,10-11,20-21,30-31"},
		{"five disjoint: the whole file", "bytes=0-1,10-11,20-21,30-31,40-41", ""},
		{"192 disjoint one-byte ranges: the whole file", ranges(192, 2), ""},
		{"unsatisfiable dropped", "bytes=0-1,2000-3000", "bytes=0-1"},
		{"nothing satisfiable: left for the 416", "bytes=2000-3000", "bytes=2000-3000"},
		{"empty suffix: left for the 416", "bytes=-0", "bytes=-0"},
		{"not a number: left as is", "bytes=a-b", "bytes=a-b"},
		{"reversed: left as is", "bytes=9-5", "bytes=9-5"},
		{"negative suffix: left as is", "bytes=--5", "bytes=--5"},
		{"other unit: left as is", "items=0-1", "items=0-1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := limitRanges(c.spec, size); got != c.want {
				t.Errorf("limitRanges(%.60q, %d) = %q, want %q", c.spec, size, got, c.want)
			}
		})
	}
}

package api

import (
	"fmt"
	"strings"
	"testing"
)

func TestPrefersHTML(t *testing.T) {
	for _, c := range []struct {
		name   string
		accept []string
		want   bool
	}{
		{"none (scripts, curl -H Accept:)", nil, false},
		{"curl", []string{"*/*"}, false},
		{"JSON client", []string{"application/json"}, false},
		{"Chromium navigation", []string{"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}, true},
		{"Firefox navigation", []string{"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}, true},
		{"JSON ranked higher", []string{"text/html;q=0.5, application/json"}, false},
		{"equal weights", []string{"application/json, text/html"}, false},
		{"text/* beats */*", []string{"text/*, */*;q=0.1"}, true},
		{"specific range wins over wildcard", []string{"text/*;q=0.2, text/html;q=0.9, application/*;q=0.5"}, true},
		{"html refused", []string{"text/html;q=0, */*"}, false},
		{"several fields", []string{"application/json;q=0.1", "text/html"}, true},
		{"malformed q ignored", []string{"text/html;q=abc, application/json;q=0.5"}, true},
	} {
		if got := prefersHTML(c.accept); got != c.want {
			t.Errorf("%s: prefersHTML(%q) = %v, want %v", c.name, c.accept, got, c.want)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"},
		{5 << 20, "5.0 MiB"}, {3 << 40, "3.0 TiB"}, {1 << 62, "4.0 EiB"},
	} {
		if got := formatBytes(c.n); got != c.want {
			t.Errorf("formatBytes(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}

// The job page's summary of a report keeps the verdict and the dangerous and unknown globals,
// at most maxOffendersShown of them, and skips everything else, tensors included.
func TestReadReportSummary(t *testing.T) {
	global := func(name, class string, offset int) string {
		return fmt.Sprintf(`{"entry":"a/data.pkl","module":"m","name":%q,"offset":%d,"class":%q}`, name, offset, class)
	}
	var many []string
	for i := range maxOffendersShown + 3 {
		many = append(many, global(fmt.Sprint("G", i), "unknown", i))
	}
	for _, c := range []struct {
		name, report string
		verdict      string
		offenders    []string
		more         int
		wantErr      bool
	}{
		{name: "safe", report: `{"source":{"size":3,"nested":[1,{"a":[]}]},"verdict":"safe","globals":[` + global("A", "allowed", 2) + `],"tensors":[{"name":"w","shape":[2,3]}],"aliases":{}}`,
			verdict: "safe"},
		{name: "unsafe", report: `{"verdict":"unsafe","globals":[` + global("A", "allowed", 2) + "," + global("system", "dangerous", 5) + "," + global("Cfg", "unknown", 9) + "," + global("R", "inert", 11) + `],"tensors":null}`,
			verdict: "unsafe", offenders: []string{"m.system dangerous 5", "m.Cfg unknown 9"}},
		{name: "null globals", report: `{"globals":null,"verdict":"malformed"}`, verdict: "malformed"},
		{name: "many", report: `{"verdict":"unsafe","globals":[` + strings.Join(many, ",") + `]}`, verdict: "unsafe", more: 3},
		{name: "not an object", report: `[1]`, wantErr: true},
		{name: "truncated", report: `{"verdict":"unsafe","tensors":[{"name":`, wantErr: true},
		{name: "unknown class", report: `{"globals":[` + global("X", "weird", 1) + `]}`, wantErr: true},
	} {
		s, err := readReportSummary(strings.NewReader(c.report))
		if (err != nil) != c.wantErr {
			t.Errorf("%s: err = %v, want error %v", c.name, err, c.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		var got []string
		for _, g := range s.Offenders {
			got = append(got, fmt.Sprintf("%s %s %d", g.Qualified(), g.Class, g.Offset))
		}
		if c.name == "many" {
			if len(got) != maxOffendersShown {
				t.Errorf("%s: %d offenders, want %d", c.name, len(got), maxOffendersShown)
			}
			got = nil
		}
		if s.Verdict != c.verdict || fmt.Sprint(got) != fmt.Sprint(c.offenders) || s.More != c.more {
			t.Errorf("%s: summary = %q %v +%d, want %q %v +%d", c.name, s.Verdict, got, s.More, c.verdict, c.offenders, c.more)
		}
	}
}

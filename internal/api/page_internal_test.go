package api

import "testing"

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

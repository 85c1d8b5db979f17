package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestFormat(t *testing.T) {
	t.Parallel()
	rev := "d775796abcdef0123456789abcdef0123456789a"
	vcs := func(modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	cases := []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"no build info", nil, "(devel)"},
		{"go run, go test", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "(devel)"},
		{"empty main version", &debug.BuildInfo{}, "(devel)"},
		{"tagged release", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.0"}, Settings: vcs("false")}, "v1.2.0 (" + rev + ")"},
		{"module proxy build, no VCS", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.0"}}, "v1.2.0"},
		{"uncommitted changes", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261130095118-d775796abcde+dirty"}, Settings: vcs("true")},
			"v0.0.0-20261130095118-d775796abcde+dirty (" + rev + ", modified)"},
	}
	for _, c := range cases {
		if got := format(c.bi); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}

func TestLinked(t *testing.T) {
	t.Parallel()
	if got, want := linked("v1.2.0", "1a2b3c"), "v1.2.0 (1a2b3c)"; got != want {
		t.Errorf("linked = %q, want %q", got, want)
	}
	if got, want := linked("v1.2.0", ""), "v1.2.0"; got != want {
		t.Errorf("linked without a revision = %q, want %q", got, want)
	}
}

package testkit

import "testing"

func TestWithoutModFlag(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"-mod=readonly", ""},
		{"-buildvcs=false -mod=vendor  -trimpath", "-buildvcs=false -trimpath"},
		{"--mod=mod -race", "-race"},
		{"-modcacherw", "-modcacherw"}, // not -mod
	} {
		if got := withoutModFlag(tc.in); got != tc.want {
			t.Errorf("withoutModFlag(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
}

package main

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// --batch-root is repeatable; CONVERTER_BATCH_ROOT stands in for it with a list of the
// system's path-list form, and the command line replaces it. A root must be an absolute path
// to a directory.
func TestBatchRootFlag(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	file := filepath.Join(a, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	envOf := func(v string) func(string) string {
		return func(k string) string { return map[string]string{"CONVERTER_BATCH_ROOT": v}[k] }
	}
	list := a + string(filepath.ListSeparator) + b
	for _, tc := range []struct {
		args []string
		env  string
		want []string
	}{
		{[]string{"--batch-root", a, "--batch-root", b}, "", []string{a, b}},
		{nil, list, []string{a, b}},
		{[]string{"--batch-root", b}, a, []string{b}},
		{nil, "", nil},
	} {
		c, err := parseServeFlags(tc.args, envOf(tc.env), io.Discard)
		if err != nil || !slices.Equal(c.batchRoots, tc.want) {
			t.Errorf("args %q env %q: roots %q, %v; want %q", tc.args, tc.env, c.batchRoots, err, tc.want)
		}
	}
	for _, bad := range []string{file, "relative/dir", filepath.Join(a, "missing")} {
		if _, err := parseServeFlags([]string{"--batch-root", bad}, envOf(""), io.Discard); err == nil {
			t.Errorf("--batch-root %s was accepted", bad)
		}
	}
}

package main

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/ptsafe/converter/internal/api"
)

// --batch-root is repeatable; CONVERTER_BATCH_ROOT stands in for it with a list of the
// system's path-list form, whose ":" on Unix does not cut an s3:// root, and the command line
// replaces it. A root must be an absolute path to a directory or an S3 prefix that is a
// relative path, clear of the server's data directory and S3 store.
func TestBatchRootFlag(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	file := filepath.Join(a, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	envOf := func(v string) func(string) string {
		return func(k string) string { return map[string]string{"CONVERTER_BATCH_ROOT": v}[k] }
	}
	sep := string(filepath.ListSeparator)
	for _, tc := range []struct {
		args []string
		env  string
		want []string
	}{
		{[]string{"--batch-root", a, "--batch-root", b}, "", []string{a, b}},
		{nil, a + sep + b, []string{a, b}},
		{[]string{"--batch-root", b}, a, []string{b}},
		{[]string{"--batch-root", "s3://models/hub", "--batch-root", "s3://scratch"}, "", []string{"s3://models/hub", "s3://scratch"}},
		{nil, "s3://models/hub" + sep + a + sep + "s3://scratch", []string{"s3://models/hub", a, "s3://scratch"}},
		{nil, "", nil},
	} {
		c, err := parseServeFlags(tc.args, envOf(tc.env), io.Discard)
		want, werr := api.ParseBatchRoots(tc.want)
		if err != nil || werr != nil || !reflect.DeepEqual(c.batchRoots, want) {
			t.Errorf("args %q env %q: roots %+v, %v; want %q (%+v, %v)", tc.args, tc.env, c.batchRoots, err, tc.want, want, werr)
		}
	}
	sub := filepath.Join(a, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(b, "link")
	if err := os.Symlink(a, link); err != nil {
		t.Fatal(err)
	}
	// A root must not reach the server's own files: the data directory or the S3 store.
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"--data", filepath.Join(a, "data"), "--batch-root", a}, false},
		{[]string{"--data", a, "--batch-root", sub}, false},
		{[]string{"--data", sub, "--batch-root", b}, true},
		{[]string{"--data", sub, "--batch-root", link}, false}, // the same directory, through a symlink
		{[]string{"--store", "s3://models/jobs", "--batch-root", "s3://models"}, false},
		{[]string{"--store", "s3://models/jobs", "--batch-root", "s3://models/jobs/x"}, false},
		{[]string{"--store", "s3://models/jobs", "--batch-root", "s3://models/jobs2"}, true},
		{[]string{"--store", "s3://models/jobs", "--batch-root", "s3://other"}, true},
	} {
		if _, err := parseServeFlags(tc.args, envOf(""), io.Discard); (err == nil) != tc.ok {
			t.Errorf("serve %q: %v, want accepted %v", tc.args, err, tc.ok)
		}
	}
	for _, bad := range []string{file, "relative/dir", filepath.Join(a, "missing"), "s3", "s3:///models", "s3://models/a/../b", "s3://models//b"} {
		if _, err := parseServeFlags([]string{"--batch-root", bad}, envOf(""), io.Discard); err == nil {
			t.Errorf("--batch-root %s was accepted", bad)
		}
	}
}

package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/buildinfo"
	"github.com/ptsafe/converter/internal/convert"
)

// runCLI runs one command line in-process (without the sandbox child, which the sandbox
// package's own tests cover through the built binary) and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := func(k string) string {
		if k == "CONVERTER_SANDBOX" {
			return "false"
		}
		return ""
	}
	code = run(context.Background(), args, env, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCLIContract checks the exit codes, the one-line stderr and the absence of output on
// failure for each kind of input.
func TestCLIContract(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "pytorch_model.bin")
	copyFile(t, "../../testdata/torch/module_state_dict.pt", good)
	truncated := filepath.Join(dir, "truncated.pt")
	b, _ := os.ReadFile(good)
	os.WriteFile(truncated, b[:len(b)/2], 0o644)
	unsafe := filepath.Join(dir, "evil.pt")
	// A protocol-2 pickle calling os.system: parsed statically, never run.
	os.WriteFile(unsafe, []byte("\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."), 0o644)
	complex128 := filepath.Join(dir, "complex128.pt")
	copyFile(t, "../../testdata/torch/complex128.pt", complex128)

	cases := []struct {
		name   string
		args   []string
		code   int
		output string // file that must exist afterwards ("" none)
		absent string // file that must not exist afterwards
		stderr string // substring of the single stderr line
	}{
		{name: "default output name", args: []string{"convert", good}, code: 0, output: filepath.Join(dir, "model.safetensors")},
		{name: "explicit output", args: []string{"convert", good, filepath.Join(dir, "x.safetensors")}, code: 0, output: filepath.Join(dir, "x.safetensors")},
		{name: "unsafe", args: []string{"convert", unsafe, filepath.Join(dir, "evil.safetensors")}, code: 3,
			absent: filepath.Join(dir, "evil.safetensors"), stderr: "global os.system is known-dangerous"},
		{name: "malformed", args: []string{"convert", truncated, filepath.Join(dir, "t.safetensors")}, code: 4,
			absent: filepath.Join(dir, "t.safetensors"), stderr: "malformed"},
		{name: "unsupported dtype names the tensor", args: []string{"convert", complex128, filepath.Join(dir, "c.safetensors")}, code: 4,
			absent: filepath.Join(dir, "c.safetensors"), stderr: `tensor "c"`},
		{name: "missing input", args: []string{"convert", filepath.Join(dir, "nope.pt"), filepath.Join(dir, "n.safetensors")}, code: 1,
			absent: filepath.Join(dir, "n.safetensors"), stderr: "cannot read INPUT " + filepath.Join(dir, "nope.pt") + ": no such file or directory"},
		{name: "no arguments", args: []string{"convert"}, code: 2},
		{name: "flag after positional works", args: []string{"convert", good, filepath.Join(dir, "y.safetensors"), "--select", "x"}, code: 4,
			absent: filepath.Join(dir, "y.safetensors"), stderr: `--select "x"`},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2},
		{name: "dangerous --allow-global", args: []string{"convert", "--allow-global", "os.system", good}, code: 2, stderr: "known-dangerous"},
		{name: "bad limit env-free flag", args: []string{"convert", "--limit-max-dims", "x", good}, code: 2},
		{name: "limit exceeded", args: []string{"convert", "--limit-max-tensors", "2", good, filepath.Join(dir, "l.safetensors")}, code: 4,
			absent: filepath.Join(dir, "l.safetensors"), stderr: "max-tensors"},
		{name: "scan safe", args: []string{"scan", good}, code: 0},
		{name: "scan unsafe", args: []string{"scan", unsafe}, code: 3, stderr: "os.system"},
		{name: "scan malformed", args: []string{"scan", truncated}, code: 4},
		{name: "version", args: []string{"version"}, code: 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, c.args...)
			if code != c.code {
				t.Fatalf("exit %d; want %d (stderr %q)", code, c.code, stderr)
			}
			if c.code != 0 && c.code != 2 {
				if lines := strings.Count(strings.TrimSpace(stderr), "\n"); lines != 0 || stderr == "" {
					t.Errorf("stderr %q; want exactly one line", stderr)
				}
			}
			if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") {
				t.Errorf("stderr shows a panic: %q", stderr)
			}
			if c.stderr != "" && !strings.Contains(stderr, c.stderr) {
				t.Errorf("stderr %q; want it to mention %q", stderr, c.stderr)
			}
			if c.output != "" {
				if _, err := os.Stat(c.output); err != nil {
					t.Errorf("output missing: %v", err)
				}
			}
			if c.absent != "" {
				if _, err := os.Stat(c.absent); !os.IsNotExist(err) {
					t.Errorf("%s exists after a failure", c.absent)
				}
			}
			// No temporary files are left in the output directory either.
			tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp"))
			if len(tmps) != 0 {
				t.Errorf("temporary files left: %v", tmps)
			}
		})
	}
}

// TestCLIManifestScanVerify checks that --manifest and scan --json share one schema and that
// verify --source accepts the output and rejects a tampered copy.
func TestCLIManifestScanVerify(t *testing.T) {
	dir := t.TempDir()
	src := "../../testdata/torch/training_checkpoint.pt"
	out := filepath.Join(dir, "out.safetensors")
	manifest := filepath.Join(dir, "manifest.json")
	if code, _, stderr := runCLI(t, "convert", "--manifest", manifest, src, out); code != 0 {
		t.Fatalf("convert: exit %d: %s", code, stderr)
	}
	var m map[string]any
	b, _ := os.ReadFile(manifest)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	code, scanOut, _ := runCLI(t, "scan", "--json", src)
	if code != 0 {
		t.Fatalf("scan exit %d", code)
	}
	var s map[string]any
	if err := json.Unmarshal([]byte(scanOut), &s); err != nil {
		t.Fatalf("scan --json: %v", err)
	}
	for _, k := range []string{"converter_version", "source", "verdict", "globals", "tensors", "aliases", "dropped"} {
		if _, ok := m[k]; !ok {
			t.Errorf("manifest lacks %q", k)
		}
		if _, ok := s[k]; !ok {
			t.Errorf("scan --json lacks %q", k)
		}
	}
	if _, ok := m["output"]; !ok {
		t.Error("manifest lacks output")
	}
	if code, _, stderr := runCLI(t, "verify", "--source", src, out); code != 0 {
		t.Fatalf("verify --source: exit %d: %s", code, stderr)
	}
	// Flip one byte of tensor data: still a valid file, but no longer the source's bytes.
	tampered := filepath.Join(dir, "tampered.safetensors")
	copyFile(t, out, tampered)
	tb, _ := os.ReadFile(tampered)
	tb[len(tb)-1] ^= 0xff
	os.WriteFile(tampered, tb, 0o644)
	if code, _, _ := runCLI(t, "verify", tampered); code != 0 {
		t.Errorf("verify of a structurally valid file: exit %d; want 0", code)
	}
	if code, _, stderr := runCLI(t, "verify", "--source", src, tampered); code != 4 || !strings.Contains(stderr, "differs from the source") {
		t.Errorf("verify --source of a tampered file: exit %d %q; want 4 naming the difference", code, stderr)
	}
	// A truncated file fails strict validation.
	os.WriteFile(tampered, tb[:len(tb)-3], 0o644)
	if code, _, _ := runCLI(t, "verify", tampered); code != 4 {
		t.Errorf("verify of a truncated file: exit %d; want 4", code)
	}
}

// readFile returns path's bytes, or nil when it does not exist.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return b
}

// TestConvertNeverDestroysAFile: an OUTPUT or manifest that is the input, whatever path leads
// to it, is refused even with --force; one that exists is refused without --force. The input is
// a truncated checkpoint, so a refusal that came after reading it would exit 4, not 1.
func TestConvertNeverDestroysAFile(t *testing.T) {
	t.Parallel()
	good, err := os.ReadFile("../../testdata/torch/module_state_dict.pt")
	if err != nil {
		t.Fatal(err)
	}
	truncated := good[:len(good)/2]
	const old = "an existing file\n"

	type files map[string]string // name in the test directory -> content ("" for a directory)
	cases := []struct {
		name   string
		input  []byte           // written to in.pt
		setup  func(dir string) // after in.pt and the files exist
		files  files
		args   []string // after "convert"; DIR is replaced by the test directory
		code   int
		stderr string   // substring of stderr
		same   []string // files that must keep their content (in.pt always does)
		wrote  string   // the safetensors file a successful run writes
		forced []string // existing files a successful run replaces
	}{
		{name: "OUTPUT is INPUT", input: good, args: []string{"DIR/in.pt", "DIR/in.pt"}, code: 1,
			stderr: "OUTPUT DIR/in.pt is the INPUT file"},
		{name: "OUTPUT is INPUT, with --force", input: good, args: []string{"--force", "DIR/in.pt", "DIR/in.pt"}, code: 1,
			stderr: "is the INPUT file"},
		{name: "OUTPUT is INPUT through another path", input: good, args: []string{"DIR/in.pt", "DIR/./sub/../in.pt"}, code: 1,
			files: files{"sub": ""}, stderr: "is the INPUT file"},
		{name: "OUTPUT is a symlink to INPUT", input: good, args: []string{"--force", "DIR/in.pt", "DIR/link.safetensors"}, code: 1,
			setup: func(dir string) { os.Symlink(filepath.Join(dir, "in.pt"), filepath.Join(dir, "link.safetensors")) }, stderr: "is the INPUT file"},
		{name: "OUTPUT is a hard link to INPUT", input: good, args: []string{"--force", "DIR/in.pt", "DIR/hard.safetensors"}, code: 1,
			setup: func(dir string) { os.Link(filepath.Join(dir, "in.pt"), filepath.Join(dir, "hard.safetensors")) }, stderr: "is the INPUT file"},
		{name: "OUTPUT exists", input: truncated, files: files{"out.safetensors": old}, args: []string{"DIR/in.pt", "DIR/out.safetensors"}, code: 1,
			stderr: "OUTPUT DIR/out.safetensors already exists: --force replaces it", same: []string{"out.safetensors"}},
		{name: "OUTPUT exists, read-only", input: truncated, files: files{"ro.safetensors": old}, args: []string{"DIR/in.pt", "DIR/ro.safetensors"}, code: 1,
			setup: func(dir string) { os.Chmod(filepath.Join(dir, "ro.safetensors"), 0o444) }, stderr: "--force", same: []string{"ro.safetensors"}},
		{name: "OUTPUT is a dangling symlink", input: truncated, args: []string{"DIR/in.pt", "DIR/dangling.safetensors"}, code: 1,
			setup: func(dir string) {
				os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, "dangling.safetensors"))
			}, stderr: "already exists"},
		{name: "default OUTPUT exists", input: truncated, files: files{"in.safetensors": old}, args: []string{"DIR/in.pt"}, code: 1,
			stderr: "OUTPUT DIR/in.safetensors already exists", same: []string{"in.safetensors"}},
		{name: "OUTPUT inside a file", input: truncated, args: []string{"DIR/in.pt", "DIR/in.pt/o.safetensors"}, code: 1,
			stderr: "cannot use OUTPUT DIR/in.pt/o.safetensors: not a directory"},
		{name: "OUTPUT exists, --force", input: good, files: files{"out.safetensors": old}, args: []string{"--force", "DIR/in.pt", "DIR/out.safetensors"}, code: 0,
			wrote: "out.safetensors", forced: []string{"out.safetensors"}},
		{name: "OUTPUT is a directory", input: good, files: files{"outdir": ""}, args: []string{"DIR/in.pt", "DIR/outdir"}, code: 0,
			wrote: "outdir/in.safetensors"},
		{name: "OUTPUT directory holds the default name", input: truncated, files: files{"outdir": "", "outdir/in.safetensors": old},
			args: []string{"DIR/in.pt", "DIR/outdir"}, code: 1, stderr: "OUTPUT DIR/outdir/in.safetensors already exists", same: []string{"outdir/in.safetensors"}},
		{name: "OUTPUT directory holds a directory of the default name", input: truncated, files: files{"outdir": "", "outdir/in.safetensors": ""},
			args: []string{"--force", "DIR/in.pt", "DIR/outdir"}, code: 1, stderr: "is a directory"},
		{name: "manifest is INPUT", input: good, args: []string{"--force", "--manifest", "DIR/in.pt", "DIR/in.pt", "DIR/m.safetensors"}, code: 1,
			stderr: "--manifest DIR/in.pt is the INPUT file"},
		{name: "manifest is OUTPUT", input: good, args: []string{"--manifest", "DIR/o.safetensors", "DIR/in.pt", "DIR/o.safetensors"}, code: 1,
			stderr: "--manifest DIR/o.safetensors is OUTPUT"},
		{name: "manifest is the default OUTPUT", input: good, args: []string{"--manifest", "DIR/in.safetensors", "DIR/in.pt"}, code: 1,
			stderr: "is OUTPUT"},
		{name: "manifest exists", input: truncated, files: files{"m.json": old}, args: []string{"--manifest", "DIR/m.json", "DIR/in.pt", "DIR/o.safetensors"}, code: 1,
			stderr: "--manifest DIR/m.json already exists: --force replaces it", same: []string{"m.json"}},
		{name: "manifest is a directory", input: good, files: files{"mdir": ""}, args: []string{"--force", "--manifest", "DIR/mdir", "DIR/in.pt", "DIR/o.safetensors"}, code: 1,
			stderr: "--manifest DIR/mdir is a directory"},
		{name: "manifest exists, --force", input: good, files: files{"m.json": old}, args: []string{"--manifest", "DIR/m.json", "--force", "DIR/in.pt", "DIR/o.safetensors"}, code: 0,
			wrote: "o.safetensors", forced: []string{"m.json"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "in.pt"), c.input, 0o644); err != nil {
				t.Fatal(err)
			}
			for name, content := range c.files {
				path := filepath.Join(dir, name)
				var err error
				if content == "" {
					err = os.MkdirAll(path, 0o755)
				} else if err = os.MkdirAll(filepath.Dir(path), 0o755); err == nil { // maps have no order
					err = os.WriteFile(path, []byte(content), 0o644)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if c.setup != nil {
				c.setup(dir)
			}
			before := map[string][]byte{"in.pt": c.input}
			for _, name := range c.same {
				before[name] = readFile(t, filepath.Join(dir, name))
			}
			args := []string{"convert"}
			for _, a := range c.args {
				args = append(args, strings.ReplaceAll(a, "DIR", dir))
			}
			code, _, stderr := runCLI(t, args...)
			if code != c.code {
				t.Fatalf("exit %d; want %d (stderr %q)", code, c.code, stderr)
			}
			if want := strings.ReplaceAll(c.stderr, "DIR", dir); !strings.Contains(stderr, want) {
				t.Errorf("stderr %q; want it to say %q", stderr, want)
			}
			for name, b := range before {
				if got := readFile(t, filepath.Join(dir, name)); !bytes.Equal(got, b) {
					t.Errorf("%s changed (%d bytes, was %d)", name, len(got), len(b))
				}
			}
			if c.wrote != "" {
				if code, _, stderr := runCLI(t, "verify", "--source", filepath.Join(dir, "in.pt"), filepath.Join(dir, c.wrote)); code != 0 {
					t.Errorf("verify %s: exit %d: %s", c.wrote, code, stderr)
				}
			}
			for _, name := range c.forced {
				if got := readFile(t, filepath.Join(dir, name)); string(got) == old {
					t.Errorf("%s was not replaced with --force", name)
				}
			}
			if c.code != 0 {
				// A refusal writes nothing: no output, no manifest, no temporary file.
				for _, name := range []string{"o.safetensors", "m.safetensors", "in.safetensors", "outdir/in.safetensors"} {
					if _, ok := c.files[name]; ok {
						continue
					}
					if st, err := os.Stat(filepath.Join(dir, name)); err == nil && !st.IsDir() {
						t.Errorf("%s written by a refused conversion", name)
					}
				}
				if tmps, _ := filepath.Glob(filepath.Join(dir, ".*")); len(tmps) != 0 {
					t.Errorf("temporary files left: %v", tmps)
				}
			}
		})
	}
}

// TestUnreadableInput: a file that cannot be read is named with the reason, exits 1, and is not
// reported as a failure of the converter.
func TestUnreadableInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pt")
	good := "../../testdata/torch/mymodel.pt"
	cases := []struct {
		name   string
		args   []string
		stderr string
	}{
		{"convert", []string{"convert", missing, filepath.Join(dir, "o.safetensors")}, "cannot read INPUT " + missing + ": no such file or directory"},
		{"scan", []string{"scan", missing}, "cannot read INPUT " + missing + ": no such file or directory"},
		{"scan --json", []string{"scan", "--json", missing}, "cannot read INPUT " + missing},
		{"verify", []string{"verify", missing}, "cannot read FILE " + missing + ": no such file or directory"},
		{"verify --source", []string{"verify", "--source", missing, good}, "cannot read --source " + missing + ": no such file or directory"},
	}
	for _, c := range cases {
		code, stdout, stderr := runCLI(t, c.args...)
		if code != 1 || !strings.Contains(stderr, c.stderr) || strings.Contains(stderr, "internal") || stdout != "" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 1 and only %q", c.name, code, stdout, stderr, c.stderr)
		}
	}
}

// TestSplitFlags: flags may come anywhere among the arguments; a flag's value is never taken
// for an argument nor an argument for a value; "--" ends the flags.
func TestSplitFlags(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args       []string
		flags, pos []string
	}{
		{[]string{"in.pt", "out", "--force"}, []string{"--force"}, []string{"in.pt", "out"}},
		{[]string{"--force", "in.pt"}, []string{"--force"}, []string{"in.pt"}},
		{[]string{"in.pt", "--select", "a.b", "out"}, []string{"--select", "a.b"}, []string{"in.pt", "out"}},
		{[]string{"-select=a.b", "in.pt"}, []string{"-select=a.b"}, []string{"in.pt"}},
		{[]string{"--force=false", "in.pt"}, []string{"--force=false"}, []string{"in.pt"}},
		{[]string{"--select", "-x", "in.pt"}, []string{"--select", "-x"}, []string{"in.pt"}},
		{[]string{"in.pt", "--", "--force", "-"}, nil, []string{"in.pt", "--force", "-"}},
		{[]string{"--select", "--", "in.pt"}, []string{"--select", "--"}, []string{"in.pt"}},
		{[]string{"-", "out"}, nil, []string{"-", "out"}},
		{[]string{"--unknown", "in.pt"}, []string{"--unknown"}, []string{"in.pt"}},
		{[]string{"in.pt", "--select"}, []string{"--select"}, []string{"in.pt"}},
		{[]string{"in.pt", "-h"}, []string{"-h"}, []string{"in.pt"}},
	}
	for _, c := range cases {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.String("select", "", "")
		fs.Bool("force", false, "")
		flags, pos := splitFlags(fs, c.args)
		if !slices.Equal(flags, c.flags) || !slices.Equal(pos, c.pos) {
			t.Errorf("splitFlags(%q) = %q, %q; want %q, %q", c.args, flags, pos, c.flags, c.pos)
		}
	}
}

// TestFlagsAfterArguments runs commands with their flags last.
func TestFlagsAfterArguments(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src := "../../testdata/torch/training_checkpoint.pt"
	out := filepath.Join(dir, "out.safetensors")
	os.WriteFile(out, []byte("old"), 0o644)
	manifest := filepath.Join(dir, "m.json")
	if code, _, stderr := runCLI(t, "convert", src, out, "--force", "--manifest", manifest); code != 0 {
		t.Fatalf("convert with trailing flags: exit %d: %s", code, stderr)
	}
	var m struct{ Output struct{ Path string } }
	if err := json.Unmarshal(readFile(t, manifest), &m); err != nil || m.Output.Path != out {
		t.Fatalf("manifest output %q (%v); want %s", m.Output.Path, err, out)
	}
	if code, stdout, stderr := runCLI(t, "scan", src, "--json"); code != 0 || !json.Valid([]byte(stdout)) {
		t.Errorf("scan INPUT --json: exit %d, valid JSON %v: %s", code, json.Valid([]byte(stdout)), stderr)
	}
	if code, _, stderr := runCLI(t, "verify", out, "--source", src); code != 0 {
		t.Errorf("verify FILE --source: exit %d: %s", code, stderr)
	}
}

// TestUsage: -h prints the arguments, the output-name rule and the exit codes before the flag
// list, on stdout, with exit 0; a mistake prints one line and the command's synopsis, exit 2.
func TestUsage(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"convert", "-h"}, []string{"usage: converter convert [flags] INPUT [OUTPUT]", "pytorch_model.bin ->\nmodel.safetensors",
			"NAME.{bin,pt,pth,ckpt} -> NAME.safetensors", "directory", "Exit codes: 0", "3 refused as unsafe", "-force", "-manifest FILE", "-limit-max-tensors"}},
		{[]string{"convert", "in.pt", "--help"}, []string{"usage: converter convert [flags] INPUT [OUTPUT]"}},
		{[]string{"scan", "-h"}, []string{"usage: converter scan [flags] INPUT", "verdict", "Exit codes: 0", "-json", "-allow-global MODULE.NAME"}},
		{[]string{"verify", "-h"}, []string{"usage: converter verify [flags] FILE.safetensors", "Exit codes: 0", "-source INPUT"}},
	} {
		code, stdout, stderr := runCLI(t, c.args...)
		if code != 0 || stderr != "" {
			t.Errorf("%q: exit %d, stderr %q; want 0 and nothing", c.args, code, stderr)
		}
		for _, w := range c.want {
			if !strings.Contains(stdout, w) {
				t.Errorf("%q: help lacks %q:\n%s", c.args, w, stdout)
			}
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"convert"}, "converter convert: missing arguments\nusage: converter convert [flags] INPUT [OUTPUT]\n"},
		{[]string{"scan", "a.pt", "b.pt"}, "converter scan: unexpected arguments: b.pt\nusage: converter scan [flags] INPUT|DIR|s3://BUCKET/PREFIX\n"},
		{[]string{"verify", "--frobnicate", "x"}, "converter verify: flag provided but not defined: -frobnicate\nusage: converter verify"},
		{[]string{"convert", "a.pt", "--select"}, "converter convert: flag needs an argument: -select\n"},
	} {
		code, stdout, stderr := runCLI(t, c.args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, c.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and %q", c.args, code, stdout, stderr, c.want)
		}
	}
}

// TestAllowGlobalHint: a file refused only for unknown globals gets the exact --allow-global
// flags (normalized, deduplicated, sorted) that admit them, and those flags do admit them; a
// known-dangerous global, which no flag admits, gets no hint.
func TestAllowGlobalHint(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// Bare protocol-2 pickles holding a tuple of globals (foo.Bar twice; __builtin__ is
	// Python 2's builtins): parsed statically, never run.
	unknown := filepath.Join(dir, "unknown.pkl")
	os.WriteFile(unknown, []byte("\x80\x02(cfoo\nBar\ncbaz\nQux\ncfoo\nBar\nc__builtin__\nmystery\nt."), 0o644)
	dangerous := filepath.Join(dir, "dangerous.pkl")
	os.WriteFile(dangerous, []byte("\x80\x02cfoo\nBar\ncos\nsystem\n\x86."), 0o644)
	const hint = "; to admit the unknown globals as inert records: --allow-global baz.Qux --allow-global builtins.mystery --allow-global foo.Bar\n"
	allow := []string{"--allow-global", "baz.Qux", "--allow-global", "builtins.mystery", "--allow-global", "foo.Bar"}

	for _, verb := range [][]string{{"scan"}, {"scan", "--json"}, {"convert"}} {
		args := append(slices.Clone(verb), unknown)
		if verb[0] == "convert" {
			args = append(args, filepath.Join(dir, "out.safetensors"))
		}
		code, _, stderr := runCLI(t, args...)
		if code != 3 || !strings.HasSuffix(stderr, hint) {
			t.Errorf("%q: exit %d, stderr %q; want 3 ending with %q", verb, code, stderr, hint)
		}
		// With the flags the globals are inert records: what is left is that a bare pickle
		// is no checkpoint.
		code, _, stderr = runCLI(t, append(slices.Clone(args), allow...)...)
		if code != 4 || !strings.Contains(stderr, "unsupported") {
			t.Errorf("%q with the hinted flags: exit %d, stderr %q; want 4, unsupported", verb, code, stderr)
		}

		args[len(verb)] = dangerous
		code, _, stderr = runCLI(t, args...)
		if code != 3 || strings.Contains(stderr, "--allow-global") {
			t.Errorf("%q of a dangerous global: exit %d, stderr %q; want 3 without a hint", verb, code, stderr)
		}
	}
}

// report is the part of the manifest schema the tests below read.
type report struct {
	ConverterVersion string `json:"converter_version"`
	Source           struct {
		SHA256    string `json:"sha256"`
		Container string `json:"container"`
	} `json:"source"`
	Verdict string `json:"verdict"`
	Error   *struct {
		Type string `json:"type"`
	} `json:"error"`
}

// TestScanJSON: scan --json records the source's SHA-256 as a conversion's manifest does, the
// converter version of this binary, and the verdict unsupported for the containers refused on
// purpose.
func TestScanJSON(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src := "../../testdata/torch/mymodel.pt"
	sum := sha256.Sum256(readFile(t, src))
	manifest := filepath.Join(dir, "m.json")
	if code, _, stderr := runCLI(t, "convert", "--manifest", manifest, src, filepath.Join(dir, "o.safetensors")); code != 0 {
		t.Fatalf("convert: exit %d: %s", code, stderr)
	}
	code, stdout, stderr := runCLI(t, "scan", "--json", src)
	if code != 0 {
		t.Fatalf("scan: exit %d: %s", code, stderr)
	}
	if _, text, _ := runCLI(t, "scan", src); !strings.Contains(text, fmt.Sprintf("sha256:    %x\n", sum)) {
		t.Errorf("scan does not print the source's sha256:\n%s", text)
	}
	for what, b := range map[string][]byte{"scan --json": []byte(stdout), "--manifest": readFile(t, manifest)} {
		var m report
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if m.Source.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: source.sha256 %q; want %x", what, m.Source.SHA256, sum)
		}
		if m.ConverterVersion != buildinfo.Version() {
			t.Errorf("%s: converter_version %q; want %q", what, m.ConverterVersion, buildinfo.Version())
		}
	}

	// A legacy tar, a 7z and a TorchScript archive, each holding a harmless pickle.
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	tw.WriteHeader(&tar.Header{Name: "pickle", Mode: 0o644, Size: 3})
	tw.Write([]byte("N.\n"))
	tw.Close()
	var ts bytes.Buffer
	zw := zip.NewWriter(&ts)
	for _, name := range []string{"m/data.pkl", "m/constants.pkl"} {
		w, _ := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
		w.Write([]byte("\x80\x02).")) // an empty tuple
	}
	w, _ := zw.CreateHeader(&zip.FileHeader{Name: "m/code/__torch__.py", Method: zip.Store})
	w.Write([]byte("def forward(self): pass\n"))
	zw.Close()
	for _, c := range []struct {
		name, container string
		b               []byte
	}{
		{"old.tar", "tar", tarball.Bytes()},
		{"model.7z", "7z", append([]byte("7z\xbc\xaf\x27\x1c\x00\x04"), make([]byte, 24)...)},
		{"scripted.pt", "torchscript", ts.Bytes()},
	} {
		name := c.name
		path := filepath.Join(dir, name)
		os.WriteFile(path, c.b, 0o644)
		code, stdout, stderr := runCLI(t, "scan", "--json", path)
		var m report
		if err := json.Unmarshal([]byte(stdout), &m); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if m.Source.Container != c.container {
			t.Errorf("%s: container %q; want %q", name, m.Source.Container, c.container)
		}
		if code != 4 || m.Verdict != "unsupported" || m.Error == nil || m.Error.Type != "unsupported" {
			t.Errorf("%s: exit %d, verdict %q, error %+v (stderr %q); want 4, unsupported", name, code, m.Verdict, m.Error, stderr)
		}
	}
}

// TestVersion: `converter version` and the manifests name the build of this binary.
func TestVersion(t *testing.T) {
	t.Parallel()
	code, stdout, _ := runCLI(t, "version")
	if want := "converter " + buildinfo.Version() + "\n"; code != 0 || stdout != want {
		t.Errorf("version: exit %d, %q; want %q", code, stdout, want)
	}
	if convert.Version != buildinfo.Version() {
		t.Errorf("convert.Version %q; want the build's %q", convert.Version, buildinfo.Version())
	}
}

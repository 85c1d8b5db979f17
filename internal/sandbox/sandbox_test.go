//go:build linux

package sandbox

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/synth"
	"github.com/ptsafe/converter/internal/testkit"
)

// childExe is the converter binary, built with the sandboxtest tag, that the tests start as the
// sandbox child (and as the CLI).
var childExe string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sandbox-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	childExe = filepath.Join(dir, "converter")
	// -buildvcs=false: go test stamps no VCS revision into this test binary, so the child must
	// not either, or the manifests' converter_version would differ between the two sides.
	build := exec.Command("go", "build", "-buildvcs=false", "-tags", "sandboxtest", "-o", childExe, "github.com/ptsafe/converter/cmd/converter")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build converter:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var fixtures = testkit.FixtureDir() + string(filepath.Separator)

// systemPickle is the classic payload: a protocol-2 pickle that calls os.system("id") when
// Python loads it (GLOBAL 'os system', the argument tuple, REDUCE). The tests only parse it.
const systemPickle = "\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R."

// malicious writes systemPickle to dir as a bare pickle file.
func malicious(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "malicious.pkl")
	if err := os.WriteFile(p, []byte(systemPickle), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func testRunner() *Runner { return &Runner{Config: Config{Exe: childExe}} }

// truncated writes the first half of a good fixture to dir, a zip without its central directory.
func truncated(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(fixtures + "dtypes.pt")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "truncated.pt")
	if err := os.WriteFile(p, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func manifestJSON(t *testing.T, m any) string {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// deflatedViews writes to dir the views.pt fixture with every record deflated: its strided
// views need random access, so converting it inflates records into scratch files.
func deflatedViews(t *testing.T, dir string) string {
	t.Helper()
	es := testkit.FixtureEntries(t, "views.pt")
	for i := range es {
		es[i].Method = zip.Deflate
	}
	p := filepath.Join(dir, "views-deflated.pt")
	if err := os.WriteFile(p, testkit.WriteZip(t, es), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConvertMatchesInProcess converts torch fixtures in a child and in-process and requires
// the same bytes and manifest; the deflated one has the child inflate records in its scratch
// directory, the one path it may create files in, which must be gone afterwards.
func TestConvertMatchesInProcess(t *testing.T) {
	deflated := deflatedViews(t, t.TempDir())
	for _, src := range []string{fixtures + "dtypes.pt", fixtures + "module_state_dict.pt", fixtures + "module_state_dict_legacy_p2.pt", deflated} {
		t.Run(filepath.Base(src), func(t *testing.T) {
			dir := t.TempDir()
			opts := convert.Options{Limits: limits.Default()}
			want, err := convert.File(context.Background(), src, filepath.Join(dir, "in.safetensors"), opts)
			if err != nil {
				t.Fatalf("in-process: %v", err)
			}
			got, err := testRunner().Convert(context.Background(), src, filepath.Join(dir, "out.safetensors"), opts)
			if err != nil {
				t.Fatalf("sandbox: %v", err)
			}
			wantBytes, _ := os.ReadFile(filepath.Join(dir, "in.safetensors"))
			gotBytes, err := os.ReadFile(filepath.Join(dir, "out.safetensors"))
			if err != nil || !bytes.Equal(gotBytes, wantBytes) {
				t.Fatalf("sandbox output differs from in-process output (%d vs %d bytes, err %v)", len(gotBytes), len(wantBytes), err)
			}
			got.Output.Path = want.Output.Path
			if g, w := manifestJSON(t, got), manifestJSON(t, want); g != w {
				t.Errorf("manifest:\ngot  %s\nwant %s", g, w)
			}
			if len(got.Globals) == 0 {
				t.Errorf("manifest lists no globals")
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 2 {
				t.Errorf("output directory holds %d entries, want the two outputs only", len(ents))
			}
		})
	}
}

// TestVerifyInSandbox verifies converted files against their sources in a child, among them
// a deflated checkpoint with strided views (its records are inflated into the child's scratch
// directory, which must be gone afterwards), and a tampered file, which must be reported.
func TestVerifyInSandbox(t *testing.T) {
	dir := t.TempDir()
	deflated := deflatedViews(t, dir)
	t.Setenv("TMPDIR", t.TempDir()) // where the runner makes the child's scratch directory
	for _, src := range []string{fixtures + "dtypes.pt", deflated} {
		out := filepath.Join(dir, filepath.Base(src)+".safetensors")
		if _, err := convert.File(context.Background(), src, out, convert.Options{}); err != nil {
			t.Fatalf("convert %s: %v", src, err)
		}
		want, err := convert.Verify(context.Background(), out, src, convert.Options{})
		if err != nil {
			t.Fatalf("in-process verify %s: %v", src, err)
		}
		got, err := testRunner().Verify(context.Background(), out, src, convert.Options{})
		if err != nil {
			t.Fatalf("sandbox verify %s: %v", src, err)
		}
		if g, w := manifestJSON(t, got), manifestJSON(t, want); g != w {
			t.Errorf("%s: report\ngot  %s\nwant %s", src, g, w)
		}
		if left, _ := os.ReadDir(os.Getenv("TMPDIR")); len(left) != 0 {
			t.Errorf("%s: the scratch directory is left behind: %s", src, left[0].Name())
		}
	}
	out := filepath.Join(dir, "dtypes.pt.safetensors")
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 1
	if err := os.WriteFile(out, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = testRunner().Verify(context.Background(), out, fixtures+"dtypes.pt", convert.Options{})
	if fault.KindOf(err) != fault.Malformed || !strings.Contains(err.Error(), "differs from the source") {
		t.Errorf("sandbox verify of a tampered file: %v; want a malformed fault naming the tensor", err)
	}
}

// TestErrorsMatchInProcess checks that an input's error comes back from the child with the same
// kind, text and location as in-process, with the same manifest of the refused file (none
// when it was not judged), and that no output is left.
func TestErrorsMatchInProcess(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, src string
		kind      fault.Kind
	}{
		{"dangerous globals", malicious(t, dir), fault.Unsafe},
		{"truncated zip", truncated(t, dir), fault.Malformed},
		{"missing file", filepath.Join(dir, "nope.pt"), fault.Internal},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			opts := convert.Options{}
			wantM, wantErr := convert.File(context.Background(), c.src, filepath.Join(out, "in.safetensors"), opts)
			gotM, err := testRunner().Convert(context.Background(), c.src, filepath.Join(out, "out.safetensors"), opts)
			if err == nil {
				t.Fatal("sandbox: no error")
			}
			if (wantM == nil) != (c.kind == fault.Internal) {
				t.Errorf("in-process manifest %+v; want one exactly when the file was judged", wantM)
			}
			if g, w := manifestJSON(t, gotM), manifestJSON(t, wantM); g != w {
				t.Errorf("manifest:\ngot  %s\nwant %s", g, w)
			}
			if got := fault.KindOf(err); got != c.kind {
				t.Errorf("kind: got %v, want %v (%v)", got, c.kind, err)
			}
			if wantErr == nil || err.Error() != wantErr.Error() {
				t.Errorf("text:\ngot  %v\nwant %v", err, wantErr)
			}
			var got, want *fault.Error
			if errors.As(err, &got) && errors.As(wantErr, &want) && (got.Entry != want.Entry || got.Offset != want.Offset || got.Msg != want.Msg) {
				t.Errorf("fault: got %+v, want %+v", got, want)
			}
			assertEmpty(t, out)
		})
	}
}

func TestScanVerdicts(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, src, verdict string
	}{
		{"good zip", fixtures + "dtypes.pt", "safe"},
		{"good legacy", fixtures + "module_state_dict_legacy_p2.pt", "safe"},
		{"dangerous globals", malicious(t, dir), "unsafe"},
		{"truncated zip", truncated(t, dir), "malformed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want, wantErr := convert.Scan(context.Background(), c.src, convert.Options{})
			if want == nil {
				t.Fatalf("in-process: %v", wantErr)
			}
			got, err := testRunner().Scan(context.Background(), c.src, convert.Options{})
			if got == nil {
				t.Fatalf("sandbox: %v", err)
			}
			if fmt.Sprint(err) != fmt.Sprint(wantErr) || fault.KindOf(err) != fault.KindOf(wantErr) {
				t.Errorf("error: got %v, want %v", err, wantErr)
			}
			if got.Verdict != c.verdict {
				t.Errorf("verdict: got %q, want %q", got.Verdict, c.verdict)
			}
			if g, w := manifestJSON(t, got), manifestJSON(t, want); g != w {
				t.Errorf("manifest:\ngot  %s\nwant %s", g, w)
			}
		})
	}
}

// TestChildFailures drives the test-only operations into each limit and crash.
func TestChildFailures(t *testing.T) {
	cases := []struct {
		name   string
		op     string
		arg    string
		cfg    Config
		lim    limits.Limits
		kind   fault.Kind
		substr string
	}{
		{"address space", "selftest-alloc", "", Config{AddressSpace: 512 << 20}, limits.Limits{}, fault.Limit, "RLIMIT_AS"},
		{"CPU time", "selftest-spin", "", Config{CPUTime: time.Second}, limits.Limits{Timeout: time.Minute}, fault.Limit, "RLIMIT_CPU"},
		{"wall clock", "selftest-sleep", "", Config{WallGrace: 100 * time.Millisecond}, limits.Limits{Timeout: 500 * time.Millisecond}, fault.Limit, "wall-clock limit"},
		{"SIGABRT", "selftest-signal", fmt.Sprint(int(syscall.SIGABRT)), Config{}, limits.Limits{}, fault.Internal, "sandbox child crashed (exit status 2): SIGABRT"},
		{"SIGSEGV", "selftest-signal", fmt.Sprint(int(syscall.SIGSEGV)), Config{}, limits.Limits{}, fault.Internal, "sandbox child crashed"},
		{"SIGKILL", "selftest-signal", fmt.Sprint(int(syscall.SIGKILL)), Config{}, limits.Limits{}, fault.Internal, "killed by SIGKILL"},
		{"unknown operation", "no-such-op", "", Config{}, limits.Limits{}, fault.Internal, "unknown operation"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.cfg.Exe = childExe
			r := &Runner{Config: c.cfg}
			resp, err := r.run(context.Background(), &request{Op: c.op, Arg: c.arg, Options: convert.Options{Limits: c.lim}})
			if err == nil && resp.Error != nil {
				err = resp.Error.decode()
			}
			if err == nil {
				t.Fatal("no error")
			}
			if got := fault.KindOf(err); got != c.kind {
				t.Errorf("kind: got %v, want %v (%v)", got, c.kind, err)
			}
			if !strings.Contains(err.Error(), c.substr) {
				t.Errorf("error %q does not mention %q", err, c.substr)
			}
			t.Logf("%s: %v", c.name, err)
		})
	}
}

func TestCancelKillsChild(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	_, err := testRunner().run(ctx, &request{Op: "selftest-sleep"})
	if got := fault.KindOf(err); got != fault.Canceled || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v (kind %v), want a canceled error", err, got)
	}
}

// TestNoPartialOutput kills a child after it wrote part of its output and a scratch file: the
// parent must leave the folder as it found it.
func TestNoPartialOutput(t *testing.T) {
	dir := t.TempDir()
	keep := filepath.Join(dir, ".model.safetensors.unrelated.tmp.keep")
	if err := os.WriteFile(keep, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := testRunner().withOutput(context.Background(), "selftest-partial", fixtures+"dtypes.pt", filepath.Join(dir, "model.safetensors"), convert.Options{},
		func(*response) error { t.Fatal("the child answered"); return nil })
	if fault.KindOf(err) != fault.Internal || !strings.Contains(err.Error(), "SIGKILL") {
		t.Fatalf("got %v, want an internal error naming SIGKILL", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != filepath.Base(keep) {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("folder holds %v, want only %s", names, filepath.Base(keep))
	}
}

func TestSeccompDeniesEscape(t *testing.T) {
	resp, err := testRunner().run(context.Background(), &request{Op: "selftest-escape"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status.Seccomp != "filter" {
		t.Skipf("seccomp unavailable here (%s): nothing to test", resp.Status.Seccomp)
	}
	want := map[string]string{"exec": "EPERM", "dial": "EPERM", "fork": "EPERM", "socket": "EPERM", "threads": "ok"}
	for k, w := range want {
		if got := resp.Probe[k]; got != w {
			t.Errorf("%s: got %q, want %q", k, got, w)
		}
	}
	t.Logf("status %+v, probe %v", resp.Status, resp.Probe)
}

// TestLandlockConfinesFiles checks, from inside a child set up as for a conversion, that it
// reads and writes only through the descriptors it was given and opens no path at all but
// files it creates in its private scratch directory: not its own source or output by name,
// nothing beside the source, nothing in or below the output's directory (an authorized_keys
// file there stays as it was), nothing in /tmp.
func TestLandlockConfinesFiles(t *testing.T) {
	in, out := t.TempDir(), t.TempDir()
	src, secret := filepath.Join(in, "model.pt"), filepath.Join(in, "secret")
	keys := filepath.Join(out, ".ssh", "authorized_keys")
	if err := os.Mkdir(filepath.Dir(keys), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{src, secret, keys} {
		if err := os.WriteFile(p, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var resp *response
	err := testRunner().withOutput(context.Background(), "selftest-files", src, filepath.Join(out, "model.safetensors"), convert.Options{},
		func(r *response) error { resp = r; return errors.New("probe only") })
	if resp == nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(resp.Status.Landlock, "abi ") {
		t.Skipf("Landlock unavailable here (%s): nothing to test", resp.Status.Landlock)
	}
	want := map[string]string{
		"read source descriptor":        "ok",
		"write output descriptor":       "ok",
		"read source path":              "EACCES",
		"write source path":             "EACCES",
		"read beside source":            "EACCES",
		"list source directory":         "EACCES",
		"write beside source":           "EACCES",
		"read output path":              "EACCES",
		"write output path":             "EACCES",
		"write in output directory":     "EACCES",
		"append below output directory": "EACCES",
		"write in /tmp":                 "EACCES",
		"read /etc/passwd":              "EACCES",
		"create in scratch":             "ok",
		"write in scratch":              "ok",
		"truncate in scratch":           "ok",
		"remove in scratch":             "ok",
		"list scratch":                  "EACCES",
		"mkdir in scratch":              "EACCES",
		"symlink in scratch":            "EACCES",
	}
	for k, w := range want {
		if got := resp.Probe[k]; got != w {
			t.Errorf("%s: got %q, want %q", k, got, w)
		}
	}
	for _, p := range []string{src, keys} {
		if b, err := os.ReadFile(p); err != nil || string(b) != "data" {
			t.Errorf("%s after the child: %q, %v; want it untouched", p, b, err)
		}
	}
	if ents, _ := os.ReadDir(out); len(ents) != 1 {
		t.Errorf("output directory holds %d entries after a refused answer, want only .ssh", len(ents))
	}
	t.Logf("status %+v", resp.Status)
}

// TestNoInheritedDescriptors opens a descriptor without close-on-exec, as a careless parent
// might, and checks that the child does not hold it when it reads input, while it does hold the
// file it was given, as fd 3.
func TestNoInheritedDescriptors(t *testing.T) {
	dir := t.TempDir()
	p, given := filepath.Join(dir, "secret"), filepath.Join(dir, "given")
	for _, f := range []string{p, given} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := syscall.Open(p, syscall.O_RDONLY, 0) // no O_CLOEXEC: inherited across exec
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	g, err := os.Open(given)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	resp, err := testRunner().run(context.Background(), &request{Op: "selftest-fds", Files: []string{"given"}}, g)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Probe) < 4 {
		t.Fatalf("child saw %d open descriptors (%v), want at least stdin, stdout, stderr and fd 3", len(resp.Probe), resp.Probe)
	}
	if resp.Probe["3"] != given {
		t.Errorf("child's fd 3 -> %q, want the given file %s", resp.Probe["3"], given)
	}
	for n, target := range resp.Probe {
		if target == p || strings.HasPrefix(target, "socket:") {
			t.Errorf("child holds descriptor %s -> %s", n, target)
		}
	}
	if resp.Status.ClosedFDs == 0 {
		t.Errorf("child closed no inherited descriptors, want the leaked one closed")
	}
}

func TestProbe(t *testing.T) {
	st, err := testRunner().Probe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !st.Rlimits {
		t.Errorf("rlimits not applied: %+v", st)
	}
	t.Logf("confinement here: %+v", st)
}

func TestWireErrorRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		err  error
	}{
		{"located", fault.At(fault.Unsafe, "archive/data.pkl", 48, "global %s is known-dangerous", "os.system")},
		{"no offset", fault.New(fault.Malformed, "", "not a checkpoint")},
		{"wrapped cause", fault.Wrap(fault.Limit, "pickle#1", errors.New("too deep"), "nesting %d", 1001)},
		{"wrapped fault", fmt.Errorf("open: %w", fault.New(fault.Unsupported, "x", "torchscript"))},
		{"context", fmt.Errorf("copy: %w", context.Canceled)},
		{"plain", errors.New("disk on fire")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := json.Marshal(encodeError(c.err))
			if err != nil {
				t.Fatal(err)
			}
			var w wireError
			if err := json.Unmarshal(b, &w); err != nil {
				t.Fatal(err)
			}
			got := w.decode()
			if got.Error() != c.err.Error() {
				t.Errorf("text: got %q, want %q", got, c.err)
			}
			if g, w := fault.KindOf(got), fault.KindOf(c.err); g != w {
				t.Errorf("kind: got %v, want %v", g, w)
			}
			if errors.Is(got, context.Canceled) != errors.Is(c.err, context.Canceled) {
				t.Errorf("errors.Is(context.Canceled) differs")
			}
		})
	}
}

// TestCLIExitCodes runs the built binary as a user would, through the sandbox (the default) and
// in-process, and checks the exit code, the one-line error and that no output is left.
func TestCLIExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad, malicious := truncated(t, dir), malicious(t, dir)
	cases := []struct {
		name string
		args []string
		code int
	}{
		{"convert good", []string{"convert", fixtures + "dtypes.pt"}, 0},
		{"convert malicious", []string{"convert", malicious}, 3},
		{"convert truncated", []string{"convert", bad}, 4},
		{"scan good", []string{"scan", fixtures + "module_state_dict.pt"}, 0},
		{"scan malicious", []string{"scan", malicious}, 3},
		{"scan truncated", []string{"scan", bad}, 4},
	}
	for _, c := range cases {
		for _, sandboxed := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/sandbox=%v", c.name, sandboxed), func(t *testing.T) {
				out := t.TempDir()
				args := append([]string{}, c.args...)
				if c.args[0] == "convert" {
					args = append(args, filepath.Join(out, "model.safetensors"))
				}
				cmd := exec.Command(childExe, args...)
				cmd.Env = append(os.Environ(), fmt.Sprintf("CONVERTER_SANDBOX=%v", sandboxed))
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				err := cmd.Run()
				code := 0
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					code = ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				if code != c.code {
					t.Errorf("exit code: got %d, want %d; stderr %q", code, c.code, stderr.String())
				}
				if c.args[0] == "convert" {
					if lines := strings.Count(stderr.String(), "\n"); code != 0 && lines != 1 {
						t.Errorf("stderr has %d lines, want 1: %q", lines, stderr.String())
					}
					if code != 0 {
						assertEmpty(t, out)
					} else if _, err := os.Stat(filepath.Join(out, "model.safetensors")); err != nil {
						t.Errorf("no output: %v", err)
					}
				}
			})
		}
	}
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "in.") { // the in-process run's own output, if any
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

func TestDegradedLoggedOnce(t *testing.T) {
	var buf bytes.Buffer
	r := &Runner{Config: Config{Logger: slog.New(slog.NewTextHandler(&buf, nil))}}
	r.checkStatus(Status{Rlimits: true, Seccomp: "filter", TSync: true, Landlock: "abi 7"})
	if buf.Len() != 0 {
		t.Fatalf("full confinement logged: %s", buf.String())
	}
	for range 3 {
		r.checkStatus(Status{Rlimits: true, Seccomp: "unsupported: the kernel has no seccomp"})
	}
	if got := strings.Count(buf.String(), "\n"); got != 1 || !strings.Contains(buf.String(), "no seccomp") {
		t.Errorf("got %d log lines, want 1 naming the reason: %s", got, buf.String())
	}
	if why, degraded := (Status{Rlimits: true, Seccomp: "filter", Landlock: "unsupported: ENOSYS"}).Degraded(); !degraded || !strings.Contains(why, "landlock") {
		t.Errorf("a child without Landlock: Degraded() = %q, %v; want degraded, naming landlock", why, degraded)
	}
}

// TestNoRecursion runs a child whose executable does not dispatch ChildCommand and itself tries
// to start a child: the guard must stop it.
func TestNoRecursion(t *testing.T) {
	t.Setenv("CONVERTER_SANDBOX_CHILD", "1")
	_, err := testRunner().Scan(context.Background(), fixtures+"dtypes.pt", convert.Options{})
	if err == nil || !strings.Contains(err.Error(), "inside a sandbox child") {
		t.Fatalf("got %v, want the recursion guard", err)
	}
}

// TestAnswerBounded has a child write far more than its limits allow on its stdout: the parent
// stops reading at the limit, refuses the answer as over a limit and ends the child.
func TestAnswerBounded(t *testing.T) {
	lim := limits.Limits{MaxHeaderBytes: 1}
	_, err := testRunner().run(context.Background(), &request{Op: "selftest-flood", Options: convert.Options{Limits: lim}})
	want := fmt.Sprintf("answer exceeds %d bytes", responseLimit(lim.OrDefault()))
	if fault.KindOf(err) != fault.Limit || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want a limit fault saying %q", err, want)
	}
}

// TestLongAnswerKeepsVerdict scans and converts a pickle that names os.system 300,000 times:
// its scan manifest is longer than the answer a child may give, so the child leaves the lists
// out, but the file is still unsafe, as in-process.
func TestLongAnswerKeepsVerdict(t *testing.T) {
	const n = 300_000
	b := []byte("\x80\x02")
	for range n {
		b = append(b, "cos\nsystem\n0"...) // GLOBAL, POP
	}
	b = append(b, "N."...)
	dir := t.TempDir()
	src := filepath.Join(dir, "many.pkl")
	if err := os.WriteFile(src, b, 0o644); err != nil {
		t.Fatal(err)
	}
	opts := convert.Options{Limits: limits.Limits{MaxHeaderBytes: 1000}}
	want, err := convert.Scan(context.Background(), src, opts)
	if want == nil || want.Verdict != "unsafe" || len(want.Globals) != n || len(manifestJSON(t, want)) <= int(responseLimit(opts.Limits.OrDefault())) {
		t.Fatalf("in-process scan: %.200v; want an unsafe verdict with %d globals, longer than an answer may be", err, n)
	}
	got, err := testRunner().Scan(context.Background(), src, opts)
	if got == nil || fault.KindOf(err) != fault.Unsafe {
		t.Fatalf("sandbox scan: %.200v; want a manifest and the unsafe fault", err)
	}
	if got.Verdict != "unsafe" || got.Error == nil || got.Error.Type != fault.Unsafe || len(got.Globals) != 0 {
		t.Errorf("sandbox scan: verdict %q, error %+v, %d globals; want unsafe, an unsafe error, the list left out", got.Verdict, got.Error, len(got.Globals))
	}
	_, err = testRunner().Convert(context.Background(), src, filepath.Join(dir, "out.safetensors"), opts)
	if fault.KindOf(err) != fault.Unsafe || !strings.Contains(err.Error(), "global os.system is known-dangerous") {
		t.Errorf("sandbox convert: %.200v; want the unsafe fault", err)
	}
}

// TestWriteAnswerLimit checks the child's side of the bound on a successful answer: too long
// to send whole, it becomes a limit error rather than a verdict of safe without its tensors.
func TestWriteAnswerLimit(t *testing.T) {
	m := &convert.Manifest{Verdict: "safe", Tensors: make([]convert.Tensor, 1000)}
	for i := range m.Tensors {
		m.Tensors[i] = convert.Tensor{Name: fmt.Sprintf("layers.%d.weight", i), DType: "F32", Shape: []int64{4, 4}}
	}
	var buf bytes.Buffer
	if err := writeAnswer(&buf, &response{Manifest: m}, 10_000); err != nil {
		t.Fatal(err)
	}
	if buf.Len() > 10_000 {
		t.Errorf("answer of %d bytes, want at most 10000", buf.Len())
	}
	resp, err := readAnswer(&buf, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Error == nil || fault.KindOf(resp.Error.decode()) != fault.Limit || len(resp.Manifest.Tensors) != 0 {
		t.Errorf("got error %+v and %d tensors; want a limit error and no tensors", resp.Error, len(resp.Manifest.Tensors))
	}
	buf.Reset()
	if err := writeAnswer(&buf, &response{Manifest: m}, 1<<20); err != nil {
		t.Fatal(err)
	}
	if resp, err := readAnswer(&buf, 1<<20); err != nil || len(resp.Manifest.Tensors) != len(m.Tensors) {
		t.Errorf("an answer within the limit lost its tensors (%v)", err)
	}

	long := fault.At(fault.Unsafe, "archive/data.pkl", 2, "global os.system is known-dangerous (also: %s)", strings.Repeat("os.system@1, ", 20_000))
	buf.Reset()
	if err := writeAnswer(&buf, &response{Error: encodeError(long)}, 200_000); err != nil {
		t.Fatal(err)
	}
	n := buf.Len()
	resp, err = readAnswer(&buf, 200_000)
	if err != nil {
		t.Fatal(err)
	}
	got := resp.Error.decode()
	var fe *fault.Error
	if n > 200_000 || !errors.As(got, &fe) || fe.Kind != fault.Unsafe || fe.Entry != long.Entry || fe.Offset != long.Offset || !strings.HasSuffix(got.Error(), "(shortened)") {
		t.Errorf("a long unsafe error: %d bytes, decoded %.100v; want it shortened, still unsafe at %s@%d", n, got, long.Entry, long.Offset)
	}
}

// leafCheckpoint writes to path the dtypes.pt fixture with one more entry in its state dict:
// "blob", a string of n bytes, so that its data.pkl is n plus about 1 KB long. The zip is
// streamed, so the test's memory does not grow with n.
func leafCheckpoint(t *testing.T, path string, n int64) {
	t.Helper()
	head := binary.LittleEndian.AppendUint32([]byte("X"), uint32(n))
	fill := bytes.Repeat([]byte("a"), 1<<20)
	blobCheckpoint(t, path, int64(len(head))+n, func(w io.Writer) error {
		if _, err := w.Write(head); err != nil {
			return err
		}
		for left := n; left > 0; left -= int64(len(fill)) {
			if _, err := w.Write(fill[:min(left, int64(len(fill)))]); err != nil {
				return err
			}
		}
		return nil
	})
}

// dictsCheckpoint writes to path the dtypes.pt fixture with one more entry in its state dict:
// "blob", a list of n empty dicts, the value that costs the parser most memory per object (a
// Go map each), so that its pickle creates n + dtypesObjects objects.
func dictsCheckpoint(t *testing.T, path string, n int) {
	t.Helper()
	batch := append(append([]byte("("), bytes.Repeat([]byte("}"), 1000)...), 'e')
	blobCheckpoint(t, path, int64(1+n/1000*len(batch)+n%1000+2), func(w io.Writer) error {
		if _, err := w.Write([]byte("]")); err != nil {
			return err
		}
		for range n / 1000 {
			if _, err := w.Write(batch); err != nil {
				return err
			}
		}
		_, err := w.Write(append(append([]byte("("), bytes.Repeat([]byte("}"), n%1000)...), 'e'))
		return err
	})
}

// dtypesObjects is the number of objects dictsCheckpoint's pickle creates besides the dicts:
// the dtypes.pt fixture's 204, the key "blob" and the list.
const dtypesObjects = 204 + 2

// blobCheckpoint writes to path the dtypes.pt fixture with one more entry in its state dict,
// "blob", whose value blob writes as n bytes of pickle. The zip is streamed, so the test's
// memory does not grow with n.
func blobCheckpoint(t *testing.T, path string, n int64, blob func(io.Writer) error) {
	t.Helper()
	entries := testkit.FixtureEntries(t, "dtypes.pt")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw := zip.NewWriter(f)
	for _, e := range entries {
		if !strings.HasSuffix(e.Name, "/data.pkl") {
			w, err := zw.CreateHeader(&zip.FileHeader{Name: e.Name, Method: zip.Store})
			if err == nil {
				_, err = w.Write(e.Data)
			}
			if err != nil {
				t.Fatal(err)
			}
			continue
		}
		// The fixture's pickle ends with SETITEMS, STOP: the dict is on the stack, and one more
		// SETITEM before STOP adds the entry.
		head := append(bytes.TrimSuffix(e.Data, []byte(".")), "X\x04\x00\x00\x00blob"...)
		tail := []byte("s.")
		body := func(w io.Writer) error {
			if _, err := w.Write(head); err != nil {
				return err
			}
			if err := blob(w); err != nil {
				return err
			}
			_, err := w.Write(tail)
			return err
		}
		crc := crc32.NewIEEE()
		if err := body(crc); err != nil {
			t.Fatal(err)
		}
		size := uint64(int64(len(head)) + n + int64(len(tail)))
		w, err := zw.CreateRaw(&zip.FileHeader{Name: e.Name, Method: zip.Store, CRC32: crc.Sum32(), CompressedSize64: size, UncompressedSize64: size})
		if err == nil {
			err = body(w)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestPickleNearLimitConverts converts, in a child confined by default (its address space
// following the limits), a checkpoint whose data.pkl is 64 KiB under MaxPickleBytes: a string
// leaf, which the parser holds as the stream and as the decoded value. The documented default
// (512 MiB, with every other limit at its default) needs about 3 GB of memory (13 s), so it
// is skipped in -short mode; a scaled-down limit, with a walk limit small enough
// that the pickle's share of the address space is what is tested, always runs.
func TestPickleNearLimitConverts(t *testing.T) {
	cases := []limits.Limits{{MaxPickleBytes: 128 << 20, MaxWalkNodes: 1000}, limits.Default()}
	for _, lim := range cases {
		t.Run(fmt.Sprintf("MaxPickleBytes=%d", lim.MaxPickleBytes), func(t *testing.T) {
			if lim.MaxPickleBytes > 128<<20 && testing.Short() {
				t.Skip("needs about 3 GB of memory; runs without -short")
			}
			dir := t.TempDir()
			src := filepath.Join(dir, "big.pt")
			leafCheckpoint(t, src, lim.MaxPickleBytes-64<<10)
			opts := convert.Options{Limits: lim}
			m, err := testRunner().Convert(context.Background(), src, filepath.Join(dir, "big.safetensors"), opts)
			if err != nil {
				t.Fatalf("convert: %v (RLIMIT_AS %d)", err, addressSpace(opts.Limits.OrDefault()))
			}
			if len(m.Tensors) != 11 || len(m.Dropped) != 1 || m.Dropped[0].Path != "blob" {
				t.Errorf("got %d tensors and dropped %+v; want the fixture's 11 tensors and the blob dropped", len(m.Tensors), m.Dropped)
			}
		})
	}
}

// TestAddressSpaceFollowsLimits checks the child's RLIMIT_AS: it grows with the pickle, object
// and walk limits, saturates instead of overflowing, and yields to an explicit
// Config.AddressSpace.
func TestAddressSpaceFollowsLimits(t *testing.T) {
	def := limits.Default()
	for _, tc := range []struct {
		name string
		more func(*limits.Limits)
		want int64
	}{
		{"1 GiB more pickle", func(l *limits.Limits) { l.MaxPickleBytes += 1 << 30 }, 8 << 30},
		{"a million more objects", func(l *limits.Limits) { l.MaxObjects += 1_000_000 }, 704_000_000},
		{"a million more walk nodes", func(l *limits.Limits) { l.MaxWalkNodes += 1_000_000 }, 256_000_000},
	} {
		l := def
		tc.more(&l)
		if got := addressSpace(l) - addressSpace(def); got != tc.want {
			t.Errorf("%s: %d more bytes of address space, want %d", tc.name, got, tc.want)
		}
	}
	huge := def
	huge.MaxObjects = math.MaxInt
	if got := addressSpace(huge); got != 1<<62 {
		t.Errorf("an object limit of MaxInt: address space %d, want it saturated at 2^62", got)
	}
	if got := childLimits(Config{}, def, time.Minute).AddressSpace; got != uint64(addressSpace(def)) {
		t.Errorf("default config: RLIMIT_AS %d, want %d", got, addressSpace(def))
	}
	if got := childLimits(Config{AddressSpace: 1 << 30}, def, time.Minute).AddressSpace; got != 1<<30 {
		t.Errorf("configured 1 GiB: RLIMIT_AS %d", got)
	}
}

// TestObjectsAtLimitConvert converts, in a child confined by default, a checkpoint whose pickle
// creates exactly MaxObjects objects, nearly all of them empty dicts (the costliest value per
// object), with the pickle and walk limits just large enough for it: the address space must
// follow the object limit. One object fewer allowed is a limit fault. Two million objects
// always run (8 s); eight million, the default, only without -short (30 s and 6 GB of
// memory).
func TestObjectsAtLimitConvert(t *testing.T) {
	for _, n := range []int{2_000_000, limits.Default().MaxObjects - dtypesObjects} {
		t.Run(fmt.Sprint(n+dtypesObjects), func(t *testing.T) {
			if n > 2_000_000 && testing.Short() {
				t.Skip("needs 30 s and 6 GB of memory; runs without -short")
			}
			dir := t.TempDir()
			src := filepath.Join(dir, "dicts.pt")
			dictsCheckpoint(t, src, n)
			lim := limits.Limits{MaxPickleBytes: int64(n) + 1<<20, MaxObjects: n + dtypesObjects, MaxWalkNodes: n + 1000}
			m, err := testRunner().Convert(context.Background(), src, filepath.Join(dir, "out.safetensors"), convert.Options{Limits: lim})
			if err != nil {
				t.Fatalf("convert: %v (RLIMIT_AS %d)", err, addressSpace(lim.OrDefault()))
			}
			if len(m.Tensors) != 11 {
				t.Errorf("got %d tensors, want the fixture's 11", len(m.Tensors))
			}
			lim.MaxObjects--
			_, err = testRunner().Convert(context.Background(), src, filepath.Join(dir, "over.safetensors"), convert.Options{Limits: lim})
			if fault.KindOf(err) != fault.Limit || !strings.Contains(err.Error(), "limit max-objects") {
				t.Errorf("one object over the limit: got %v, want a max-objects limit fault", err)
			}
		})
	}
}

// TestChildNamesNoPath checks that the child knows its files by display names: a scan reports
// the source by Options.SourceName, and a refused conversion's error names no part of the
// directory the files are in (a server's data directory).
func TestChildNamesNoPath(t *testing.T) {
	dir := t.TempDir()
	opts := convert.Options{SourceName: "upload.pt"}
	m, _ := testRunner().Scan(context.Background(), fixtures+"dtypes.pt", opts)
	if m == nil || m.Source.Path != "upload.pt" {
		t.Fatalf("scan: %+v; want the source named upload.pt", m)
	}
	_, err := testRunner().Convert(context.Background(), truncated(t, dir), filepath.Join(dir, "out.safetensors"), opts)
	if err == nil || strings.Contains(err.Error(), dir) {
		t.Errorf("convert: %v; want an error that does not name %s", err, dir)
	}
}

// TestBackstopsExceedTheTimeLimit checks that the parent's wall clock and the child's CPU time
// leave the time limit to the child's own clock, and yield to an explicit configuration.
func TestBackstopsExceedTheTimeLimit(t *testing.T) {
	for _, timeout := range []time.Duration{time.Nanosecond, time.Second, limits.Default().Timeout} {
		wall, cpu := backstops(Config{}, limits.Limits{Timeout: timeout})
		if wall <= timeout || cpu < wall {
			t.Errorf("time limit %s: wall clock %s, CPU time %s; want both beyond it, CPU time at least the wall clock", timeout, wall, cpu)
		}
	}
	if wall, cpu := backstops(Config{WallGrace: time.Second, CPUTime: time.Hour}, limits.Limits{Timeout: time.Minute}); wall != time.Minute+time.Second || cpu != time.Hour {
		t.Errorf("configured: wall clock %s, CPU time %s; want 1m1s, 1h", wall, cpu)
	}
}

// TestTimeLimitIsTheChildsOwn converts a synthetic checkpoint under a time limit far shorter
// than the conversion: the child stops itself with its own limit fault, not the parent's
// wall clock.
func TestTimeLimitIsTheChildsOwn(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "model.pt")
	if err := synth.WriteFile(src, synth.Spec{Tensors: 4, TotalBytes: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	opts := convert.Options{Limits: limits.Limits{Timeout: time.Nanosecond}}
	_, err := testRunner().Convert(context.Background(), src, filepath.Join(dir, "out.safetensors"), opts)
	if fault.KindOf(err) != fault.Limit || !strings.Contains(err.Error(), "conversion exceeded the time limit of 1ns") {
		t.Errorf("convert: %v; want the child's time-limit fault", err)
	}
	m, err := testRunner().Scan(context.Background(), src, opts)
	if fault.KindOf(err) != fault.Limit || !strings.Contains(err.Error(), "time limit") {
		t.Errorf("scan: %+v, %v; want the child's time-limit fault", m, err)
	}
}

// TestCommitNeverReplacesUnlessOverwrite: the parent commits the child's output, and without
// Options.Overwrite never onto a file that exists by then.
func TestCommitNeverReplacesUnlessOverwrite(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "model.safetensors")
	if err := os.WriteFile(dst, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := testRunner().Convert(context.Background(), fixtures+"dtypes.pt", dst, convert.Options{})
	if got, _ := os.ReadFile(dst); !errors.Is(err, fs.ErrExist) || string(got) != "keep" {
		t.Errorf("convert onto an existing file: %v, file holds %q; want fs.ErrExist and the file kept", err, got)
	}
	if _, err := testRunner().Convert(context.Background(), fixtures+"dtypes.pt", dst, convert.Options{Overwrite: true}); err != nil {
		t.Errorf("convert with Overwrite: %v", err)
	}
}

// TestProgressFromChild has the child report a conversion's and a scan's progress over its
// pipe: the records arrive before the operation returns, in phase order, and include the one
// with the final counts.
func TestProgressFromChild(t *testing.T) {
	r := testRunner()
	var got []convert.Progress
	opts := convert.Options{Progress: func(p convert.Progress) { got = append(got, p) }}
	m, err := r.Convert(t.Context(), fixtures+"dtypes.pt", filepath.Join(t.TempDir(), "out.safetensors"), opts)
	if err != nil {
		t.Fatal(err)
	}
	n := len(m.Tensors)
	want := convert.Progress{Phase: convert.PhaseWriting, BytesDone: m.Output.Size, BytesTotal: m.Output.Size, TensorsDone: n, TensorsTotal: n}
	if !slices.Contains(got, want) {
		t.Errorf("convert: no record %+v among %+v", want, got)
	}
	if len(got) == 0 || got[0].Phase != convert.PhaseScanning || got[len(got)-1].Phase != convert.PhaseVerifying {
		t.Errorf("convert: records %+v do not run from scanning to verifying", got)
	}

	got = nil
	sm, err := r.Scan(t.Context(), fixtures+"dtypes.pt", opts)
	if err != nil {
		t.Fatal(err)
	}
	want = convert.Progress{Phase: convert.PhaseHashing, BytesDone: sm.Source.Size, BytesTotal: sm.Source.Size}
	if !slices.Contains(got, want) {
		t.Errorf("scan: no record %+v among %+v", want, got)
	}
}

// TestWrittenBeforeCommit: both engines call Options.Written once, after the output is
// written and verified and before anything is at its destination (a batch frees its engine
// slot there while the output syncs), and never for a file that fails.
func TestWrittenBeforeCommit(t *testing.T) {
	src := fixtures + "module_state_dict.pt"
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(t.TempDir(), "truncated.pt")
	if err := os.WriteFile(truncated, data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	for name, eng := range map[string]convert.Engine{"in-process": convert.InProcess{}, "sandbox": testRunner()} {
		t.Run(name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "out.safetensors")
			calls := 0
			opts := convert.Options{Written: func() {
				calls++
				if _, err := os.Stat(dst); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("Written was called with the output at its destination (stat: %v)", err)
				}
			}}
			if _, err := eng.Convert(context.Background(), src, dst, opts); err != nil || calls != 1 {
				t.Fatalf("convert: %v, Written called %d times; want success and 1 call", err, calls)
			}
			calls = 0
			if _, err := eng.Convert(context.Background(), truncated, dst+".2", opts); err == nil || calls != 0 {
				t.Errorf("truncated file: %v, Written called %d times; want a failure and no call", err, calls)
			}
		})
	}
}

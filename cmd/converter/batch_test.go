package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/store"
	"github.com/ptsafe/converter/internal/synth"
	"github.com/ptsafe/converter/internal/testkit"
)

// The files of the mixed tree beyond testdata/repo, written by hand: never loaded by anything
// but the converter.
var mixedExtras = map[string][]byte{
	// A protocol 2 pickle calling os.system("id"), named like a checkpoint.
	"evil/pytorch_model.bin": []byte("\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."),
	// What transformers' Trainer saves: a pickled TrainingArguments, no tensors.
	"training_args.bin": []byte("\x80\x03ctransformers.training_args\nTrainingArguments\nq\x00)\x81q\x01."),
	"README.md":         []byte("# a model card\n"),
}

// mixedOutcomes is what batch makes of the mixed tree: testdata/repo (see gen_fixtures.py),
// mixedExtras, a truncated checkpoint, and locally two symlinks.
var mixedOutcomes = map[string]string{
	"README.md":                        batch.Copied,
	"adapter.safetensors":              batch.Copied,
	"checkpoints/last.ckpt":            batch.Converted,
	"config.json":                      batch.Copied,
	"evil/pytorch_model.bin":           batch.Refused,
	"legacy.pt":                        batch.Converted,
	"merges.txt":                       batch.Copied,
	"pytorch_model-00001-of-00003.bin": batch.Converted,
	"pytorch_model-00002-of-00003.bin": batch.Converted,
	"pytorch_model-00003-of-00003.bin": batch.Converted,
	"pytorch_model.bin.index.json":     batch.Converted,
	"tokenizer.json":                   batch.Copied,
	"training_args.bin":                batch.Refused,
	"truncated.pt":                     batch.Failed,
	"vocab.txt":                        batch.Copied,
}

// mixedOutputs are the names DEST holds afterwards: every copied file and every output, and
// no checkpoint, refused file or bin index.
var mixedOutputs = []string{
	"README.md", "adapter.safetensors", "checkpoints/last.safetensors", "config.json",
	"legacy.safetensors", "merges.txt", "model-00001-of-00003.safetensors",
	"model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
	"model.safetensors.index.json", "tokenizer.json", "vocab.txt",
}

// mixedTree writes the mixed tree into a new local directory and returns it.
func mixedTree(t *testing.T, links bool) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "src")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("..", "..", "testdata", "repo"))); err != nil {
		t.Fatal(err)
	}
	for name, b := range mixedExtras {
		writeFile(t, filepath.Join(dir, name), b)
	}
	legacy, err := os.ReadFile(filepath.Join(dir, "legacy.pt"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "truncated.pt"), legacy[:len(legacy)/2])
	if links {
		outside := filepath.Join(t.TempDir(), "secret.pt")
		writeFile(t, outside, legacy)
		if err := os.Symlink(outside, filepath.Join(dir, "outside.pt")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("legacy.pt", filepath.Join(dir, "inside.pt")); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// s3env is a started versitygw and a client for the test's own checks.
type s3env struct {
	srv *testkit.S3Server
}

func startS3(t *testing.T) *s3env {
	t.Helper()
	return &s3env{srv: testkit.StartS3(t)}
}

// tree opens s3://bucket/prefix through the store the CLI uses.
func (e *s3env) tree(t *testing.T, loc string) store.Tree {
	t.Helper()
	tr, err := s3store.New(context.Background(), loc, s3store.Config{Endpoint: e.srv.Endpoint, Credentials: e.srv.Credentials()})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// upload copies a local tree (following its symlinks) to loc.
func (e *s3env) upload(t *testing.T, dir, loc string) {
	t.Helper()
	testkit.PutDir(t, e.tree(t, loc), dir)
}

// listing maps every file of a tree (without the batch state) to its SHA-256.
func listing(t *testing.T, tr store.Tree) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := tr.Walk(context.Background(), func(o store.Object, err error) error {
		if err != nil || strings.HasPrefix(o.Path, batch.StateDir+"/") {
			return nil
		}
		r, err := tr.Open(context.Background(), o.Path)
		if err != nil {
			return err
		}
		defer r.Close()
		h := sha256.New()
		if _, err := io.Copy(h, r); err != nil {
			return err
		}
		got[o.Path] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// runBatch runs the built binary (conversions in its sandbox children) with env added and
// returns the exit code and the report it wrote.
func runBatchCmd(t *testing.T, bin string, env []string, args ...string) (int, *batch.Report, string) {
	t.Helper()
	return runBatchAs(t, nil, t.TempDir(), bin, env, args...)
}

// runBatchAs is runBatchCmd as the user cred (nil: the test's own), the report written into
// reportDir, which that user may write.
func runBatchAs(t *testing.T, cred *syscall.Credential, reportDir, bin string, env []string, args ...string) (int, *batch.Report, string) {
	t.Helper()
	report := filepath.Join(reportDir, "report.json")
	cmd := exec.Command(bin, append([]string{"batch", "--progress", "none", "--workers", "2", "--report", report}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("no report: %v\n%s", err, out.Bytes())
	}
	var rep batch.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), &rep, out.String()
}

func outcomes(rep *batch.Report) map[string]string {
	got := map[string]string{}
	for _, f := range rep.Files {
		got[f.Path] = f.Outcome
	}
	return got
}

// TestBatchAcrossStores converts the mixed tree between every combination of local directory
// and S3 prefix, in the sandbox, and checks each file's outcome, that DEST holds exactly the
// outputs and copies, and that every output's digest in the report is what the store holds.
func TestBatchAcrossStores(t *testing.T) {
	bin := buildConverter(t)
	s3 := startS3(t)
	for _, tc := range []struct {
		name             string
		srcS3, dstS3     bool
		inPlace, symlink bool
	}{
		{name: "local to local", symlink: true},
		{name: "local to S3", dstS3: true, symlink: true},
		{name: "S3 to S3", srcS3: true, dstS3: true},
		{name: "S3 to local", srcS3: true},
		{name: "local in place", inPlace: true},
		{name: "S3 in place", srcS3: true, inPlace: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := mixedTree(t, tc.symlink)
			src, srcTree := dir, store.Tree(nil)
			if tc.srcS3 {
				src = "s3://" + s3.srv.Bucket(t) + "/models"
				s3.upload(t, dir, src)
				srcTree = s3.tree(t, src)
			} else {
				srcTree = localTree(t, dir)
			}
			args := []string{src}
			dstTree := srcTree
			if !tc.inPlace {
				dst := filepath.Join(t.TempDir(), "dst")
				if tc.dstS3 {
					dst = "s3://" + s3.srv.Bucket(t) + "/converted"
					dstTree = s3.tree(t, dst)
				} else {
					dstTree = localTree(t, mkdir(t, dst))
				}
				args = append(args, dst)
			}
			before := listing(t, srcTree)
			code, rep, out := runBatchCmd(t, bin, s3.srv.Env(), args...)
			if code != 3 {
				t.Errorf("exit code %d, want 3 (a file was refused)\n%s", code, out)
			}
			want := maps.Clone(mixedOutcomes)
			if tc.symlink {
				want["inside.pt"] = batch.Converted
				want["outside.pt"] = batch.Ignored
			}
			if tc.inPlace {
				// Nothing is copied in place: plain files stay where they are, unreported.
				maps.DeleteFunc(want, func(_, outcome string) bool { return outcome == batch.Copied })
			}
			if got := outcomes(rep); !maps.Equal(got, want) {
				t.Errorf("outcomes:\n got %v\nwant %v\n%s", got, want, out)
			}
			got := listing(t, dstTree)
			wantNames := slices.Clone(mixedOutputs)
			if tc.symlink {
				wantNames = append(wantNames, "inside.safetensors")
			}
			if tc.inPlace {
				wantNames = slices.Collect(maps.Keys(before))
				for _, f := range rep.Files {
					if f.Outcome == batch.Converted {
						wantNames = append(wantNames, f.Output)
					}
				}
			}
			slices.Sort(wantNames)
			if names := slices.Sorted(maps.Keys(got)); !slices.Equal(names, wantNames) {
				t.Errorf("DEST holds\n %v\nwant\n %v", names, wantNames)
			}
			for _, f := range rep.Files {
				if f.Outcome != batch.Converted && f.Outcome != batch.Copied {
					continue
				}
				if got[f.Output] != f.OutputSHA256 {
					t.Errorf("%s: DEST's %s has SHA-256 %s, the report says %s", f.Path, f.Output, got[f.Output], f.OutputSHA256)
				}
			}
			// Sources are never changed (in place, the outputs are new names).
			after := listing(t, srcTree)
			for name, sum := range before {
				if after[name] != sum {
					t.Errorf("source %s changed", name)
				}
			}
		})
	}
}

func localTree(t *testing.T, dir string) store.Tree {
	t.Helper()
	tr, err := store.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func mkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestBatchRerunsDryRunForceRemove runs the S3-to-S3 case through its lifecycle: a dry run
// writes nothing; a run converts; a second run converts nothing; a changed source is converted
// again; --force redoes everything; --remove-source deletes converted checkpoints only.
func TestBatchRerunsDryRunForceRemove(t *testing.T) {
	bin := buildConverter(t)
	s3 := startS3(t)
	dir := mixedTree(t, false)
	src := "s3://" + s3.srv.Bucket(t) + "/store"
	s3.upload(t, dir, src)
	dstBucket := s3.srv.Bucket(t)
	dst := "s3://" + dstBucket + "/out"
	srcTree, dstTree := s3.tree(t, src), s3.tree(t, dst)
	bucketTree := s3.tree(t, "s3://"+dstBucket)
	env := s3.srv.Env()

	count := func(rep *batch.Report, outcome string) int {
		n := 0
		for _, f := range rep.Files {
			if f.Outcome == outcome {
				n++
			}
		}
		return n
	}
	converted := 0
	for _, o := range mixedOutcomes {
		if o == batch.Converted {
			converted++
		}
	}

	_, rep, out := runBatchCmd(t, bin, env, "--dry-run", src, dst)
	if n := len(allObjects(t, bucketTree)); n != 0 || !rep.DryRun || count(rep, batch.Converted) != converted {
		t.Fatalf("dry run: %d objects written (want 0), dry_run %v, %d would convert (want %d)\n%s", n, rep.DryRun, count(rep, batch.Converted), converted, out)
	}

	_, rep, out = runBatchCmd(t, bin, env, src, dst)
	if got := count(rep, batch.Converted); got != converted {
		t.Fatalf("first run converted %d, want %d\n%s", got, converted, out)
	}
	_, rep, out = runBatchCmd(t, bin, env, src, dst)
	if got := count(rep, batch.Converted) + count(rep, batch.Copied); got != 0 {
		t.Errorf("second run converted or copied %d files, want 0\n%s", got, out)
	}
	// A refused file stays refused from its receipt, without a second scan.
	if got := count(rep, batch.Refused); got != 2 {
		t.Errorf("second run: %d refused, want 2", got)
	}

	legacy, _ := os.ReadFile(filepath.Join(dir, "pytorch_model-00002-of-00003.bin"))
	if err := srcTree.Put(context.Background(), "legacy.pt", bytes.NewReader(legacy), int64(len(legacy)), ""); err != nil {
		t.Fatal(err)
	}
	_, rep, out = runBatchCmd(t, bin, env, src, dst)
	if got := outcomes(rep)["legacy.pt"]; got != batch.Converted || count(rep, batch.Converted) != 1 {
		t.Errorf("after changing legacy.pt: its outcome %s, %d converted; want converted, 1\n%s", got, count(rep, batch.Converted), out)
	}

	_, rep, out = runBatchCmd(t, bin, env, "--force", src, dst)
	if got := count(rep, batch.Converted); got != converted {
		t.Errorf("--force converted %d, want %d\n%s", got, converted, out)
	}

	_, rep, out = runBatchCmd(t, bin, env, "--force", "--remove-source", src, dst)
	left := listing(t, srcTree)
	for path, outcome := range outcomes(rep) {
		_, kept := left[path]
		if gone := outcome == batch.Converted; kept == gone {
			t.Errorf("--remove-source: %s (%s) kept=%v\n%s", path, outcome, kept, out)
		}
	}
	if len(listing(t, dstTree)) != len(mixedOutputs) {
		t.Errorf("DEST after --remove-source: %v", slices.Sorted(maps.Keys(listing(t, dstTree))))
	}
}

// allObjects lists every object of a tree, the batch state included.
func allObjects(t *testing.T, tr store.Tree) []string {
	t.Helper()
	var names []string
	if err := tr.Walk(context.Background(), func(o store.Object, _ error) error {
		names = append(names, o.Path)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return names
}

// TestBatchResumesAfterSIGKILL kills a batch with SIGKILL at several moments (while its
// first output is being written, and after 1 or 3 checkpoints are done), local to local and
// local to S3: nothing partial is ever at an output name (every output there verifies against
// its source), and the next run converts only what is left and ends with every checkpoint
// converted.
func TestBatchResumesAfterSIGKILL(t *testing.T) {
	bin := buildConverter(t)
	s3 := startS3(t)
	src := t.TempDir()
	const files = 5
	for i := range files {
		spec := synth.Spec{Format: synth.ZipStored, Tensors: 8, TotalBytes: 24 << 20, DType: dtype.F16, Seed: uint64(i + 1)}
		if err := synth.WriteFile(filepath.Join(src, fmt.Sprintf("m%d.pt", i)), spec); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		toS3 bool
		k    int // checkpoints done before the kill; 0: kill while the first is written
	}{{false, 0}, {false, 1}, {false, 3}, {true, 1}, {true, 3}} {
		t.Run(fmt.Sprintf("S3=%v after %d", tc.toS3, tc.k), func(t *testing.T) {
			local := mkdir(t, filepath.Join(t.TempDir(), "dst"))
			dst, dstTree := local, localTree(t, local)
			if tc.toS3 {
				dst = "s3://" + s3.srv.Bucket(t) + "/out"
				dstTree = s3.tree(t, dst)
			}
			cmd := exec.Command(bin, "batch", "--progress", "none", "--workers", "1", src, dst)
			cmd.Env = append(os.Environ(), s3.srv.Env()...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			reached := func() bool {
				if tc.k == 0 {
					tmp, _ := filepath.Glob(filepath.Join(local, ".m0.safetensors.*.tmp"))
					return len(tmp) > 0
				}
				return receiptsOf(dstTree) >= tc.k
			}
			if !poll(exited, reached) {
				t.Fatal("the batch ended before the moment to kill it")
			}
			cmd.Process.Signal(syscall.SIGKILL)
			<-exited

			for name := range listing(t, dstTree) {
				if strings.HasPrefix(path.Base(name), ".") {
					continue // a temporary file: no output name
				}
				srcName := strings.TrimSuffix(name, ".safetensors") + ".pt"
				out, err := exec.Command(bin, "verify", "--source", filepath.Join(src, srcName), stageLocal(t, dstTree, name)).CombinedOutput()
				if err != nil {
					t.Errorf("after SIGKILL, %s at an output name does not verify: %v\n%s", name, err, out)
				}
			}
			code, rep, out := runBatchCmd(t, bin, s3.srv.Env(), src, dst)
			if code != 0 {
				t.Fatalf("the run after SIGKILL exited %d\n%s", code, out)
			}
			converted := 0
			for _, f := range rep.Files {
				switch f.Outcome {
				case batch.Converted:
					converted++
				case batch.Skipped:
				default:
					t.Errorf("%s: %s after resuming", f.Path, f.Outcome)
				}
			}
			if converted > files-tc.k || len(listing(t, dstTree)) != files {
				t.Errorf("after resuming: %d converted (want at most %d), DEST holds %v", converted, files-tc.k, slices.Sorted(maps.Keys(listing(t, dstTree))))
			}
			if tmp, _ := filepath.Glob(filepath.Join(local, ".*.tmp")); len(tmp) > 0 {
				t.Errorf("temporary files left after resuming: %v", tmp)
			}
		})
	}
}

// poll checks cond until it holds (true) or exited is closed (false). It is no timing
// assertion: it waits for an event, as long as it takes.
func poll(exited <-chan struct{}, cond func() bool) bool {
	for {
		select {
		case <-exited:
			return cond()
		default:
		}
		if cond() {
			return true
		}
		time.Sleep(time.Millisecond)
	}
}

// receiptsOf counts the batch's receipts in DEST.
func receiptsOf(tr store.Tree) int {
	n := 0
	tr.Walk(context.Background(), func(o store.Object, _ error) error {
		if strings.HasPrefix(o.Path, batch.StateDir+"/receipts/") && !strings.HasPrefix(path.Base(o.Path), ".") {
			n++
		}
		return nil
	})
	return n
}

// stageLocal returns a local file holding the tree's file name.
func stageLocal(t *testing.T, tr store.Tree, name string) string {
	t.Helper()
	if p, ok := tr.LocalPath(name); ok {
		return p
	}
	r, err := tr.Open(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p := filepath.Join(t.TempDir(), filepath.Base(name))
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, r); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBatchUnreadableDirectory: a directory the run may not list fails, alone; everything
// else in the tree is converted or copied, and the run exits 1 (a failure that is no verdict
// on a file). Root reads every directory, so a root test runs the batch as the image's user.
func TestBatchUnreadableDirectory(t *testing.T) {
	bin := buildConverter(t)
	dir, err := os.MkdirTemp("", "converter-unreadable-")
	if err != nil {
		t.Fatal(err)
	}
	src, dst, private := filepath.Join(dir, "src"), filepath.Join(dir, "dst"), filepath.Join(dir, "src", "private")
	t.Cleanup(func() {
		os.Chmod(private, 0o755)
		os.RemoveAll(dir)
	})
	if err := os.CopyFS(src, os.DirFS(filepath.Join("..", "..", "testdata", "repo"))); err != nil {
		t.Fatal(err)
	}
	legacy, err := os.ReadFile(filepath.Join(src, "legacy.pt"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(private, "model.pt"), legacy)
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: imageUID, Gid: imageUID}
		err = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
			if err == nil {
				err = os.Lchown(p, imageUID, imageUID)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{dir, filepath.Dir(bin)} { // the user must reach the tree and the binary
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(private, 0); err != nil {
		t.Fatal(err)
	}

	code, rep, out := runBatchAs(t, cred, dir, bin, nil, src, dst)
	got := outcomes(rep)
	if code != 1 || got["private"] != batch.Failed || rep.Summary.Failed != 1 {
		t.Fatalf("exit %d, private %q, %d failed; want exit 1 and the directory alone failed\n%s", code, got["private"], rep.Summary.Failed, out)
	}
	for _, f := range rep.Files {
		if f.Path == "private" && (f.Error == nil || f.Error.Type != fault.Internal || !strings.Contains(f.Error.Detail, "permission denied")) {
			t.Errorf("private's error = %+v; want an internal error saying the permission was denied", f.Error)
		}
	}
	for _, p := range []string{"legacy.pt", "checkpoints/last.ckpt", "pytorch_model.bin.index.json"} {
		if got[p] != batch.Converted {
			t.Errorf("%s: %q, want converted", p, got[p])
		}
	}
	if _, err := os.Stat(filepath.Join(dst, "private")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("DEST has a directory for the unreadable one (stat: %v)", err)
	}
}

// TestInterruptedStatus: an interrupted run exits 1 and says how many files are left, unless a
// file it finished gives a worse status, which wins.
func TestInterruptedStatus(t *testing.T) {
	refused := batch.File{Path: "evil.bin", Outcome: batch.Refused, Error: &convert.ErrorInfo{Type: fault.Unsafe}}
	for _, tc := range []struct {
		rep  batch.Report
		code int
		msg  string
	}{
		{batch.Report{Interrupted: true, Summary: batch.Summary{Left: 2}}, 1, "interrupted, 2 files left; (see above)"},
		{batch.Report{Interrupted: true, Summary: batch.Summary{Left: 2, Refused: 1}, Files: []batch.File{refused}}, 3,
			"interrupted, 2 files left; 1 refused, 0 failed (see above)"},
		{batch.Report{Summary: batch.Summary{Refused: 1}, Files: []batch.File{refused}}, 3, "1 refused, 0 failed (see above)"},
	} {
		var st *exitStatus
		if err := reportStatus(&tc.rep); !errors.As(err, &st) || st.code != tc.code || st.msg != tc.msg {
			t.Errorf("reportStatus(%+v) = %v; want exit %d: %s", tc.rep, err, tc.code, tc.msg)
		}
	}
	if err := reportStatus(&batch.Report{}); err != nil {
		t.Errorf("a finished run with nothing wrong: %v", err)
	}
}

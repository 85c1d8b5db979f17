package batch_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/store"
)

// Files the tests write by hand: never loaded by anything but the converter.
var (
	// A protocol 2 pickle calling posix.system("id"), as a pytorch_model.bin.
	maliciousPickle = []byte("\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
	// A pickled transformers TrainingArguments, as Trainer saves training_args.bin.
	trainingArgs = []byte("\x80\x03ctransformers.training_args\nTrainingArguments\nq\x00)\x81q\x01.")
	// A bare pickle of {"a": 1}: pickle data, no checkpoint, no global.
	barePickle = []byte("\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.")
	// np.save of two float32 values: plain data.
	plainNpy = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", "\x00\x00\x80\x3f\x00\x00\x00\x40")
	// np.save of an object array: a pickle naming numpy's reconstructor follows the header.
	objectNpy = npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
		"\x80\x03cnumpy.core.multiarray\n_reconstruct\nq\x00.")
)

// npy builds a version 1.0 .npy file: magic, header length, the header dict padded with
// spaces and a newline to a multiple of 64 bytes, then the data.
func npy(header, data string) []byte {
	pad := 64 - (10+len(header)+1)%64
	header += strings.Repeat(" ", pad%64) + "\n"
	n := len(header)
	return []byte("\x93NUMPY\x01\x00" + string([]byte{byte(n), byte(n >> 8)}) + header + data)
}

// repo copies testdata/repo (see gen_fixtures.py) into a fresh directory, adds files, and
// returns the directory.
func repo(t *testing.T, extra map[string][]byte) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "src")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("..", "..", "testdata", "repo"))); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, extra)
	return dir
}

func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for p, b := range files {
		name := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// run runs a batch from src into dst ("" for in place) and fails the test on a run error.
func run(t *testing.T, eng convert.Engine, src, dst string, opts batch.Options) *batch.Report {
	t.Helper()
	rep, err := runErr(eng, src, dst, opts)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return rep
}

func runErr(eng convert.Engine, src, dst string, opts batch.Options) (*batch.Report, error) {
	s, err := store.NewLocal(src)
	if err != nil {
		return nil, err
	}
	var d store.Tree
	if dst != "" {
		if d, err = store.NewLocal(dst); err != nil {
			return nil, err
		}
	}
	if opts.Workers == 0 {
		opts.Workers = 2
	}
	return batch.Run(context.Background(), s, d, eng, opts)
}

// outcomes maps each reported path to "outcome" or "outcome -> output".
func outcomes(rep *batch.Report) map[string]string {
	got := map[string]string{}
	for _, f := range rep.Files {
		s := f.Outcome
		if f.Output != "" {
			s += " -> " + f.Output
		}
		got[f.Path] = s
	}
	return got
}

func checkOutcomes(t *testing.T, rep *batch.Report, want map[string]string) {
	t.Helper()
	got := outcomes(rep)
	for _, p := range slices.Sorted(maps.Keys(got)) {
		if got[p] != want[p] {
			t.Errorf("%s: %q, want %q", p, got[p], want[p])
		}
	}
	for _, p := range slices.Sorted(maps.Keys(want)) {
		if _, ok := got[p]; !ok {
			t.Errorf("%s: not reported, want %q", p, want[p])
		}
	}
}

// listing describes every entry under dir, dot files included: a file by its SHA-256, a
// symlink by its target. A missing dir lists nothing.
func listing(t *testing.T, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(dir, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) && name == dir {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(dir, name)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(name)
			got[rel] = "-> " + target
		case d.IsDir():
			if rel != "." {
				got[rel+"/"] = "dir"
			}
		default:
			h := sha256.Sum256(readFile(t, name))
			got[rel] = hex.EncodeToString(h[:])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// withoutState drops the state directory from a listing.
func withoutState(l map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range l {
		if !strings.HasPrefix(k, batch.StateDir) {
			out[k] = v
		}
	}
	return out
}

// counting is an Engine that counts its calls and can fail from the nth conversion on.
type counting struct {
	convert.Engine
	converts, scans atomic.Int32
	failAfter       int32 // 0: never
	once            sync.Once
	onFail          func()
}

func (c *counting) Convert(ctx context.Context, src, dst string, opts convert.Options) (*convert.Manifest, error) {
	if n := c.converts.Add(1); c.failAfter > 0 && n > c.failAfter {
		c.once.Do(c.onFail)
		return nil, ctx.Err()
	}
	return c.Engine.Convert(ctx, src, dst, opts)
}

func (c *counting) Scan(ctx context.Context, src string, opts convert.Options) (*convert.Manifest, error) {
	c.scans.Add(1)
	return c.Engine.Scan(ctx, src, opts)
}

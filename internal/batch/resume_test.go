package batch_test

import (
	"context"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/store"
)

func TestResume(t *testing.T) {
	t.Parallel()
	src := mixedRepo(t)
	dst := filepath.Join(t.TempDir(), "dst")
	eng := &counting{Engine: convert.InProcess{}}
	run(t, eng, src, dst, batch.Options{})
	first := listing(t, dst)

	steps := []struct {
		name     string
		before   func(t *testing.T)
		opts     batch.Options
		want     map[string]string // outcomes that differ from "skipped -> OUTPUT" (or the receipt's)
		converts int32
	}{
		{
			name: "unchanged SOURCE: nothing converted, refusals reported from their receipts",
		},
		{
			name: "a touched source is converted again",
			before: func(t *testing.T) {
				later := time.Now().Add(time.Hour)
				if err := os.Chtimes(filepath.Join(src, "legacy.pt"), later, later); err != nil {
					t.Fatal(err)
				}
			},
			// snapshot/model.bin links to it: its Object is the target's.
			want: map[string]string{"legacy.pt": "converted -> legacy.safetensors",
				"snapshot/model.bin": "converted -> snapshot/model.safetensors"},
			converts: 2,
		},
		{
			name:   "an output removed from DEST is made again",
			before: func(t *testing.T) { os.Remove(filepath.Join(dst, "checkpoints/last.safetensors")) },
			want:   map[string]string{"checkpoints/last.ckpt": "converted -> checkpoints/last.safetensors"},
			// Only the one file: the copied files and the other outputs are still there.
			converts: 1,
		},
		{
			name: "--force redoes everything",
			opts: batch.Options{Force: true},
			want: mixedWant,
			// 8 converted (the index is not a conversion), 5 refused or failed, 2 copied after
			// the engine's verdict (adapter.safetensors, embeddings.npy).
			converts: 15,
		},
	}
	for _, step := range steps {
		if step.before != nil {
			step.before(t)
		}
		eng.converts.Store(0)
		eng.scans.Store(0)
		rep := run(t, eng, src, dst, step.opts)
		want := map[string]string{}
		for p, o := range mixedWant {
			switch {
			case step.want[p] != "":
				want[p] = step.want[p]
			case strings.HasPrefix(o, "converted") || strings.HasPrefix(o, "copied"):
				want[p] = "skipped" + o[strings.Index(o, " "):]
			default:
				want[p] = o
			}
		}
		t.Run(step.name, func(t *testing.T) { checkOutcomes(t, rep, want) })
		if got := eng.converts.Load(); got != step.converts {
			t.Errorf("%s: %d conversions, want %d", step.name, got, step.converts)
		}
		if got := rep.ExitCode(); got != 3 {
			t.Errorf("%s: ExitCode %d, want 3 (the refusals are reported again)", step.name, got)
		}
	}
	// Outputs are deterministic: whatever was redone is byte for byte what the first run wrote.
	if got := withoutState(listing(t, dst)); !maps.Equal(got, withoutState(first)) {
		t.Errorf("DEST after the reruns differs from the first run's")
	}
}

// Allowing a global changes the verdict on the files that name it: the receipts made under
// other options do not hold.
func TestResumeAllowGlobal(t *testing.T) {
	t.Parallel()
	src := repo(t, map[string][]byte{"training_args.bin": trainingArgs})
	dst := filepath.Join(t.TempDir(), "dst")
	rep := run(t, convert.InProcess{}, src, dst, batch.Options{})
	if got := outcomes(rep)["training_args.bin"]; got != "refused" {
		t.Fatalf("training_args.bin: %q, want refused", got)
	}
	opts := batch.Options{Convert: convert.Options{AllowGlobals: []string{"transformers.training_args.TrainingArguments"}}}
	rep = run(t, convert.InProcess{}, src, dst, opts)
	// Admitted as an inert record, it is still no checkpoint: a bare pickle, unsupported.
	if got := outcomes(rep)["training_args.bin"]; got != "failed" {
		t.Errorf("training_args.bin with --allow-global: %q, want failed", got)
	}
}

// crashAfter is an engine whose run ends (its context canceled, as by a signal) at the nth
// conversion, which leaves the temporary file a killed conversion would.
func crashAfter(n int32, cancel context.CancelFunc) *counting {
	c := &counting{Engine: convert.InProcess{}, failAfter: n}
	c.onFail = cancel
	return c
}

func TestCrashThenResume(t *testing.T) {
	t.Parallel()
	src := mixedRepo(t)
	clean := filepath.Join(t.TempDir(), "clean")
	whole := run(t, convert.InProcess{}, src, clean, batch.Options{})

	for _, n := range []int32{1, 3, 5} {
		dst := filepath.Join(t.TempDir(), "dst")
		ctx, cancel := context.WithCancel(context.Background())
		s, _ := store.NewLocal(src)
		d, _ := store.NewLocal(dst)
		rep, err := batch.Run(ctx, s, d, crashAfter(n, cancel), batch.Options{Workers: 1})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("crash after %d: Run = %v, want context.Canceled", n, err)
		}
		// The report says what was done: the files the interruption cut short have no outcome
		// and are counted as left; the failures listed are verdicts on files.
		if !rep.Interrupted || rep.Summary.Left == 0 || len(rep.Files)+rep.Summary.Left != len(whole.Files) {
			t.Errorf("crash after %d: interrupted %v, %d listed + %d left, want %d files", n, rep.Interrupted, len(rep.Files), rep.Summary.Left, len(whole.Files))
		}
		for _, f := range rep.Files {
			if f.Outcome == batch.Failed && f.Error.Type != fault.Malformed {
				t.Errorf("crash after %d: %s is reported %s (%s); want no outcome for what the interruption cut short", n, f.Path, f.Outcome, f.Error.Detail)
			}
		}
		// What a SIGKILL during a write leaves: the engine's temporary output and its scratch.
		writeFiles(t, dst, map[string][]byte{
			".model-00002-of-00003.safetensors.123456.tmp": []byte("partial"),
			".converter-scratch-42/inflated":               []byte("partial"),
		})
		for p := range listing(t, dst) {
			if strings.HasSuffix(p, ".safetensors") {
				if _, err := convert.Verify(context.Background(), filepath.Join(dst, p), "", convert.Options{}); err != nil {
					t.Errorf("crash after %d: %s is not a whole safetensors file: %v", n, p, err)
				}
			}
		}
		run(t, convert.InProcess{}, src, dst, batch.Options{})
		if got, want := withoutState(listing(t, dst)), withoutState(listing(t, clean)); !maps.Equal(got, want) {
			t.Errorf("crash after %d, then a run: DEST differs from a clean run's:\n got %v\nwant %v", n, got, want)
		}
	}
}

func TestRemoveSource(t *testing.T) {
	t.Parallel()
	src := mixedRepo(t)
	dst := filepath.Join(t.TempDir(), "dst")
	run(t, convert.InProcess{}, src, dst, batch.Options{RemoveSource: true})
	left := listing(t, src)
	for p, o := range mixedWant {
		_, kept := left[p]
		removed := strings.HasPrefix(o, "converted")
		if kept == removed {
			t.Errorf("%s (%s): kept %v", p, o, kept)
		}
	}
	if _, err := os.Stat(filepath.Join(src, "legacy.pt")); err == nil {
		t.Error("legacy.pt, converted, is still in SOURCE")
	}
}

// A set that fails keeps its sources, whatever --remove-source says.
func TestRemoveSourceFailedSet(t *testing.T) {
	t.Parallel()
	src := repo(t, nil)
	os.Remove(filepath.Join(src, "pytorch_model-00003-of-00003.bin"))
	dst := filepath.Join(t.TempDir(), "dst")
	run(t, convert.InProcess{}, src, dst, batch.Options{RemoveSource: true})
	for _, p := range []string{"pytorch_model-00001-of-00003.bin", "pytorch_model-00002-of-00003.bin", "pytorch_model.bin.index.json"} {
		if _, err := os.Stat(filepath.Join(src, p)); err != nil {
			t.Errorf("%s of a failed set: %v", p, err)
		}
	}
}

func TestLockedDestination(t *testing.T) {
	t.Parallel()
	src := repo(t, nil)
	dst := filepath.Join(t.TempDir(), "dst")
	lock := filepath.Join(dst, batch.StateDir, "lock")
	writeFiles(t, filepath.Dir(lock), map[string][]byte{"lock": nil})
	f, err := os.Open(lock)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	if _, err := runErr(convert.InProcess{}, src, dst, batch.Options{}); err == nil {
		t.Error("a second run on a locked DEST: no error")
	}
	if _, err := os.Stat(filepath.Join(dst, "legacy.safetensors")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the refused run wrote: %v", err)
	}
}

// In place, what a killed run left is neither a source (not even for a dry run, which cleans
// nothing) nor kept by the next real run; a user's own temporary-looking file is left alone.
func TestInPlaceStrayFiles(t *testing.T) {
	t.Parallel()
	stray := map[string][]byte{
		".legacy.safetensors.123456.tmp":            maliciousPickle[:10], // a partial output
		"checkpoints/.converter-scratch-7/inflated": maliciousPickle,
		batch.StateDir + "/receipts/.x.json.42.tmp": []byte("{"),
	}
	src := repo(t, stray)
	writeFiles(t, src, map[string][]byte{".notes.txt.99.tmp": []byte("mine")})
	rep := run(t, convert.InProcess{}, src, "", batch.Options{DryRun: true})
	for _, f := range rep.Files {
		if strings.Contains(f.Path, ".tmp") || strings.Contains(f.Path, "scratch") {
			t.Errorf("dry run reports %s (%s)", f.Path, f.Outcome)
		}
	}
	run(t, convert.InProcess{}, src, "", batch.Options{})
	left := listing(t, src)
	for p := range stray {
		if _, ok := left[p]; ok {
			t.Errorf("%s left after a run", p)
		}
	}
	if _, ok := left[".notes.txt.99.tmp"]; !ok {
		t.Error("a user's own .notes.txt.99.tmp was removed")
	}
}

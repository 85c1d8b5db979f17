package batch_test

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
)

// mixedRepo is testdata/repo plus what a real store also holds: a malicious pytorch_model.bin,
// Trainer's training_args.bin, a bare pickle, a truncated shard, a checkpoint without an
// extension, and symlinks inside, outside and in a loop.
func mixedRepo(t *testing.T) string {
	t.Helper()
	shard := readFile(t, filepath.Join("..", "..", "testdata", "repo", "pytorch_model-00001-of-00003.bin"))
	legacy := readFile(t, filepath.Join("..", "..", "testdata", "repo", "legacy.pt"))
	src := repo(t, map[string][]byte{
		"evil/pytorch_model.bin":   maliciousPickle,
		"training_args.bin":        trainingArgs,
		"optimizer.pt":             barePickle,
		"broken/pytorch_model.bin": shard[:len(shard)/2],
		"noext":                    legacy,
		"embeddings.npy":           plainNpy,
		"objects.npy":              objectNpy,
	})
	outside := filepath.Join(t.TempDir(), "secret.bin")
	writeFiles(t, filepath.Dir(outside), map[string][]byte{"secret.bin": legacy})
	for name, target := range map[string]string{
		"snapshot/model.bin": "../legacy.pt",
		"outside.bin":        outside,
		"loop":               "loop",
	} {
		name = filepath.Join(src, name)
		os.MkdirAll(filepath.Dir(name), 0o755)
		if err := os.Symlink(target, name); err != nil {
			t.Fatal(err)
		}
	}
	return src
}

// mixedWant is what a run from mixedRepo into a DEST reports.
var mixedWant = map[string]string{
	"adapter.safetensors":              "copied -> adapter.safetensors", // its header length starts with 0x80
	"broken/pytorch_model.bin":         "failed",
	"checkpoints/last.ckpt":            "converted -> checkpoints/last.safetensors",
	"config.json":                      "copied -> config.json",
	"embeddings.npy":                   "copied -> embeddings.npy", // no object data: no pickle
	"evil/pytorch_model.bin":           "refused",
	"legacy.pt":                        "converted -> legacy.safetensors",
	"loop":                             "ignored",
	"merges.txt":                       "copied -> merges.txt", // starts with the EMPTY_LIST opcode
	"noext":                            "converted -> noext.safetensors",
	"objects.npy":                      "refused",
	"optimizer.pt":                     "failed",
	"outside.bin":                      "ignored",
	"pytorch_model-00001-of-00003.bin": "converted -> model-00001-of-00003.safetensors",
	"pytorch_model-00002-of-00003.bin": "converted -> model-00002-of-00003.safetensors",
	"pytorch_model-00003-of-00003.bin": "converted -> model-00003-of-00003.safetensors",
	"pytorch_model.bin.index.json":     "converted -> model.safetensors.index.json",
	"snapshot/model.bin":               "converted -> snapshot/model.safetensors",
	"tokenizer.json":                   "copied -> tokenizer.json",
	"training_args.bin":                "refused",
	"vocab.txt":                        "copied -> vocab.txt",
}

func TestMixedTreeLocalToLocal(t *testing.T) {
	t.Parallel()
	src := mixedRepo(t)
	dst := filepath.Join(t.TempDir(), "dst")
	eng := &counting{Engine: convert.InProcess{}}
	rep := run(t, eng, src, dst, batch.Options{})
	checkOutcomes(t, rep, mixedWant)
	if n := eng.scans.Load(); n != 0 {
		t.Errorf("%d scans; want none: a refused conversion reports its file itself", n)
	}

	byPath := map[string]batch.File{}
	for _, f := range rep.Files {
		byPath[f.Path] = f
	}
	for _, tc := range []struct {
		path   string
		kind   fault.Kind
		global string
	}{
		{"evil/pytorch_model.bin", fault.Unsafe, "posix.system"},
		{"training_args.bin", fault.Unsafe, "transformers.training_args.TrainingArguments"},
		{"objects.npy", fault.Unsafe, "numpy.core.multiarray._reconstruct"},
		{"optimizer.pt", fault.Unsupported, ""},
		{"broken/pytorch_model.bin", fault.Malformed, ""},
	} {
		f := byPath[tc.path]
		if f.Error == nil || f.Error.Type != tc.kind {
			t.Errorf("%s: error %+v, want type %v", tc.path, f.Error, tc.kind)
		}
		var globals []string
		for _, g := range f.Globals {
			globals = append(globals, g.Qualified())
		}
		if tc.global != "" && !slices.Equal(globals, []string{tc.global}) {
			t.Errorf("%s: globals %q, want [%s]", tc.path, globals, tc.global)
		}
		if f.SourceSHA256 == "" {
			t.Errorf("%s: no source SHA-256", tc.path)
		}
	}
	if got, want := rep.ExitCode(), 3; got != want {
		t.Errorf("ExitCode = %d, want %d", got, want)
	}
	if rep.Summary != (batch.Summary{Converted: 8, Copied: 6, Refused: 3, Failed: 2, Ignored: 2,
		BytesIn: rep.Summary.BytesIn, BytesOut: rep.Summary.BytesOut}) || rep.Summary.BytesOut == 0 {
		t.Errorf("summary %+v", rep.Summary)
	}

	// DEST is a complete repository: converted outputs and plain files, no checkpoint, no
	// refused or failed file, no bin index, nothing temporary.
	got := slices.Sorted(maps.Keys(withoutState(listing(t, dst))))
	want := []string{"adapter.safetensors", "checkpoints/", "checkpoints/last.safetensors", "config.json",
		"embeddings.npy", "legacy.safetensors", "merges.txt", "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
		"model-00003-of-00003.safetensors", "model.safetensors.index.json", "noext.safetensors", "snapshot/",
		"snapshot/model.safetensors", "tokenizer.json", "vocab.txt"}
	if !slices.Equal(got, want) {
		t.Errorf("DEST holds\n%q\nwant\n%q", got, want)
	}
	for _, p := range []string{"config.json", "adapter.safetensors", "vocab.txt"} {
		if string(readFile(t, filepath.Join(dst, p))) != string(readFile(t, filepath.Join(src, p))) {
			t.Errorf("%s: copy differs from its source", p)
		}
	}
	// An output is the conversion of its source, tensor by tensor.
	vr, err := convert.Verify(context.Background(), filepath.Join(dst, "checkpoints/last.safetensors"),
		filepath.Join(src, "checkpoints/last.ckpt"), convert.Options{})
	if err != nil {
		t.Fatalf("verify the Lightning output against its source: %v (%+v)", err, vr)
	}
}

func TestShardedSetIndex(t *testing.T) {
	t.Parallel()
	src := repo(t, nil)
	dst := filepath.Join(t.TempDir(), "dst")
	// The shards converted one by one first (their index left out): the next run writes the
	// index from what their receipts say, without converting them again.
	run(t, convert.InProcess{}, src, dst, batch.Options{Exclude: []string{"*.index.json"}})
	eng := &counting{Engine: convert.InProcess{}}
	rep := run(t, eng, src, dst, batch.Options{})
	if got := outcomes(rep)["pytorch_model.bin.index.json"]; got != "converted -> model.safetensors.index.json" || eng.converts.Load() != 0 {
		t.Errorf("index: %q after %d conversions, want converted after none", got, eng.converts.Load())
	}
	var idx struct {
		Metadata  map[string]int64  `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(readFile(t, filepath.Join(dst, "model.safetensors.index.json")), &idx); err != nil {
		t.Fatal(err)
	}
	// nn.Sequential(Linear(4, 3), ReLU, Linear(3, 2), LayerNorm(2)) in float32:
	// (12+3) + (6+2) + (2+2) values of 4 bytes.
	if got := idx.Metadata["total_size"]; got != 108 {
		t.Errorf("total_size = %d, want 108", got)
	}
	want := map[string]string{
		"0.weight": "model-00001-of-00003.safetensors", "0.bias": "model-00001-of-00003.safetensors",
		"2.weight": "model-00002-of-00003.safetensors", "2.bias": "model-00002-of-00003.safetensors",
		"3.weight": "model-00003-of-00003.safetensors", "3.bias": "model-00003-of-00003.safetensors",
	}
	if !maps.Equal(idx.WeightMap, want) {
		t.Errorf("weight_map = %v, want %v", idx.WeightMap, want)
	}
}

// A set that cannot have an index fails as a whole, and leaves none of its outputs; the rest
// of the batch goes on.
func TestShardedSetFailures(t *testing.T) {
	t.Parallel()
	shard1 := readFile(t, filepath.Join("..", "..", "testdata", "repo", "pytorch_model-00001-of-00003.bin"))
	for _, tc := range []struct {
		name   string
		edit   func(t *testing.T, src string)
		shards map[string]string
	}{
		{"a shard is missing", func(t *testing.T, src string) {
			os.Remove(filepath.Join(src, "pytorch_model-00002-of-00003.bin"))
		}, map[string]string{"pytorch_model-00001-of-00003.bin": "failed", "pytorch_model-00003-of-00003.bin": "failed"}},
		{"a tensor is in two shards", func(t *testing.T, src string) {
			writeFiles(t, src, map[string][]byte{"pytorch_model-00003-of-00003.bin": shard1})
		}, map[string]string{"pytorch_model-00001-of-00003.bin": "failed", "pytorch_model-00002-of-00003.bin": "failed",
			"pytorch_model-00003-of-00003.bin": "failed"}},
		{"a shard is malicious", func(t *testing.T, src string) {
			writeFiles(t, src, map[string][]byte{"pytorch_model-00002-of-00003.bin": maliciousPickle})
		}, map[string]string{"pytorch_model-00001-of-00003.bin": "failed", "pytorch_model-00002-of-00003.bin": "refused",
			"pytorch_model-00003-of-00003.bin": "failed"}},
		{"the index names a file outside its directory", func(t *testing.T, src string) {
			writeFiles(t, src, map[string][]byte{"pytorch_model.bin.index.json": []byte(`{"weight_map": {"w": "../pytorch_model.bin"}}`)})
		}, map[string]string{ // no longer in a set: single checkpoints
			"pytorch_model-00001-of-00003.bin": "converted -> model-00001-of-00003.safetensors"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			src := repo(t, nil)
			tc.edit(t, src)
			dst := filepath.Join(t.TempDir(), "dst")
			rep := run(t, convert.InProcess{}, src, dst, batch.Options{})
			got := outcomes(rep)
			for p, want := range tc.shards {
				if got[p] != want {
					t.Errorf("%s: %q, want %q", p, got[p], want)
				}
			}
			if got["pytorch_model.bin.index.json"] != "failed" {
				t.Errorf("index: %q, want failed", got["pytorch_model.bin.index.json"])
			}
			if got["legacy.pt"] != "converted -> legacy.safetensors" {
				t.Errorf("legacy.pt: %q: the rest of the batch must go on", got["legacy.pt"])
			}
			for p := range listing(t, dst) {
				if matched, _ := filepath.Match("model*", p); matched && !strings.HasPrefix(got[shardOf(p)], "converted") {
					t.Errorf("DEST keeps %s of the failed set", p)
				}
			}
			if c := rep.ExitCode(); c != 3 && c != 4 {
				t.Errorf("ExitCode = %d, want 3 or 4", c)
			}
		})
	}
}

// shardOf names the shard whose output p is.
func shardOf(p string) string { return "pytorch_" + strings.TrimSuffix(p, ".safetensors") + ".bin" }

func TestInPlace(t *testing.T) {
	t.Parallel()
	src := repo(t, map[string][]byte{"evil/pytorch_model.bin": maliciousPickle})
	before := listing(t, src)
	rep := run(t, convert.InProcess{}, src, "", batch.Options{})
	checkOutcomes(t, rep, map[string]string{
		"checkpoints/last.ckpt":            "converted -> checkpoints/last.safetensors",
		"evil/pytorch_model.bin":           "refused",
		"legacy.pt":                        "converted -> legacy.safetensors",
		"pytorch_model-00001-of-00003.bin": "converted -> model-00001-of-00003.safetensors",
		"pytorch_model-00002-of-00003.bin": "converted -> model-00002-of-00003.safetensors",
		"pytorch_model-00003-of-00003.bin": "converted -> model-00003-of-00003.safetensors",
		"pytorch_model.bin.index.json":     "converted -> model.safetensors.index.json",
	})
	after := withoutState(listing(t, src))
	for p, sum := range before {
		if after[p] != sum {
			t.Errorf("%s changed by an in-place run", p)
		}
	}
	for _, p := range []string{"legacy.safetensors", "model.safetensors.index.json", "checkpoints/last.safetensors"} {
		if _, ok := after[p]; !ok {
			t.Errorf("%s not written beside its source", p)
		}
	}

	// The next run finds its own outputs in SOURCE: they are neither sources nor collisions.
	eng := &counting{Engine: convert.InProcess{}}
	rep = run(t, eng, src, "", batch.Options{})
	checkOutcomes(t, rep, map[string]string{
		"checkpoints/last.ckpt":            "skipped -> checkpoints/last.safetensors",
		"evil/pytorch_model.bin":           "refused",
		"legacy.pt":                        "skipped -> legacy.safetensors",
		"pytorch_model-00001-of-00003.bin": "skipped -> model-00001-of-00003.safetensors",
		"pytorch_model-00002-of-00003.bin": "skipped -> model-00002-of-00003.safetensors",
		"pytorch_model-00003-of-00003.bin": "skipped -> model-00003-of-00003.safetensors",
		"pytorch_model.bin.index.json":     "skipped -> model.safetensors.index.json",
	})
	if n := eng.converts.Load() + eng.scans.Load(); n != 0 {
		t.Errorf("second in-place run called the engine %d times, want 0", n)
	}
}

// A dry run reports what a real run would do and writes nothing at all, in DEST or SOURCE.
func TestDryRun(t *testing.T) {
	t.Parallel()
	src := mixedRepo(t)
	dst := filepath.Join(t.TempDir(), "dst")
	before := listing(t, filepath.Dir(src))
	rep := run(t, convert.InProcess{}, src, dst, batch.Options{DryRun: true})
	if after := listing(t, filepath.Dir(src)); !maps.Equal(before, after) {
		t.Errorf("a dry run changed SOURCE's parent")
	}
	if _, err := os.Lstat(dst); !os.IsNotExist(err) {
		t.Errorf("a dry run created DEST: %v", err)
	}
	checkOutcomes(t, rep, mixedWant)
	if !rep.DryRun || rep.ExitCode() != 3 || rep.Summary.BytesOut != 0 {
		t.Errorf("dry run report: dry_run %v, exit %d, bytes_out %d", rep.DryRun, rep.ExitCode(), rep.Summary.BytesOut)
	}

	// In place, too.
	before = listing(t, src)
	run(t, convert.InProcess{}, src, "", batch.Options{DryRun: true})
	if after := listing(t, src); !maps.Equal(before, after) {
		t.Errorf("an in-place dry run changed SOURCE")
	}
}

// A scan of a tree reports every checkpoint's verdict; plain files have no outcome.
func TestScanOnly(t *testing.T) {
	t.Parallel()
	src := mixedRepo(t)
	before := listing(t, src)
	rep := run(t, convert.InProcess{}, src, "", batch.Options{ScanOnly: true})
	want := map[string]string{}
	for p, o := range mixedWant {
		switch {
		case o == "refused" || o == "failed" || o == "ignored":
			want[p] = o
		case o[:9] == "converted":
			want[p] = o
		}
	}
	checkOutcomes(t, rep, want)
	if after := listing(t, src); !maps.Equal(before, after) {
		t.Errorf("a scan changed SOURCE")
	}
	if rep.Destination != "" {
		t.Errorf("a scan's destination = %q, want none", rep.Destination)
	}
}

func TestOverlapRefused(t *testing.T) {
	t.Parallel()
	src := repo(t, nil)
	for _, dst := range []string{src, filepath.Join(src, "out"), filepath.Dir(src)} {
		if _, err := runErr(convert.InProcess{}, src, dst, batch.Options{}); err == nil {
			t.Errorf("DEST %s overlapping SOURCE %s: no error", dst, src)
		}
	}
}

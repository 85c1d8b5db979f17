package testkit

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/ptsafe/converter/internal/store"
)

// MaliciousPickle is a protocol 2 pickle calling posix.system("id"): what an attacker names
// pytorch_model.bin. Nothing but the converter's static parser may read it.
var MaliciousPickle = []byte("\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")

// BatchRepo writes, under dir, testdata/repo (a sharded set with its index, a Lightning
// checkpoint, a legacy file, configs and tokenizers, see gen_fixtures.py) plus a malicious
// checkpoint and a plain file in directories of their own, and returns dir.
func BatchRepo(t testing.TB, dir string) string {
	t.Helper()
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(root(), "testdata", "repo"))); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"evil/pytorch_model.bin": MaliciousPickle, "notes/README.md": []byte("# notes\n")} {
		name = filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// BatchRepoOutcomes is the outcome of every file of BatchRepo in a batch into an empty DEST.
var BatchRepoOutcomes = map[string]string{
	"adapter.safetensors":              "copied",
	"checkpoints/last.ckpt":            "converted",
	"config.json":                      "copied",
	"evil/pytorch_model.bin":           "refused",
	"legacy.pt":                        "converted",
	"merges.txt":                       "copied",
	"notes/README.md":                  "copied",
	"pytorch_model-00001-of-00003.bin": "converted",
	"pytorch_model-00002-of-00003.bin": "converted",
	"pytorch_model-00003-of-00003.bin": "converted",
	"pytorch_model.bin.index.json":     "converted",
	"tokenizer.json":                   "copied",
	"vocab.txt":                        "copied",
}

// PutDir copies the local directory dir into tree, as slash paths relative to dir.
func PutDir(t testing.TB, tree store.Tree, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, name)
		if err != nil {
			return err
		}
		return tree.Put(t.Context(), filepath.ToSlash(rel), bytes.NewReader(b), int64(len(b)), "")
	})
	if err != nil {
		t.Fatal(err)
	}
}

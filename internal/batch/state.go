package batch

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
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/store"
)

// StateDir is the directory at DEST's root (SOURCE's in place) that holds what a run needs to
// resume: one receipt per source file and, on a local tree, the lock. Walks of SOURCE skip it.
const StateDir = ".converter-batch"

// maxReceiptBytes bounds the read of one receipt (a shard's lists its tensors' names).
const maxReceiptBytes = 64 << 20

// receipt records what a run did with one source file, written after its output is in place,
// so that the next run can tell the work done from the work left.
type receipt struct {
	// The source as it was: a change of any of these redoes the file.
	Path    string    `json:"path"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
	ETag    string    `json:"etag,omitempty"`
	// Options fingerprints the options that change an outcome (allowed globals, limits).
	Options string `json:"options"`
	// Outcome is converted, copied, refused or failed; or pending while an in-place
	// conversion runs, so that the next run knows whose file the output is.
	Outcome      string              `json:"outcome"`
	Output       string              `json:"output,omitempty"`
	OutputSize   int64               `json:"output_size,omitempty"`
	SourceSHA256 string              `json:"source_sha256,omitempty"`
	OutputSHA256 string              `json:"output_sha256,omitempty"`
	Error        *convert.ErrorInfo  `json:"error,omitempty"`
	Globals      []convert.GlobalRef `json:"globals,omitempty"`
	// Tensors lists a converted file's tensors, from which a later run builds the index of a
	// sharded set the file is a shard of.
	Tensors []shardTensor `json:"tensors,omitempty"`
}

const pending = "pending"

// matches reports whether rc describes obj as it is now, under the same options.
func (rc *receipt) matches(obj store.Object, options string) bool {
	return rc != nil && rc.Path == obj.Path && rc.Size == obj.Size && rc.ModTime.Equal(obj.ModTime) &&
		rc.ETag == obj.ETag && rc.Options == options && rc.Outcome != pending
}

// state reads and writes the receipts in a tree's StateDir.
type state struct {
	tree    store.Tree // nil: no state at all (a scan)
	write   bool       // false in a dry run, which reads receipts but writes nothing
	options string
}

// optionsPrint fingerprints the conversion options an outcome depends on.
func optionsPrint(o convert.Options) string {
	allow := slices.Sorted(slices.Values(o.AllowGlobals))
	b, _ := json.Marshal(struct {
		Allow  []string
		Limits any
	}{allow, o.Limits.OrDefault()})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// receiptPath names the receipt of the source file p: hashed, so that any source path gives a
// short, flat name.
func receiptPath(p string) string {
	h := sha256.Sum256([]byte(p))
	return StateDir + "/receipts/" + hex.EncodeToString(h[:16]) + ".json"
}

// load returns the receipt of the source file p, or nil when there is none or it cannot be
// read: a missing or damaged receipt only means the file is done again.
func (s *state) load(ctx context.Context, p string) *receipt {
	if s.tree == nil {
		return nil
	}
	r, err := s.tree.Open(ctx, receiptPath(p))
	if err != nil {
		return nil
	}
	defer r.Close()
	var rc receipt
	if err := json.NewDecoder(io.LimitReader(r, maxReceiptBytes)).Decode(&rc); err != nil || rc.Path != p {
		return nil
	}
	return &rc
}

// save writes rc; it does nothing in a dry run.
func (s *state) save(ctx context.Context, rc *receipt) error {
	if !s.write {
		return nil
	}
	rc.Options = s.options
	_, err := putBytes(ctx, s.tree, receiptPath(rc.Path), mustJSON(rc))
	return err
}

// drop deletes the receipt of p.
func (s *state) drop(ctx context.Context, p string) error {
	if !s.write {
		return nil
	}
	return s.tree.Remove(ctx, receiptPath(p))
}

func mustJSON(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err) // only our own types are encoded, and they always encode
	}
	return append(b, '\n')
}

// putBytes stores b at p in tree and returns its SHA-256.
func putBytes(ctx context.Context, tree store.Tree, p string, b []byte) (string, error) {
	h := sha256.Sum256(b)
	sum := hex.EncodeToString(h[:])
	return sum, tree.Put(ctx, p, bytes.NewReader(b), int64(len(b)), sum)
}

// localRoot returns the directory of a local tree, or "" for a remote one.
func localRoot(t store.Tree) string {
	name, ok := t.LocalPath(StateDir)
	if !ok {
		return ""
	}
	return filepath.Dir(name)
}

// lock takes the run's lock in the local tree's StateDir, so that a second run on the same
// DEST fails at once instead of racing the first. A remote tree has no lock.
func lock(t store.Tree) (*os.File, error) {
	root := localRoot(t)
	if root == "" {
		return nil, nil
	}
	dir := filepath.Join(root, StateDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	return lockFile(filepath.Join(dir, "lock"))
}

// strayTemp matches the temporary files of atomicfile (".NAME.RANDOM.tmp") that a killed
// run leaves beside the outputs it was writing; strayScratch the sandbox's scratch directories.
var (
	strayTemp    = regexp.MustCompile(`^\.(.+)\.[0-9]+\.tmp$`)
	strayScratch = regexp.MustCompile(`^\.converter-scratch-`)
)

// isStray reports whether the slash path p is a temporary file of an output or receipt, or
// lies in a sandbox scratch directory: what a killed run leaves, never a file of SOURCE.
func isStray(p string) bool {
	for _, el := range strings.Split(p, "/") {
		if strayScratch.MatchString(el) {
			return true
		}
	}
	m := strayTemp.FindStringSubmatch(path.Base(p))
	return m != nil && isOutputName(m[1])
}

// isOutputName reports whether base is the name of something a run writes beside its sources.
func isOutputName(base string) bool {
	return strings.HasSuffix(base, ".safetensors") || strings.HasSuffix(base, ".safetensors.index.json")
}

// cleanStray removes what a killed run left in a local output tree. In place, SOURCE is the
// user's own tree: only the temporary files of outputs and receipts are removed there.
func cleanStray(t store.Tree, inPlace bool) error {
	root := localRoot(t)
	if root == "" {
		return nil
	}
	err := filepath.WalkDir(root, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strayScratch.MatchString(d.Name()) {
			if err := os.RemoveAll(name); err != nil {
				return err
			}
			return filepath.SkipDir
		}
		m := strayTemp.FindStringSubmatch(d.Name())
		if d.IsDir() || m == nil {
			return nil
		}
		ours := !inPlace || isOutputName(m[1]) || strings.HasPrefix(name, filepath.Join(root, StateDir)+string(filepath.Separator))
		if ours {
			return os.Remove(name)
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil // a DEST still to be created
	}
	return err
}

package batch_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
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
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/store"
)

// remote is a local tree that says it is not one, as an S3 prefix: sources are staged to
// scratch and outputs uploaded with Put.
type remote struct{ store.Tree }

func (remote) LocalPath(string) (string, bool) { return "", false }

// filesRemote is a remote DEST that takes outputs with their digests, as an S3 prefix does: it
// checks them against the bytes, as the store would, and counts the outputs. Its parts are
// small enough that outputs take several.
type filesRemote struct {
	remote
	outputs atomic.Int32
}

func (*filesRemote) FilePartSize(int64) int64 { return convert.MinHashPartSize }

func (p *filesRemote) PutFile(ctx context.Context, path string, f io.ReaderAt, size int64, sha256hex string, partSize int64, sums []string) error {
	data, err := io.ReadAll(io.NewSectionReader(f, 0, size))
	if err != nil {
		return err
	}
	var got []string
	for part := range slices.Chunk(data, int(partSize)) {
		sum := sha256.Sum256(part)
		got = append(got, hex.EncodeToString(sum[:]))
	}
	if whole := sha256.Sum256(data); !slices.Equal(got, sums) || hex.EncodeToString(whole[:]) != sha256hex {
		return fmt.Errorf("%s: digests %s %v, not those of the bytes, %x %v", path, sha256hex, sums, whole, got)
	}
	p.outputs.Add(1)
	return p.Put(ctx, path, bytes.NewReader(data), size, sha256hex)
}

func TestRemoteTrees(t *testing.T) {
	t.Parallel()
	src := mixedRepo(t)
	clean := filepath.Join(t.TempDir(), "clean")
	run(t, convert.InProcess{}, src, clean, batch.Options{})
	for _, tc := range []struct {
		name                 string
		srcRemote, dstRemote bool
		parts                bool // DEST takes the conversion's digests
	}{
		{"local to remote", false, true, false},
		{"local to a remote that takes the conversion's digests", false, true, true},
		{"remote to local", true, false, false},
		{"remote to remote", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dst := filepath.Join(t.TempDir(), "dst")
			scratch := t.TempDir()
			var s, d store.Tree
			s, _ = store.NewLocal(src)
			d, _ = store.NewLocal(dst)
			if tc.srcRemote {
				s = remote{s}
			}
			parts := &filesRemote{remote: remote{d}}
			switch {
			case tc.parts:
				d = parts
			case tc.dstRemote:
				d = remote{d}
			}
			rep, err := batch.Run(context.Background(), s, d, convert.InProcess{}, batch.Options{Workers: 2, ScratchDir: scratch})
			if err != nil {
				t.Fatal(err)
			}
			checkOutcomes(t, rep, mixedWant)
			var converted int32 // checkpoints; a set's index is written, not converted
			for _, f := range rep.Files {
				if f.Outcome == batch.Converted && strings.HasSuffix(f.Output, ".safetensors") {
					converted++
				}
			}
			if got := parts.outputs.Load(); tc.parts && got != converted {
				t.Errorf("%d outputs put with their digests; want all %d converted", got, converted)
			}
			if got, want := withoutState(listing(t, dst)), withoutState(listing(t, clean)); !maps.Equal(got, want) {
				t.Errorf("DEST differs from a local run's:\n got %v\nwant %v", got, want)
			}
			if left := listing(t, scratch); len(left) != 0 {
				t.Errorf("scratch space left: %v", left)
			}
		})
	}
}

func TestIncludeExclude(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name             string
		include, exclude []string
		want             map[string]string // a few paths and their outcomes
	}{
		{
			name:    "exclude by base name",
			exclude: []string{"*.txt", "evil"},
			want: map[string]string{"vocab.txt": "ignored", "merges.txt": "ignored", "config.json": "copied -> config.json",
				"evil/pytorch_model.bin": "refused"}, // "evil" names the directory, not the file's base name
		},
		{
			name:    "exclude a directory",
			exclude: []string{"evil/**"},
			want:    map[string]string{"evil/pytorch_model.bin": "ignored", "legacy.pt": "converted -> legacy.safetensors"},
		},
		{
			name:    "include a subtree",
			include: []string{"checkpoints/**"},
			want:    map[string]string{"checkpoints/last.ckpt": "converted -> checkpoints/last.safetensors", "legacy.pt": "ignored", "config.json": "ignored"},
		},
		{
			// Without its index the shards are single checkpoints: converted, with no new index.
			name:    "exclude the index",
			exclude: []string{"*.index.json"},
			want: map[string]string{"pytorch_model.bin.index.json": "ignored",
				"pytorch_model-00001-of-00003.bin": "converted -> model-00001-of-00003.safetensors"},
		},
		{
			name:    "include and exclude",
			include: []string{"**/*.bin"},
			exclude: []string{"training_args.bin"},
			want: map[string]string{"training_args.bin": "ignored", "evil/pytorch_model.bin": "refused",
				"legacy.pt": "ignored", "snapshot/model.bin": "converted -> snapshot/model.safetensors"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			src := mixedRepo(t)
			rep := run(t, convert.InProcess{}, src, filepath.Join(t.TempDir(), "dst"),
				batch.Options{Include: tc.include, Exclude: tc.exclude})
			got := outcomes(rep)
			for p, want := range tc.want {
				if got[p] != want {
					t.Errorf("%s: %q, want %q", p, got[p], want)
				}
			}
		})
	}
	if _, err := runErr(convert.InProcess{}, repo(t, nil), "", batch.Options{Exclude: []string{"a[b"}}); err == nil {
		t.Error("a bad glob: no error")
	}
}

func TestCollisions(t *testing.T) {
	t.Parallel()
	legacy := readFile(t, filepath.Join("..", "..", "testdata", "repo", "legacy.pt"))
	adapter := readFile(t, filepath.Join("..", "..", "testdata", "repo", "adapter.safetensors"))
	files := map[string][]byte{
		// Two checkpoints with one output name: neither wins, whatever the order.
		"a.bin": legacy, "a.pt": legacy,
		// A repository published in both formats: its safetensors file is the one DEST gets.
		"both/pytorch_model.bin": legacy, "both/model.safetensors": adapter,
	}
	want := map[string]string{
		"a.bin": "failed", "a.pt": "failed",
		"both/pytorch_model.bin": "skipped", "both/model.safetensors": "copied -> both/model.safetensors",
	}
	for _, inPlace := range []bool{false, true} {
		src := repo(t, files)
		dst := filepath.Join(t.TempDir(), "dst")
		if inPlace {
			dst = ""
			delete(want, "both/model.safetensors") // a plain file in place has no outcome
		}
		rep := run(t, convert.InProcess{}, src, dst, batch.Options{})
		got := outcomes(rep)
		for p, w := range want {
			if got[p] != w {
				t.Errorf("in place %v: %s: %q, want %q", inPlace, p, got[p], w)
			}
		}
		for _, f := range rep.Files {
			switch f.Path {
			case "a.bin":
				if f.Error == nil || !strings.Contains(f.Error.Detail, "a.bin, a.pt all convert to a.safetensors") {
					t.Errorf("a.bin: error %+v", f.Error)
				}
			case "both/pytorch_model.bin":
				if f.Detail != "SOURCE already has both/model.safetensors, copied as it is" {
					t.Errorf("both/pytorch_model.bin: detail %q", f.Detail)
				}
			}
		}
		if inPlace && string(readFile(t, filepath.Join(src, "both/model.safetensors"))) != string(adapter) {
			t.Error("in place: SOURCE's own model.safetensors was replaced")
		}
	}
}

// The report is the --report contract: these keys, these spellings.
func TestReportJSON(t *testing.T) {
	t.Parallel()
	src := mixedRepo(t)
	rep := run(t, convert.InProcess{}, src, filepath.Join(t.TempDir(), "dst"), batch.Options{})
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Top     map[string]json.RawMessage
		Summary map[string]json.RawMessage `json:"summary"`
		Files   []map[string]json.RawMessage
	}
	json.Unmarshal(b, &doc.Top)
	json.Unmarshal(doc.Top["summary"], &doc.Summary)
	json.Unmarshal(doc.Top["files"], &doc.Files)
	keys := func(m map[string]json.RawMessage) []string { return slices.Sorted(maps.Keys(m)) }
	if got, want := keys(doc.Top), []string{"converter_version", "destination", "dry_run", "files", "finished_at",
		"source", "started_at", "summary"}; !slices.Equal(got, want) {
		t.Errorf("report keys %q, want %q", got, want)
	}
	if got, want := keys(doc.Summary), []string{"bytes_in", "bytes_out", "converted", "copied", "failed",
		"ignored", "refused", "skipped"}; !slices.Equal(got, want) {
		t.Errorf("summary keys %q, want %q", got, want)
	}
	allowed := []string{"path", "outcome", "output", "source_sha256", "output_sha256", "error", "globals", "detail"}
	for _, f := range doc.Files {
		for k := range f {
			if !slices.Contains(allowed, k) {
				t.Errorf("file entry key %q", k)
			}
		}
	}
	var evil map[string]any
	for _, f := range rep.Files {
		if f.Path == "evil/pytorch_model.bin" {
			b, _ := json.Marshal(f)
			json.Unmarshal(b, &evil)
		}
	}
	if e, _ := evil["error"].(map[string]any); e["type"] != "unsafe" || e["detail"] == "" {
		t.Errorf("refused file's error: %v", evil["error"])
	}
	if g, _ := evil["globals"].([]any); len(g) != 1 {
		t.Errorf("refused file's globals: %v", evil["globals"])
	}
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	failed := func(k fault.Kind) batch.File {
		return batch.File{Outcome: batch.Failed, Error: &convert.ErrorInfo{Type: k}}
	}
	refused := batch.File{Outcome: batch.Refused, Error: &convert.ErrorInfo{Type: fault.Unsafe}}
	for _, tc := range []struct {
		name  string
		files []batch.File
		want  int
	}{
		{"all converted", []batch.File{{Outcome: batch.Converted}, {Outcome: batch.Copied}, {Outcome: batch.Ignored}}, 0},
		{"an I/O failure", []batch.File{{Outcome: batch.Converted}, failed(fault.Internal)}, 1},
		{"malformed beats I/O", []batch.File{failed(fault.Internal), failed(fault.Malformed)}, 4},
		{"over a limit", []batch.File{failed(fault.Limit)}, 4},
		{"unsupported", []batch.File{failed(fault.Unsupported)}, 4},
		{"refused beats everything", []batch.File{failed(fault.Malformed), refused, failed(fault.Internal)}, 3},
		{"nothing at all", nil, 0},
	} {
		if got := (&batch.Report{Files: tc.files}).ExitCode(); got != tc.want {
			t.Errorf("%s: ExitCode = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// progress records what a run tells its display.
type progress struct {
	mu              sync.Mutex
	files, finished int
	bytes, advanced int64
}

func (p *progress) Start(files int, bytes int64) { p.files, p.bytes = files, bytes }
func (p *progress) Advance(n int64)              { p.mu.Lock(); p.advanced += n; p.mu.Unlock() }
func (p *progress) Finish(batch.File)            { p.mu.Lock(); p.finished++; p.mu.Unlock() }

// The display reaches exactly 100%: every file announced is finished, every byte advanced.
func TestProgress(t *testing.T) {
	t.Parallel()
	src := mixedRepo(t)
	dst := filepath.Join(t.TempDir(), "dst")
	for _, run1 := range []string{"first run", "second run (all skipped)"} {
		p := &progress{}
		rep := run(t, convert.InProcess{}, src, dst, batch.Options{Progress: p})
		if p.files != len(rep.Files) || p.finished != p.files {
			t.Errorf("%s: Start(%d files), %d finished, %d in the report", run1, p.files, p.finished, len(rep.Files))
		}
		if p.advanced != p.bytes || p.bytes != rep.Summary.BytesIn {
			t.Errorf("%s: Start(%d bytes), %d advanced, bytes_in %d", run1, p.bytes, p.advanced, rep.Summary.BytesIn)
		}
	}
	os.RemoveAll(dst)
}

package batch

import (
	"encoding/binary"
	"fmt"
	"path"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/torchzip"
	"github.com/ptsafe/converter/internal/unpickler"
)

// filter holds the --include and --exclude globs.
type filter struct{ include, exclude []string }

func newFilter(include, exclude []string) (filter, error) {
	for _, p := range append(append([]string{}, include...), exclude...) {
		if !doublestar.ValidatePattern(p) {
			return filter{}, fmt.Errorf("bad glob %q", p)
		}
	}
	return filter{include, exclude}, nil
}

// matches reports whether p, a slash path relative to SOURCE, matches the glob: a glob
// without "/" also matches p's base name, as .gitignore patterns do.
func matches(glob, p string) bool {
	if ok, _ := doublestar.Match(glob, p); ok {
		return true
	}
	if strings.Contains(glob, "/") {
		return false
	}
	ok, _ := doublestar.Match(glob, path.Base(p))
	return ok
}

// excluded says why p is left out, or "" when it is not.
func (f filter) excluded(p string) string {
	for _, g := range f.exclude {
		if matches(g, p) {
			return "excluded by --exclude " + g
		}
	}
	if len(f.include) == 0 {
		return ""
	}
	for _, g := range f.include {
		if matches(g, p) {
			return ""
		}
	}
	return "matches no --include"
}

// isCandidate reports whether a file whose first bytes are head goes to the engine: anything
// torch.load could read as a container or a pickle. The rest is plain (configs, tokenizers,
// existing safetensors whose first byte is no pickle opcode).
func isCandidate(head []byte) bool { return torchzip.Sniff(head) != torchzip.Unknown }

// noPickleData reports whether the engine's verdict on a candidate (the manifest of its scan
// and the scan's error kind) shows a file that holds no pickle data torch.load could act on,
// so that it is copied like any plain file: malformed or unsupported with no global at all,
// and either no container, a NumPy file without object data (object arrays always name
// numpy globals), or text that merely starts with an opcode letter (vocab.txt's "]"), or a
// safetensors file whose header length happens to start with one. Without a global,
// pickle.load cannot call anything. A file starting with PROTO (0x80) is a truncated or broken
// checkpoint, not text, and is reported as failed.
func noPickleData(head []byte, size int64, m *convert.Manifest, kind fault.Kind) bool {
	if m == nil || (kind != fault.Malformed && kind != fault.Unsupported) || len(m.Globals) > 0 {
		return false
	}
	switch torchzip.Kind(m.Source.Container) {
	case torchzip.Unknown, torchzip.Numpy:
		return true
	case torchzip.Pickle:
		return kind == fault.Malformed && (len(head) == 0 || head[0] != 0x80 || looksLikeSafetensors(head, size))
	}
	return false
}

// headKept is how many first bytes of a file noPickleData reads: looksLikeSafetensors's
// header length and the "{" after it.
const headKept = 9

// looksLikeSafetensors reports whether head starts as a safetensors file of size bytes does:
// a little-endian header length that fits the file, then the header's "{".
func looksLikeSafetensors(head []byte, size int64) bool {
	if len(head) < headKept || head[8] != '{' {
		return false
	}
	n := binary.LittleEndian.Uint64(head)
	return n >= 2 && size >= 8 && n <= uint64(size-8)
}

// offending returns the globals that made a file unsafe: the dangerous and unknown ones.
func offending(gs []convert.GlobalRef) []convert.GlobalRef {
	var out []convert.GlobalRef
	for _, g := range gs {
		if g.Class == unpickler.Dangerous || g.Class == unpickler.Unknown {
			out = append(out, g)
		}
	}
	return out
}

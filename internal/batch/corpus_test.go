package batch_test

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/testkit"
)

// corpusSections reads SOURCES.md: the file names listed under each "## X." section letter.
func corpusSections(t *testing.T, dir string) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "SOURCES.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	section := map[string]string{}
	var cur string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "## "); ok {
			cur, _, _ = strings.Cut(rest, ".")
			continue
		}
		if rest, ok := strings.CutPrefix(line, "| `"); ok {
			name, _, _ := strings.Cut(rest, "`")
			section[name] = cur
		}
	}
	return section
}

// The third-party corpus as one store: not a single malicious file reaches DEST, whatever
// its name or container.
func TestCorpusStore(t *testing.T) {
	t.Parallel()
	dir := testkit.CorpusDir()
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("corpus directory %s not present: %v", dir, err)
	}
	dst := filepath.Join(t.TempDir(), "dst")
	rep := run(t, convert.InProcess{}, dir, dst, batch.Options{})
	section := corpusSections(t, dir)
	for _, f := range rep.Files {
		switch section[f.Path] {
		case "A":
			if f.Outcome != batch.Refused && f.Outcome != batch.Failed {
				t.Errorf("malicious %s: %s", f.Path, f.Outcome)
			}
		case "C":
			if f.Outcome != batch.Converted {
				t.Errorf("benign checkpoint %s: %s", f.Path, f.Outcome)
			}
		}
	}
	if rep.ExitCode() != 3 {
		t.Errorf("ExitCode = %d, want 3", rep.ExitCode())
	}
}

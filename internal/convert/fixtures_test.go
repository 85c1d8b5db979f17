package convert

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/fault"
)

// expected is what testdata/gen_fixtures.py recorded from real torch for one checkpoint.
type expected struct {
	Source    string `json:"source"`
	Container string `json:"container"`
	Protocol  int    `json:"protocol"`
	Tensors   []struct {
		Name   string  `json:"name"`
		DType  string  `json:"dtype"`
		Shape  []int64 `json:"shape"`
		SHA256 string  `json:"sha256"`
	} `json:"tensors"`
	Aliases map[string]string `json:"aliases"`
	Error   *string           `json:"error"`
}

// TestTorchFixtures converts every checkpoint torch wrote into testdata/torch and compares each
// tensor's name, dtype, shape and SHA-256 with what torch itself recorded.
func TestTorchFixtures(t *testing.T) {
	files, err := filepath.Glob("../../testdata/torch/*.expected.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures found: %v", err)
	}
	for _, ej := range files {
		var want expected
		b, err := os.ReadFile(ej)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatalf("%s: %v", ej, err)
		}
		t.Run(want.Source, func(t *testing.T) {
			src := filepath.Join(filepath.Dir(ej), want.Source)
			dst := filepath.Join(t.TempDir(), "out.safetensors")
			m, err := File(context.Background(), src, dst, Options{})
			if want.Error != nil {
				if err == nil {
					t.Fatalf("converted; want a %s error", *want.Error)
				}
				if got := fault.KindOf(err).String(); got != *want.Error {
					t.Fatalf("error kind %s (%v); want %s", got, err, *want.Error)
				}
				if _, statErr := os.Stat(dst); !os.IsNotExist(statErr) {
					t.Fatalf("output exists after a failed conversion")
				}
				return
			}
			if err != nil {
				t.Fatalf("convert: %v", err)
			}
			if m.Source.Container != want.Container || m.Source.Protocol != want.Protocol {
				t.Errorf("container %s protocol %d; want %s %d", m.Source.Container, m.Source.Protocol, want.Container, want.Protocol)
			}
			got := map[string]Tensor{}
			for _, tt := range m.Tensors {
				got[tt.Name] = tt
			}
			if len(got) != len(want.Tensors) {
				t.Errorf("%d tensors; want %d", len(got), len(want.Tensors))
			}
			for _, w := range want.Tensors {
				g, ok := got[w.Name]
				switch {
				case !ok:
					t.Errorf("tensor %q missing", w.Name)
				case g.DType != w.DType || !slices.Equal(g.Shape, w.Shape):
					t.Errorf("tensor %q is %s%v; want %s%v", w.Name, g.DType, g.Shape, w.DType, w.Shape)
				case g.SHA256 != w.SHA256:
					t.Errorf("tensor %q sha256 %s; want %s", w.Name, g.SHA256, w.SHA256)
				}
			}
			if len(m.Aliases) != len(want.Aliases) {
				t.Errorf("aliases %v; want %v", m.Aliases, want.Aliases)
			}
			for k, v := range want.Aliases {
				if m.Aliases[k] != v {
					t.Errorf("alias %q -> %q; want %q", k, m.Aliases[k], v)
				}
			}
			// The written file verifies against its source, independently of the conversion.
			rep, err := Verify(context.Background(), dst, src, Options{})
			if err != nil {
				t.Fatalf("verify --source: %v", err)
			}
			if rep.SHA256 != m.Output.SHA256 {
				t.Errorf("verify sha256 %s; manifest says %s", rep.SHA256, m.Output.SHA256)
			}
		})
	}
}

// TestDeterministic converts the same input twice and requires identical bytes.
func TestDeterministic(t *testing.T) {
	for _, name := range []string{"training_checkpoint.pt", "views_legacy.pt", "tied.pt"} {
		src := filepath.Join("../../testdata/torch", name)
		var sums []string
		for i := range 2 {
			m, err := File(context.Background(), src, filepath.Join(t.TempDir(), strings.Repeat("x", i+1)+".safetensors"), Options{})
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			sums = append(sums, m.Output.SHA256)
		}
		if sums[0] != sums[1] {
			t.Errorf("%s: two conversions differ: %s vs %s", name, sums[0], sums[1])
		}
	}
}

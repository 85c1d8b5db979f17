package jobs_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/jobs"
)

// What a crash leaves behind is removed at the next start, before the service can be ready:
// partial uploads, directories no job owns, a conversion's temporary output, a half-written
// manifest. A succeeded job whose output is gone is failed as lost, not served.
func TestOpenRemovesStrayFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := jobs.Open(t.Context(), jobs.Config{Dir: dir, Converter: succeeding})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	kept := waitFor(t, s, submit(t, s, "a").ID, "finished", terminal)
	lost := waitFor(t, s, submit(t, s, "b").ID, "finished", terminal)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	s.Close()

	keptDir := filepath.Join(dir, "jobs", kept.ID)
	strays := []string{
		filepath.Join(dir, "tmp", "upload-123"),
		filepath.Join(keptDir, ".output.safetensors.456.tmp"),
		filepath.Join(keptDir, ".tmp-789"),
		filepath.Join(keptDir, "input"),
		filepath.Join(dir, "jobs", "0190a5a8-0000-7000-8000-000000000000", "input"),
	}
	for _, p := range strays {
		os.MkdirAll(filepath.Dir(p), 0o750)
		if err := os.WriteFile(p, []byte("left by a crash"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(dir, "jobs", lost.ID, "output.safetensors")); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, succeeding, 0)
	for _, p := range strays {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived the restart (err %v)", strings.TrimPrefix(p, dir), err)
		}
	}
	if _, a, err := s.OpenOutput(t.Context(), "t", kept.ID); err != nil {
		t.Errorf("the kept job's output: %v", err)
	} else {
		a.Close()
	}
	j, err := s.Get(t.Context(), "t", lost.ID)
	if err != nil || j.State != jobs.StateFailed || j.Error == nil || j.Error.Type != fault.Internal || !strings.Contains(j.Error.Detail, "output lost") {
		t.Errorf("job whose output vanished = %s %+v (err %v), want failed internal output lost", j.State, j.Error, err)
	}
	if _, _, err := s.OpenReport(t.Context(), "t", lost.ID); j.HasReport || !errors.Is(err, jobs.ErrNoReport) {
		t.Errorf("lost job: HasReport %v, OpenReport %v; want no report", j.HasReport, err)
	}
}

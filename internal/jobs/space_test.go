package jobs_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/jobs"
)

// countingReader yields n zero bytes and counts what was read.
type countingReader struct{ n, read int64 }

func (r *countingReader) Read(p []byte) (int, error) {
	if r.read >= r.n {
		return 0, io.EOF
	}
	k := min(int64(len(p)), r.n-r.read)
	clear(p[:k])
	r.read += k
	return int(k), nil
}

// TestStageKeepsFreeSpace checks that an upload is refused when the data directory cannot take
// it (and an output as large) and keep Config.MinFreeBytes free: before any byte is read when
// the size is declared, and as soon as the reserve is reached when it is not. Nothing is kept.
func TestStageKeepsFreeSpace(t *testing.T) {
	const minFree = 1 << 30
	dir := t.TempDir()
	s, err := jobs.Open(t.Context(), jobs.Config{Dir: dir, MinFreeBytes: minFree, Converter: succeeding})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var free func() int64
	s.SetDiskFree(func(string) (int64, bool, error) { return free(), true, nil })
	staged := func() int {
		ents, err := os.ReadDir(filepath.Join(dir, "tmp"))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}

	// Declared: 100 MiB needs 200 MiB above the reserve.
	free = func() int64 { return minFree + 150<<20 }
	body := &countingReader{n: 100 << 20}
	if _, err := s.Stage(t.Context(), body, body.n); !errors.Is(err, jobs.ErrInsufficientStorage) {
		t.Fatalf("declared upload too large for the disk: %v; want ErrInsufficientStorage", err)
	}
	if body.read != 0 || staged() != 0 {
		t.Errorf("refused upload: %d bytes read, %d files staged; want none", body.read, staged())
	}
	up, err := s.Stage(t.Context(), strings.NewReader("small"), 5)
	if err != nil {
		t.Fatalf("an upload that fits: %v", err)
	}
	if err := up.Discard(); err != nil {
		t.Fatal(err)
	}

	// Undeclared: the disk fills as the body arrives; 100 MiB of room above the reserve.
	body = &countingReader{n: 150 << 20}
	free = func() int64 { return minFree + 100<<20 - body.read }
	_, err = s.Stage(t.Context(), body, -1)
	if !errors.Is(err, jobs.ErrInsufficientStorage) {
		t.Fatalf("undeclared upload that fills the disk: %v; want ErrInsufficientStorage", err)
	}
	if body.read >= body.n || staged() != 0 {
		t.Errorf("refused upload: %d of %d bytes read, %d files staged; want it stopped early, nothing kept", body.read, body.n, staged())
	}
}

package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/jobs"
)

// Canceling the context given to Start (a SIGTERM's signal context in serve) does not reach the
// conversions: Stop lets a running one finish within its deadline and returns nil.
func TestStopDrainsRunningConversion(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	s, err := jobs.Open(t.Context(), jobs.Config{Dir: t.TempDir(), Converter: converterFunc(
		func(ctx context.Context, _, dst string, _ convert.Options) (*convert.Manifest, error) {
			close(started)
			<-release
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return fakeOutput(dst)
		})})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	startCtx, signal := context.WithCancel(t.Context())
	if err := s.Start(startCtx); err != nil {
		t.Fatal(err)
	}
	id := submit(t, s, "x").ID
	<-started
	signal()
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stopped <- s.Stop(ctx)
	}()
	close(release)
	if err := <-stopped; err != nil {
		t.Fatalf("Stop = %v, want nil: the conversion finished before the deadline", err)
	}
	if j, err := s.Get(t.Context(), "t", id); err != nil || j.State != jobs.StateSucceeded || j.Attempts != 1 {
		t.Errorf("after Stop job = %s after %d attempts (err %v), want succeeded after 1", j.State, j.Attempts, err)
	}
}

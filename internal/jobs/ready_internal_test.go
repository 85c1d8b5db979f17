package jobs

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestCachedCheck: a probe storm within readyCache costs one check, failures included, and the
// check runs again once its answer is older; a caller's canceled context does not reach it.
func TestCachedCheck(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	calls := 0
	down := errors.New("connection refused")
	var result error
	c := &cachedCheck{now: func() time.Time { return now }, check: func(ctx context.Context) error {
		calls++
		if ctx.Err() != nil {
			t.Errorf("the check got a context already done: %v", ctx.Err())
		}
		if _, ok := ctx.Deadline(); !ok {
			t.Error("the check got no deadline")
		}
		return result
	}}
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	for i := range 100 {
		if err := c.do(canceled); err != nil {
			t.Fatalf("probe %d = %v; want nil", i, err)
		}
	}
	if calls != 1 {
		t.Errorf("100 probes within %v ran the check %d times; want 1", readyCache, calls)
	}
	result = down
	now = now.Add(readyCache - time.Nanosecond)
	if err := c.do(t.Context()); err != nil || calls != 1 {
		t.Errorf("probe just before the answer ages = %v after %d checks; want the cached nil after 1", err, calls)
	}
	now = now.Add(time.Nanosecond)
	for range 10 {
		if err := c.do(t.Context()); !errors.Is(err, down) {
			t.Errorf("probe once the answer aged = %v; want %v", err, down)
		}
	}
	if calls != 2 {
		t.Errorf("checks after the answer aged = %d; want 2 (the failure is cached too)", calls)
	}
}

package jobs

import (
	"context"
	"sync"
	"time"
)

// Readiness probes (Service.Ready) may come many times a second from every load balancer and
// orchestrator watching a node. Each dependency check gets readyTimeout, so that a store that
// does not answer makes the node unready rather than hang its probes, and a remote store's
// answer is kept for readyCache, so that a probe storm costs it one request per period.
const (
	readyTimeout = 2 * time.Second
	readyCache   = time.Second
)

// cachedCheck runs a check at most once per readyCache and answers with its latest result
// meanwhile. Callers arriving while it runs wait for that run rather than start another.
type cachedCheck struct {
	check func(context.Context) error
	now   func() time.Time

	mu  sync.Mutex
	at  time.Time // when the latest run ended; zero before the first
	err error
}

func newCachedCheck(check func(context.Context) error) *cachedCheck {
	return &cachedCheck{check: check, now: time.Now}
}

// do returns the check's result, running it when the latest is older than readyCache. The run
// is not bound to ctx (one caller giving up must not fail the others with its cancellation),
// only to readyTimeout.
func (c *cachedCheck) do(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && c.now().Sub(c.at) < readyCache {
		return c.err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), readyTimeout)
	defer cancel()
	c.err = c.check(ctx)
	c.at = c.now()
	return c.err
}

package api

import (
	"fmt"
	"sync"
)

// uploadSlots bounds the uploads received at once: total in all, and perTenant for any one
// tenant, so that one tenant cannot take every slot and lock the others out. Slots are never
// preempted: a cap that always leaves room for others is what keeps a greedy tenant from
// starving the rest, not a share computed from who is active.
type uploadSlots struct {
	total, perTenant int

	mu       sync.Mutex
	used     int
	byTenant map[string]int
}

func newUploadSlots(total, perTenant int) *uploadSlots {
	return &uploadSlots{total: total, perTenant: perTenant, byTenant: map[string]int{}}
}

// acquire takes a slot for tenant and returns the function that gives it back, or an error
// saying which bound is reached.
func (s *uploadSlots) acquire(tenant string) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byTenant[tenant] >= s.perTenant {
		return nil, fmt.Errorf("%d of your uploads are being received, the most one client may send at once; retry later", s.perTenant)
	}
	if s.used >= s.total {
		return nil, fmt.Errorf("%d uploads are being received; retry later", s.total)
	}
	s.used++
	s.byTenant[tenant]++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.used--
		if s.byTenant[tenant]--; s.byTenant[tenant] == 0 {
			delete(s.byTenant, tenant)
		}
	}, nil
}

package hook

import (
	"context"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// DefaultReplayWindow is how long a delivery is remembered.
const DefaultReplayWindow = time.Hour

// maxDeliveries bounds the deliveries remembered at once.
const maxDeliveries = 10000

// replays remembers the deliveries seen within a window: the hash of a
// signed GitHub body, a registry envelope's event IDs, a Docker Hub
// repository+tag+pushed_at (or, lacking an ID or push time, the body's
// hash). A delivery seen again is answered "duplicate" and starts nothing.
type replays struct {
	mu     sync.Mutex
	window time.Duration
	clock  fleetroll.Clock
	seen   map[string]delivery
	order  []string // oldest first
}

type delivery struct {
	at       time.Time
	rollouts []string
}

func newReplays(window time.Duration, clock fleetroll.Clock) *replays {
	return &replays{window: window, clock: clock, seen: map[string]delivery{}}
}

// claim records a delivery key and reports whether it was seen within the
// window, with the rollouts it started then. An empty key is never a replay.
func (r *replays) claim(_ context.Context, key string) ([]string, bool, error) {
	if key == "" || r.window <= 0 {
		return nil, false, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clock.Now()
	for len(r.order) > 0 && (len(r.order) >= maxDeliveries || now.Sub(r.seen[r.order[0]].at) >= r.window) {
		delete(r.seen, r.order[0])
		r.order = r.order[1:]
	}
	if d, ok := r.seen[key]; ok {
		return d.rollouts, true, nil
	}
	r.seen[key] = delivery{at: now}
	r.order = append(r.order, key)
	return nil, false, nil
}

// started notes the rollouts a claimed delivery started.
func (r *replays) started(_ context.Context, key string, ids []string) {
	if key == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if d, ok := r.seen[key]; ok {
		d.rollouts = ids
		r.seen[key] = d
	}
}

// forget drops a claimed delivery that started nothing (it was refused), so
// that the sender's retry is not taken for a replay.
func (r *replays) forget(_ context.Context, key string) {
	if key == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.seen, key)
}

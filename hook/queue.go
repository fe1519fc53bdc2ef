package hook

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// ErrShuttingDown is returned by Submit once the queue stopped taking work.
var ErrShuttingDown = errors.New("fleetroll is shutting down")

// Queue runs rollouts, at most one per service at a time and at most
// MaxParallel in all. A trigger for a service whose rollout is queued takes
// its place: the queued rollout is marked superseded and points to the new
// one, so triggers that arrive while a rollout runs coalesce into exactly one
// follow-up carrying the newest trigger. A trigger that repeats the push of
// the queued (or running) rollout merges into it. A queued rollout starts once
// no trigger has touched it for the quiet period.
type Queue struct {
	store       *Store
	exec        func(ctx context.Context, r Rollout)
	maxParallel int
	quiet       time.Duration
	now         func() time.Time

	// Guarded by store.mu. The queue holds its rollouts itself: the store
	// may drop a record from its history once it is final, which a running
	// rollout's record becomes a little before the queue lets go of it.
	queued  map[string]*Rollout // service -> queued rollout
	running map[string]*Rollout // service -> running rollout
	fifo    []string            // services with a queued rollout, oldest first
	closed  bool

	wake chan struct{}
}

// NewQueue returns a queue that records rollouts in store and runs each with
// exec, which must return when the rollout is over.
func NewQueue(store *Store, exec func(ctx context.Context, r Rollout), maxParallel int, quiet time.Duration) *Queue {
	return &Queue{
		store: store, exec: exec, maxParallel: max(maxParallel, 1), quiet: quiet, now: time.Now,
		queued: map[string]*Rollout{}, running: map[string]*Rollout{}, wake: make(chan struct{}, 1),
	}
}

// Submit records a trigger for a service and returns the rollout that will
// carry it, and whether the trigger merged into an existing rollout.
func (q *Queue) Submit(service string, t TriggerInfo) (Rollout, bool, error) {
	s := q.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if q.closed {
		return Rollout{}, false, ErrShuttingDown
	}
	now := q.now()
	if cur, ok := q.running[service]; ok && t.Source != SourceManual && cur.Trigger.key() == t.key() {
		return cur.clone(), true, nil
	}
	r := &Rollout{ID: fleetroll.NewID(), Service: service, Status: StatusQueued, Trigger: t, Created: now, touched: now}
	if old, ok := q.queued[service]; ok {
		if old.Trigger.key() == t.key() {
			old.touched = now
			return old.clone(), true, nil
		}
		old.Status, old.SupersededBy, old.Finished = StatusSuperseded, r.ID, &now
		r.Supersedes = append(append([]string(nil), old.Supersedes...), old.ID)
		for _, sid := range old.Supersedes {
			if o, ok := s.byID[sid]; ok {
				o.SupersededBy = r.ID
			}
		}
		old.Supersedes = nil
		q.queued[service] = r
	} else {
		q.queued[service] = r
		q.fifo = append(q.fifo, service)
	}
	s.addLocked(r)
	q.poke()
	return r.clone(), false, nil
}

// Depth returns the number of queued and running rollouts.
func (q *Queue) Depth() (queued, running int) {
	q.store.mu.Lock()
	defer q.store.mu.Unlock()
	return len(q.queued), len(q.running)
}

func (q *Queue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Run starts queued rollouts until ctx is done. Then it stops taking
// triggers, marks the queued rollouts cancelled, and returns once the running
// ones (which see ctx cancelled and stop safely) have returned.
func (q *Queue) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for {
		next := q.startReady(ctx, &wg)
		var timer *time.Timer
		var fire <-chan time.Time
		if next > 0 {
			timer = time.NewTimer(next)
			fire = timer.C
		}
		select {
		case <-ctx.Done():
			q.close()
			wg.Wait()
			return
		case <-q.wake:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// startReady starts every queued rollout that may run now and returns how
// long until the next one's quiet period ends (0: none waiting on one).
func (q *Queue) startReady(ctx context.Context, wg *sync.WaitGroup) time.Duration {
	s := q.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if ctx.Err() != nil {
		return 0 // shutting down: nothing new starts
	}
	now := q.now()
	var next time.Duration
	for i := 0; i < len(q.fifo) && len(q.running) < q.maxParallel; {
		service := q.fifo[i]
		if _, busy := q.running[service]; busy {
			i++
			continue
		}
		r := q.queued[service]
		if wait := r.touched.Add(q.quiet).Sub(now); wait > 0 {
			if next == 0 || wait < next {
				next = wait
			}
			i++
			continue
		}
		q.fifo = append(q.fifo[:i], q.fifo[i+1:]...)
		delete(q.queued, service)
		q.running[service] = r
		r.Status, r.Started = StatusRunning, &now
		snapshot := r.clone()
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.exec(ctx, snapshot)
			s.mu.Lock()
			delete(q.running, service)
			s.mu.Unlock()
			q.poke()
		}()
	}
	return next
}

func (q *Queue) close() {
	s := q.store
	s.mu.Lock()
	defer s.mu.Unlock()
	q.closed = true
	now := q.now()
	for service, r := range q.queued {
		r.Status, r.Finished, r.Error = StatusCancelled, &now, "fleetroll shut down before this rollout started"
		delete(q.queued, service)
	}
	q.fifo = nil
}

package hook

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// ErrShuttingDown is returned by Submit once the queue stopped taking work.
var ErrShuttingDown = errors.New("fleetroll is shutting down")

// MaxSupersedes is how many superseded rollouts a rollout names (the newest);
// older ones are only counted (queue.supersedes_dropped), so a burst of any
// length keeps the record and each Submit small.
const MaxSupersedes = 20

// Job is one rollout the queue hands to its executor.
type Job struct {
	ID      string
	Service string
	Trigger fleetroll.Trigger
	// Callbacks are the Docker Hub callback URLs of its trigger and of the
	// newest triggers it superseded (at most MaxSupersedes+1).
	Callbacks []string
	// Resume is the record of this rollout as another receiver left it
	// (serve with etcd): the units it restarted are not restarted again.
	Resume *fleetroll.Report
	// entry is the trigger's key in the durable queue ("" in memory), and
	// lease tells whether this receiver's claim on it is still sure.
	entry string
	lease func() error
}

// QueueOptions tune a Queue.
type QueueOptions struct {
	// MaxParallel bounds rollouts of different services at once (min 1).
	MaxParallel int
	// Quiet: a queued rollout starts once no trigger touched it for this
	// long...
	Quiet time.Duration
	// ...or, at the latest, MaxWait after its oldest trigger arrived, so a
	// steady stream of triggers cannot postpone it for ever (0: no bound).
	MaxWait time.Duration
	// AfterRun, when set, is called with each job once its service's slot
	// is free again (callbacks go out from there).
	AfterRun func(Job)
	Clock    fleetroll.Clock
}

// Queue runs rollouts, at most one per service at a time and at most
// MaxParallel in all. A trigger for a service whose rollout is queued takes
// its place: the queued rollout is marked superseded and points to the new
// one, so triggers that arrive while a rollout runs coalesce into exactly one
// follow-up carrying the newest trigger. A trigger that repeats the push of
// the queued (or running) rollout merges into it. The queue has its own lock
// and records what it does in the store.
type Queue struct {
	mu    sync.Mutex
	store *Store
	exec  func(ctx context.Context, j Job)
	opt   QueueOptions

	queued  map[string]*item // service -> queued rollout
	running map[string]*item // service -> running rollout
	fifo    []string         // services with a queued rollout, oldest first
	closed  bool
	changed chan struct{} // closed and replaced when queued or running change

	wake chan struct{}
}

type item struct {
	job        Job
	key        string
	first      time.Time // the oldest trigger this rollout carries or replaced
	touched    time.Time // the newest trigger merged into it
	supersedes []string
	dropped    int
}

// NewQueue returns a queue that records rollouts in store and runs each with
// exec, which must return when the rollout is over.
func NewQueue(store *Store, exec func(ctx context.Context, j Job), opt QueueOptions) *Queue {
	opt.MaxParallel = max(opt.MaxParallel, 1)
	if opt.Clock == nil {
		opt.Clock = fleetroll.SystemClock{}
	}
	return &Queue{store: store, exec: exec, opt: opt,
		queued: map[string]*item{}, running: map[string]*item{}, wake: make(chan struct{}, 1), changed: make(chan struct{})}
}

// triggerKey identifies a push: the same key twice is the same push
// delivered twice.
func triggerKey(t fleetroll.Trigger) string {
	return t.Source + "|" + t.Repository + "|" + t.Tag + "|" + t.Digest + "|" + t.PushedAt
}

// Submit records a trigger for a service (with the Docker Hub callback URL
// to report to, if any) and returns the rollout that will carry it, and
// whether the trigger merged into an existing rollout.
func (q *Queue) Submit(_ context.Context, service string, t fleetroll.Trigger, callback string) (fleetroll.Report, bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return fleetroll.Report{}, false, ErrShuttingDown
	}
	now := q.opt.Clock.Now()
	key := triggerKey(t)
	if cur, ok := q.running[service]; ok && t.Source != string(SourceManual) && cur.key == key {
		return q.recordOf(cur), true, nil
	}
	if old, ok := q.queued[service]; ok && old.key == key {
		old.touched = now
		old.job.Callbacks = addCallback(old.job.Callbacks, callback)
		return q.recordOf(old), true, nil
	}
	id := fleetroll.NewID()
	it := &item{job: Job{ID: id, Service: service, Trigger: t, Callbacks: addCallback(nil, callback)}, key: key, first: now, touched: now}
	if old, ok := q.queued[service]; ok {
		it.first = old.first
		it.supersedes = append(slices.Clone(old.supersedes), old.job.ID)
		it.dropped = old.dropped
		if n := len(it.supersedes) - MaxSupersedes; n > 0 {
			it.supersedes = slices.Clone(it.supersedes[n:])
			it.dropped += n
		}
		it.job.Callbacks = addCallback(slices.Clone(old.job.Callbacks), callback)
		q.store.Update(old.job.ID, func(r *fleetroll.Report) {
			r.Status = fleetroll.StatusSuperseded
			r.Queue.SupersededBy, r.Queue.Supersedes, r.Queue.SupersedesDropped = id, nil, 0
		})
		for _, sid := range old.supersedes {
			q.store.Update(sid, func(r *fleetroll.Report) { r.Queue.SupersededBy = id })
		}
		q.queued[service] = it
	} else {
		q.queued[service] = it
		q.fifo = append(q.fifo, service)
	}
	rec := fleetroll.Report{Version: fleetroll.SchemaVersion, ID: id, Service: service, Status: fleetroll.StatusQueued,
		Trigger: t, Units: []fleetroll.UnitReport{},
		Queue: &fleetroll.QueueInfo{Queued: now, Supersedes: it.supersedes, SupersedesDropped: it.dropped}}
	q.store.Put(rec)
	q.notifyLocked()
	q.poke()
	return rec, false, nil
}

// addCallback adds a callback URL once, keeping the newest MaxSupersedes+1.
func addCallback(cbs []string, cb string) []string {
	if cb == "" || slices.Contains(cbs, cb) {
		return cbs
	}
	cbs = append(cbs, cb)
	if n := len(cbs) - (MaxSupersedes + 1); n > 0 {
		cbs = cbs[n:]
	}
	return cbs
}

// recordOf returns the store's record of an item, or a minimal one when the
// store already let it go.
func (q *Queue) recordOf(it *item) fleetroll.Report {
	if r, ok := q.store.Get(it.job.ID); ok {
		return r
	}
	return fleetroll.Report{Version: fleetroll.SchemaVersion, ID: it.job.ID, Service: it.job.Service, Trigger: it.job.Trigger, Units: []fleetroll.UnitReport{}}
}

// Depth returns the number of queued and running rollouts.
func (q *Queue) Depth() (queued, running int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.queued), len(q.running)
}

// Cancel takes a queued rollout out of the queue before it runs.
func (q *Queue) Cancel(_ context.Context, id, by string) (fleetroll.Report, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for service, it := range q.queued {
		if it.job.ID != id {
			continue
		}
		delete(q.queued, service)
		q.fifo = slices.DeleteFunc(q.fifo, func(s string) bool { return s == service })
		rec, _ := q.store.Update(id, func(r *fleetroll.Report) {
			r.Status, r.Finished, r.Error = fleetroll.StatusCancelled, q.opt.Clock.Now(), "cancelled by "+by+" before it ran"
		})
		q.notifyLocked()
		return rec, nil
	}
	return fleetroll.Report{}, fmt.Errorf("rollout %s: %w", id, ErrNotQueued)
}

// Newer reports whether a trigger of j's service waits behind it.
func (q *Queue) Newer(_ context.Context, j Job) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queued[j.Service] != nil
}

// Changed returns a channel closed at the next change of what is queued or
// running.
func (q *Queue) Changed() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.changed
}

func (q *Queue) notifyLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
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
		var timer fleetroll.Timer
		var fire <-chan time.Time
		if next > 0 {
			timer = q.opt.Clock.NewTimer(next)
			fire = timer.C()
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
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

// due is when a queued rollout may start.
func (q *Queue) due(it *item) time.Time {
	at := it.touched.Add(q.opt.Quiet)
	if q.opt.MaxWait > 0 {
		if limit := it.first.Add(q.opt.MaxWait); limit.Before(at) {
			at = limit
		}
	}
	return at
}

// startReady starts every queued rollout that may run now and returns how
// long until the next one is due (0: none waiting).
func (q *Queue) startReady(ctx context.Context, wg *sync.WaitGroup) time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	if ctx.Err() != nil {
		return 0 // shutting down: nothing new starts
	}
	now := q.opt.Clock.Now()
	var next time.Duration
	for i := 0; i < len(q.fifo) && len(q.running) < q.opt.MaxParallel; {
		service := q.fifo[i]
		if _, busy := q.running[service]; busy {
			i++
			continue
		}
		it := q.queued[service]
		if wait := q.due(it).Sub(now); wait > 0 {
			if next == 0 || wait < next {
				next = wait
			}
			i++
			continue
		}
		q.fifo = append(q.fifo[:i], q.fifo[i+1:]...)
		delete(q.queued, service)
		q.running[service] = it
		q.notifyLocked()
		q.store.Update(it.job.ID, func(r *fleetroll.Report) { r.Status = fleetroll.StatusRunning })
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.exec(ctx, it.job)
			q.mu.Lock()
			delete(q.running, service)
			q.notifyLocked()
			q.mu.Unlock()
			q.poke()
			if q.opt.AfterRun != nil {
				q.opt.AfterRun(it.job)
			}
		}()
	}
	return next
}

func (q *Queue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for service, it := range q.queued {
		q.store.Update(it.job.ID, func(r *fleetroll.Report) {
			r.Status, r.Error = fleetroll.StatusCancelled, "fleetroll shut down before this rollout started"
		})
		delete(q.queued, service)
	}
	q.fifo = nil
	q.notifyLocked()
}

package hook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	client "go.etcd.io/etcd/client/v2"
)

// scheduler is what the server needs of a queue: the in-memory Queue of a
// lone receiver, or the durable queue in etcd that several receivers share.
type scheduler interface {
	Submit(ctx context.Context, service string, t fleetroll.Trigger, callback string) (fleetroll.Report, bool, error)
	Run(ctx context.Context)
	Depth() (queued, running int)
	Changed() <-chan struct{}
	// Newer reports whether a trigger of j's service newer than j waits
	// (it would supersede j).
	Newer(ctx context.Context, j Job) bool
	// Cancel takes a queued rollout out of the queue before it runs: its
	// record is cancelled. ErrNotQueued when it is not waiting (unknown,
	// running or over).
	Cancel(ctx context.Context, id, by string) (fleetroll.Report, error)
}

// ErrNotQueued is why a rollout could not be cancelled: it is not waiting
// in the queue (it runs, it is over, or there is no such rollout).
var ErrNotQueued = errors.New("no such rollout is queued")

// durable is the trigger queue of serve with etcd. Each accepted trigger is
// written to etcd (coord.Triggers) before its sender is answered, and
// deleted once its rollout has ended. Every receiver watches the queue; the
// one that takes a service's claim (a lease) runs that service's rollouts,
// the newest trigger superseding the older ones, and the others take over
// when its lease lapses: they restore what it had in flight (the intent
// record, through the service's lock) and resume its rollout, skipping the
// units it had restarted. Without a receiver, nothing is lost: the next one
// to start runs what is queued.
type durable struct {
	kapi     client.KeysAPI
	triggers coord.Triggers
	store    *Store
	// exec runs a rollout; ended is false when it stopped before its end
	// (shutdown, lease lost, the service's lock held by a CLI): the
	// trigger then stays queued.
	exec    func(ctx context.Context, j Job) (ended bool)
	recover func(ctx context.Context, service string)
	// services are the configured services (the others' entries wait).
	services func() []string
	opt      QueueOptions
	owner    string
	ttl      time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	running map[string]bool
	queued  int
	suspect map[string]bool // services whose lock expired: check for an intent
	changed chan struct{}
	wake    chan struct{}
	// adding holds one lock per service: this receiver's submits of a
	// service go to etcd one at a time, so they never race each other
	// for its waiting entry (only other receivers' may).
	adding map[string]chan struct{}
}

func newDurable(kapi client.KeysAPI, store *Store, opt QueueOptions, owner string, ttl time.Duration, log *slog.Logger) *durable {
	opt.MaxParallel = max(opt.MaxParallel, 1)
	if opt.Clock == nil {
		opt.Clock = fleetroll.SystemClock{}
	}
	return &durable{kapi: kapi, triggers: coord.Triggers{KAPI: kapi}, store: store, opt: opt, owner: owner, ttl: ttl, log: log,
		running: map[string]bool{}, suspect: map[string]bool{}, changed: make(chan struct{}), wake: make(chan struct{}, 1),
		adding: map[string]chan struct{}{}}
}

// Submit writes the trigger to etcd. The same push, from any receiver,
// merges into the rollout that carries it while that one is queued or
// running (a manual trigger during a run gets a rollout of its own).
func (d *durable) Submit(ctx context.Context, service string, t fleetroll.Trigger, callback string) (fleetroll.Report, bool, error) {
	d.mu.Lock()
	adding := d.adding[service]
	if adding == nil {
		adding = make(chan struct{}, 1)
		d.adding[service] = adding // one per configured service
	}
	d.mu.Unlock()
	select {
	case adding <- struct{}{}:
		defer func() { <-adding }()
	case <-ctx.Done():
		return fleetroll.Report{}, false, fmt.Errorf("queue %s: %w", service, ctx.Err())
	}
	now := d.opt.Clock.Now()
	add, err := d.triggers.Add(ctx, service, triggerKey(t), t.Source == string(SourceManual), func() fleetroll.Report {
		return fleetroll.Report{Version: fleetroll.SchemaVersion, ID: fleetroll.NewID(), Service: service, Status: fleetroll.StatusQueued,
			Trigger: t, Units: []fleetroll.UnitReport{}, Queue: &fleetroll.QueueInfo{Queued: now}}
	}, callback, func(old coord.QueuedTrigger, e *coord.QueuedTrigger) { handOn(old).carry(e) })
	if err != nil {
		return fleetroll.Report{}, false, err
	}
	if !add.Merged {
		if old := add.Superseded; old != nil {
			// It never left the queue: the new rollout's record names it;
			// it is not recorded on its own (a flood of pushes must not
			// push the service's real rollouts out of the history).
			d.store.Put(d.supersededRecord(old.Record, add.Entry.Record.ID))
			// Those it had superseded, perhaps at another receiver, which
			// this receiver still holds as queued.
			if q := old.Record.Queue; q != nil {
				for _, sid := range q.Supersedes {
					if r, ok := d.store.Get(sid); ok && r.Status == fleetroll.StatusQueued {
						d.store.Put(d.supersededRecord(r, add.Entry.Record.ID))
					}
				}
			}
		}
		// A receiver's queue may have taken the new rollout up already
		// (its account, with what it superseded, is the newer one).
		d.store.PutNew(add.Entry.Record)
		d.poke()
	}
	return add.Entry.Record, add.Merged, nil
}

func (d *durable) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *durable) notifyLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// Changed returns a channel closed at the next change of what this
// receiver runs.
func (d *durable) Changed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.changed
}

// Depth returns the triggers waiting in etcd (as last seen) and the
// rollouts this receiver runs.
func (d *durable) Depth() (queued, running int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queued, len(d.running)
}

// Run runs the queue until ctx ends, then returns once this receiver's
// rollouts have stopped safely; their triggers, and the queued ones, stay
// in etcd for the next receiver.
func (d *durable) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wctx, stopWatch := context.WithCancel(ctx)
	var watchers sync.WaitGroup
	watchers.Add(3)
	go func() {
		defer watchers.Done()
		coord.Watch(wctx, d.kapi, coord.QueuePrefix, func(*client.Response) { d.poke() })
	}()
	go func() {
		defer watchers.Done()
		d.watchFeed(wctx)
	}()
	go func() {
		defer watchers.Done()
		coord.Watch(wctx, d.kapi, coord.LockPrefix, func(resp *client.Response) {
			if resp != nil && resp.Action == "expire" {
				d.mu.Lock()
				d.suspect[path.Base(resp.Node.Key)] = true
				d.mu.Unlock()
				d.poke()
			}
		})
	}()
	// At start-up, any service may hold an intent of a fleetroll gone.
	d.mu.Lock()
	for _, s := range d.services() {
		d.suspect[s] = true
	}
	d.mu.Unlock()
	// The watches wake the loop; a resync every third of the lease catches
	// what a broken watch missed.
	resync := max(d.ttl/3, time.Second)
	for {
		next := d.scan(ctx, &wg)
		if next <= 0 || next > resync {
			next = resync
		}
		timer := d.opt.Clock.NewTimer(next)
		select {
		case <-ctx.Done():
			timer.Stop()
			stopWatch()
			watchers.Wait()
			wg.Wait()
			return
		case <-d.wake:
		case <-timer.C():
		}
		timer.Stop()
	}
}

// scan starts what may run now: for each configured service with triggers
// that are due and no runner, it takes the claim and runs them. It returns
// how long until the next trigger is due (0: none waiting).
func (d *durable) scan(ctx context.Context, wg *sync.WaitGroup) time.Duration {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	all, err := d.triggers.List(lctx)
	cancel()
	if err != nil {
		d.log.Warn("queue in etcd unreadable; retrying", "error", err.Error())
		return time.Second
	}
	configured := map[string]bool{}
	for _, s := range d.services() {
		configured[s] = true
	}
	now := d.opt.Clock.Now()
	var next time.Duration
	type candidate struct {
		service  string
		triggers bool
	}
	var start []candidate
	d.mu.Lock()
	d.queued = 0
	for service, es := range all {
		for _, e := range es {
			if e.Runner == "" {
				d.queued++
			}
		}
		if !configured[service] || d.running[service] || len(d.running) >= d.opt.MaxParallel || len(es) == 0 {
			continue
		}
		if wait := d.due(es).Sub(now); wait > 0 {
			if next == 0 || wait < next {
				next = wait
			}
			continue
		}
		d.running[service] = true // reserved while its claim is asked for
		start = append(start, candidate{service, true})
	}
	for service := range d.suspect {
		switch {
		case !configured[service] || d.running[service] || len(all[service]) > 0:
			delete(d.suspect, service) // a rollout of it recovers first
		case len(d.running) < d.opt.MaxParallel:
			delete(d.suspect, service)
			d.running[service] = true
			start = append(start, candidate{service, false})
		}
	}
	d.mu.Unlock()
	for _, c := range start {
		d.start(ctx, wg, c.service, c.triggers)
	}
	return next
}

// due is when a service's triggers may run: after the quiet period since
// the newest, or MaxWait after the oldest; at once when one was running
// (its receiver is gone).
func (d *durable) due(es []coord.QueuedTrigger) time.Time {
	newest := es[len(es)-1].Record.Queue
	var first time.Time
	for _, e := range es {
		if e.Runner != "" || e.Record.Queue == nil {
			return time.Time{}
		}
		if f := firstQueued(e.Record.Queue); first.IsZero() || f.Before(first) {
			first = f
		}
	}
	at := newest.Queued.Add(d.opt.Quiet)
	if d.opt.MaxWait > 0 {
		if limit := first.Add(d.opt.MaxWait); limit.Before(at) {
			at = limit
		}
	}
	return at
}

// start takes the service's claim (without waiting: a receiver that holds
// it runs the service) and runs its queue, or only the recovery of a dead
// fleetroll's intent. The service is reserved in d.running.
func (d *durable) start(ctx context.Context, wg *sync.WaitGroup, service string, triggers bool) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	held, err := d.triggers.Claim(service, d.owner, d.ttl).Acquire(cctx, false)
	cancel()
	if err != nil {
		d.mu.Lock()
		delete(d.running, service)
		d.mu.Unlock()
		if !errors.Is(err, coord.ErrLocked) { // locked: another receiver runs it; its lease's end wakes us
			d.log.Warn("queue claim failed", "service", service, "error", err.Error())
		}
		return
	}
	d.mu.Lock()
	d.notifyLocked()
	d.mu.Unlock()
	wg.Add(1)
	go func() {
		defer wg.Done()
		// The claim is a lease: once it is lost, another receiver may
		// take over, so this one stops (the roller brings its unit back).
		rctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-held.Lost():
				cancel()
			case <-rctx.Done():
			}
		}()
		if triggers {
			d.runOne(rctx, service, held.Valid)
		} else {
			d.recover(rctx, service)
		}
		cancel()
		relCtx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = held.Release(relCtx)
		rcancel()
		d.mu.Lock()
		delete(d.running, service)
		d.notifyLocked()
		d.mu.Unlock()
		d.poke()
	}()
}

// supersede removes the entries olds from the queue. It returns what
// they hand on, for the entry that takes their place to carry, and the
// entries removed, for record once that entry is known.
func (d *durable) supersede(ctx context.Context, olds []coord.QueuedTrigger) (sup superseded, removed []coord.QueuedTrigger, err error) {
	for _, e := range olds {
		old, err := d.triggers.Remove(ctx, e.Key)
		if isKeyNotFound(err) {
			continue // superseded meanwhile
		}
		if err != nil {
			d.log.Warn("queue: superseded trigger not removed", "rollout_id", e.Record.ID, "error", err.Error())
			return sup, removed, err
		}
		sup.add(handOn(old))
		removed = append(removed, old)
	}
	return sup, removed, nil
}

// record says that the rollout id took the place of the entries removed
// (one that was running, its receiver gone, was interrupted), in this
// receiver's store and the history.
func (d *durable) record(ctx context.Context, removed []coord.QueuedTrigger, id string) {
	if len(removed) == 0 {
		return
	}
	// Their entries are gone: recorded even when the queue's read of them
	// timed out or the receiver is stopping.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, old := range removed {
		rec := d.supersededRecord(old.Record, id)
		d.store.Put(rec)
		// One that was running: the recovery of its intent records it
		// too, before or after; the two are joined.
		if err := (coord.History{KAPI: d.kapi}).Amend(ctx, rec, fleetroll.JoinInterrupted); err != nil {
			d.log.Warn("superseded rollout not recorded", "rollout_id", rec.ID, "error", err.Error())
		}
	}
}

// errNotOurs: a queue entry that no longer carries the rollout this
// receiver ran (another receiver took it over).
var errNotOurs = errors.New("the queue entry carries another receiver's rollout now")

// supersededRecord is the record of a rollout that a newer one (id) took
// the place of: superseded, or interrupted when it was running (its
// receiver gone).
func (d *durable) supersededRecord(r fleetroll.Report, id string) fleetroll.Report {
	rec := r.Clone()
	if rec.Queue == nil {
		rec.Queue = &fleetroll.QueueInfo{}
	}
	rec.Queue.SupersededBy = id
	rec.Finished = d.opt.Clock.Now()
	if rec.Status == fleetroll.StatusRunning {
		rec.Status, rec.Error = fleetroll.StatusInterrupted, "the receiver running it stopped; a newer trigger ("+id+") took its place"
	} else {
		rec.Status = fleetroll.StatusSuperseded
	}
	return rec
}

// handOn is what a superseded entry hands on to the one that takes its
// place: its rollout and those it had superseded, its callbacks, and when
// the first of them was queued.
func handOn(old coord.QueuedTrigger) superseded {
	sup := superseded{ids: []string{old.Record.ID}, callbacks: old.Callbacks}
	if q := old.Record.Queue; q != nil {
		sup.ids = append(slices.Clone(q.Supersedes), old.Record.ID)
		sup.dropped, sup.first = q.SupersedesDropped, firstQueued(q)
	}
	return sup
}

// superseded is what the entries a trigger superseded hand on to it.
type superseded struct {
	ids       []string // their rollouts, and those they had superseded
	dropped   int      // the older ones, only counted
	callbacks []string
	first     time.Time // when the oldest of them was queued
}

// add gathers what one more superseded entry hands on.
func (sup *superseded) add(o superseded) {
	sup.ids = append(sup.ids, o.ids...)
	sup.dropped += o.dropped
	sup.callbacks = append(sup.callbacks, o.callbacks...)
	if !o.first.IsZero() && (sup.first.IsZero() || o.first.Before(sup.first)) {
		sup.first = o.first
	}
}

// firstQueued is when the oldest trigger a queued rollout carries arrived.
func firstQueued(q *fleetroll.QueueInfo) time.Time {
	if q.FirstQueued.IsZero() || q.Queued.Before(q.FirstQueued) {
		return q.Queued
	}
	return q.FirstQueued
}

// carry puts them in the superseding entry q: the newest MaxSupersedes
// rollouts named, the rest counted, and the callbacks.
func (sup superseded) carry(q *coord.QueuedTrigger) {
	if q.Record.Queue == nil {
		q.Record.Queue = &fleetroll.QueueInfo{}
	}
	qi := q.Record.Queue
	if !sup.first.IsZero() && sup.first.Before(firstQueued(qi)) {
		qi.FirstQueued = sup.first
	}
	qi.Supersedes = append(qi.Supersedes, sup.ids...)
	qi.SupersedesDropped += sup.dropped
	if n := len(qi.Supersedes) - MaxSupersedes; n > 0 {
		qi.Supersedes = qi.Supersedes[n:]
		qi.SupersedesDropped += n
	}
	// The carried ones first, the entry's own last: past the bound, the
	// oldest go, never the newest push's.
	own := q.Callbacks
	q.Callbacks = nil
	for _, cb := range append(slices.Clone(sup.callbacks), own...) {
		q.Callbacks = addCallback(q.Callbacks, cb)
	}
}

// runOne runs the newest trigger of a service; the older ones are
// superseded by it (their callbacks report its result).
func (d *durable) runOne(ctx context.Context, service string, lease func() error) {
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	all, err := d.triggers.List(wctx)
	if err != nil || len(all[service]) == 0 {
		return
	}
	es := all[service]
	newest := es[len(es)-1]
	id := newest.Record.ID
	sup, removed, err := d.supersede(wctx, es[:len(es)-1])
	if err != nil {
		d.record(wctx, removed, id)
		return
	}
	var resume *fleetroll.Report
	e, err := d.triggers.Update(wctx, newest.Key, func(e *coord.QueuedTrigger) {
		if e.Runner != "" || e.Record.Restarted() > 0 {
			r := e.Record.Clone()
			resume = &r
			// Taken over from a receiver gone, or put back by one that
			// stopped: every receiver's stream says who goes on with it.
			e.Event = &coord.EntryEvent{Kind: "resumed"}
		}
		e.Runner, e.Record.By = d.owner, d.owner
		e.Record.Status = fleetroll.StatusRunning
		sup.carry(e)
	})
	if err != nil {
		d.log.Warn("queue: trigger not taken", "rollout_id", id, "error", err.Error())
		d.record(wctx, removed, id)
		return
	}
	id = e.Record.ID // a newer push may have taken the entry's place meanwhile
	d.record(wctx, removed, id)
	cancel()
	d.store.Take(e.Record)
	defer d.store.Release(id)
	j := Job{ID: id, Service: service, Trigger: e.Record.Trigger, Callbacks: e.Callbacks, Resume: resume, entry: e.Key, lease: lease}
	ended := d.exec(ctx, j)
	final, _ := d.store.Get(id)
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer fcancel()
	if !ended {
		// Not over: back in the queue with the progress made, for this
		// receiver or another to resume.
		final.Status = fleetroll.StatusQueued
		if _, err := d.triggers.UpdateIf(fctx, e.Key, func(cur coord.QueuedTrigger) error {
			if cur.Runner != d.owner || cur.Record.ID != id {
				return errNotOurs // another receiver took it over meanwhile: it runs it
			}
			return nil
		}, func(e *coord.QueuedTrigger) { e.Record, e.Runner = final, "" }); err != nil {
			d.log.Warn("queue: trigger not put back", "rollout_id", id, "error", err.Error())
		}
		d.store.Update(id, func(r *fleetroll.Report) { r.Status = fleetroll.StatusQueued })
		return
	}
	// The receiver that removes the trigger reports the end: one callback
	// per push, even when this one lost etcd and another resumes it.
	last, err := d.triggers.RemoveIf(fctx, e.Key, func(cur coord.QueuedTrigger) error {
		if cur.Record.ID != id {
			return errNotOurs
		}
		return nil
	})
	if err != nil {
		d.log.Warn("queue: the end of the rollout could not be recorded in etcd; the receiver that resumes it reports it",
			"rollout_id", id, "error", err.Error())
		return
	}
	if d.opt.AfterRun != nil {
		j.Callbacks = last.Callbacks
		d.opt.AfterRun(j)
	}
}

// progress mirrors a running rollout's record into its queue entry, for
// the status API and the event stream of every receiver, and for the one
// that may resume it; ev says what the step was (nil: the record's change
// says it). The record is read at each write, so that of the units of a
// batch moving at once the last write carries the newest record.
func (d *durable) progress(ctx context.Context, j Job, ev *coord.EntryEvent) {
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// Only while the entry is this receiver's: a write of another's would
	// be an event of nothing on every receiver's stream.
	if _, err := d.triggers.UpdateIf(wctx, j.entry, func(e coord.QueuedTrigger) error {
		if _, ok := d.store.Get(j.ID); !ok || e.Runner != d.owner {
			return errNotOurs
		}
		return nil
	}, func(e *coord.QueuedTrigger) {
		if rec, ok := d.store.Get(j.ID); ok {
			rec.Status = fleetroll.StatusRunning
			e.Record, e.Event = rec, ev
		}
	}); err != nil && !errors.Is(err, errNotOurs) && ctx.Err() == nil {
		d.log.Warn("queue: progress not recorded", "rollout_id", j.ID, "error", err.Error())
	}
}

// live returns the queued and running rollouts of every receiver.
func (d *durable) live(ctx context.Context) (map[string]fleetroll.Report, error) {
	all, err := d.triggers.List(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]fleetroll.Report{}
	for _, es := range all {
		for _, e := range es {
			out[e.Record.ID] = e.Record
		}
	}
	return out, nil
}

// deliveryGuard detects replayed deliveries: in memory for a lone
// receiver, in etcd for several.
type deliveryGuard interface {
	claim(ctx context.Context, key string) ([]string, bool, error)
	started(ctx context.Context, key string, ids []string)
	forget(ctx context.Context, key string)
}

// etcdReplays is the replay window shared by receivers.
type etcdReplays struct {
	d   coord.Deliveries
	log *slog.Logger
}

func (r etcdReplays) claim(ctx context.Context, key string) ([]string, bool, error) {
	if key == "" || r.d.Window <= 0 {
		return nil, false, nil
	}
	return r.d.Claim(ctx, key)
}

func (r etcdReplays) started(ctx context.Context, key string, ids []string) {
	if key == "" || r.d.Window <= 0 {
		return
	}
	if err := r.d.Started(ctx, key, ids); err != nil {
		r.log.Warn("delivery not noted", "rollouts", strings.Join(ids, ","), "error", err.Error())
	}
}

func (r etcdReplays) forget(ctx context.Context, key string) {
	if key == "" || r.d.Window <= 0 {
		return
	}
	if err := r.d.Forget(ctx, key); err != nil {
		r.log.Warn("delivery not forgotten", "error", err.Error())
	}
}

// Newer reports whether the service's queue in etcd holds a trigger other
// than the one j carries (false when etcd cannot tell).
func (d *durable) Newer(ctx context.Context, j Job) bool {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	all, err := d.triggers.List(lctx)
	if err != nil {
		return false
	}
	for _, e := range all[j.Service] {
		if e.Key != j.entry {
			return true
		}
	}
	return false
}

// Cancel removes a queued trigger from etcd, unless a receiver has begun
// running it (compare-and-swap), and records its rollout as cancelled.
func (d *durable) Cancel(ctx context.Context, id, by string) (fleetroll.Report, error) {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	all, err := d.triggers.List(lctx)
	if err != nil {
		return fleetroll.Report{}, err
	}
	for _, es := range all {
		for _, e := range es {
			if e.Record.ID != id {
				continue
			}
			old, err := d.triggers.RemoveIf(lctx, e.Key, func(cur coord.QueuedTrigger) error {
				if cur.Record.ID != id || cur.Runner != "" || cur.Record.Status != fleetroll.StatusQueued {
					return fmt.Errorf("rollout %s: %w (it is %s)", id, ErrNotQueued, cur.Record.Status)
				}
				return nil
			})
			if err != nil {
				return fleetroll.Report{}, err
			}
			rec := old.Record.Clone()
			rec.Status, rec.Finished, rec.Error = fleetroll.StatusCancelled, d.opt.Clock.Now(), "cancelled by "+by+" before it ran"
			d.store.Put(rec)
			if err := (coord.History{KAPI: d.kapi}).Save(lctx, rec); err != nil {
				d.log.Warn("cancelled rollout not recorded", "rollout_id", id, "error", err.Error())
			}
			return rec, nil
		}
	}
	return fleetroll.Report{}, fmt.Errorf("rollout %s: %w", id, ErrNotQueued)
}

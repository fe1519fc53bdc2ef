package hook

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Outbox sends what rollouts tell the outside in the background: Docker
// Hub callbacks, after the rollout's service slot is free, and
// notifications. A bounded queue, a few workers, every message of one post
// in parallel and all of them within one deadline, each through the
// Callbacker's allow-list and retries. A keyed queue: the posts of one
// rollout are sent one after another, in the order they were posted (a
// "failed" never overtakes its "started"), while other rollouts' go on
// beside them. A full outbox drops the post (and logs it) rather than hold
// up a rollout.
type Outbox struct {
	cb       *Callbacker
	deadline time.Duration
	log      *slog.Logger
	failed   func(outgoing) // told of each message not delivered (metrics), when set

	// The queue: pending posts by rollout, in order; ready are the
	// rollouts with posts pending and none being sent (oldest first).
	mu       sync.Mutex
	cond     *sync.Cond
	pending  map[string][]outboxJob
	ready    []string
	inFlight map[string]bool
	queued   int
	size     int
	closed   bool
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

type outboxJob struct {
	rolloutID string
	out       []outgoing
}

// outgoing is one message: what it is (for logs), where it goes (never
// logged but for its origin), its body and headers.
type outgoing struct {
	what    string
	notify  bool // a notification: its URL is checked against the notifications' allow-list
	dropped bool // never sent: the outbox was full or closed (for the metrics)
	url     string
	body    []byte
	headers map[string]string
}

// Defaults of an Outbox.
const (
	DefaultOutboxSize       = 256
	DefaultOutboxWorkers    = 4
	DefaultCallbackDeadline = 30 * time.Second
)

// NewOutbox starts workers that send through cb; deadline bounds all the
// callbacks of one rollout.
func NewOutbox(cb *Callbacker, size, workers int, deadline time.Duration, log *slog.Logger) *Outbox {
	return newOutbox(cb, size, workers, deadline, log, nil)
}

// newOutbox is NewOutbox, telling failed of each message not delivered.
func newOutbox(cb *Callbacker, size, workers int, deadline time.Duration, log *slog.Logger, failed func(outgoing)) *Outbox {
	ctx, cancel := context.WithCancel(context.Background())
	o := &Outbox{cb: cb, deadline: deadline, log: log, failed: failed, ctx: ctx, cancel: cancel,
		pending: map[string][]outboxJob{}, inFlight: map[string]bool{}, size: max(size, 1)}
	o.cond = sync.NewCond(&o.mu)
	for range max(workers, 1) {
		o.wg.Add(1)
		go o.work()
	}
	return o
}

// Post queues a rollout's result for its callback URLs; false when the
// outbox is full or closed.
func (o *Outbox) Post(rolloutID string, urls []string, res CallbackResult) bool {
	body, err := callbackBody(res)
	if err != nil {
		return false
	}
	var out []outgoing
	for _, u := range urls {
		out = append(out, outgoing{what: "callback", url: u, body: body, headers: map[string]string{"Content-Type": "application/json"}})
	}
	return o.post(rolloutID, out)
}

// post queues messages of a rollout; false when the outbox is full or
// closed.
func (o *Outbox) post(rolloutID string, out []outgoing) bool {
	if len(out) == 0 {
		return true
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		o.dropped(out)
		return false
	}
	if o.queued >= o.size {
		o.log.Warn("outbox full: messages not sent", "rollout_id", rolloutID, "messages", len(out))
		o.dropped(out)
		return false
	}
	o.queued++
	if len(o.pending[rolloutID]) == 0 && !o.inFlight[rolloutID] {
		o.ready = append(o.ready, rolloutID)
	}
	o.pending[rolloutID] = append(o.pending[rolloutID], outboxJob{rolloutID: rolloutID, out: out})
	o.cond.Signal()
	return true
}

// dropped counts messages the outbox had no room for as not delivered.
func (o *Outbox) dropped(out []outgoing) {
	if o.failed == nil {
		return
	}
	for _, m := range out {
		m.dropped = true
		o.failed(m)
	}
}

// work sends the next post of a ready rollout, until the outbox is closed
// and nothing is left.
func (o *Outbox) work() {
	defer o.wg.Done()
	o.mu.Lock()
	defer o.mu.Unlock()
	for {
		for len(o.ready) == 0 && !o.closed {
			o.cond.Wait()
		}
		if len(o.ready) == 0 {
			return // closed, and nothing ready: what is in flight is its sender's
		}
		id := o.ready[0]
		o.ready = o.ready[1:]
		j := o.pending[id][0]
		if o.pending[id] = o.pending[id][1:]; len(o.pending[id]) == 0 {
			delete(o.pending, id)
		}
		o.inFlight[id] = true
		o.mu.Unlock()
		o.send(j)
		o.mu.Lock()
		delete(o.inFlight, id)
		o.queued--
		if len(o.pending[id]) > 0 {
			o.ready = append(o.ready, id) // its next post, after this one
		}
	}
}

func (o *Outbox) send(j outboxJob) {
	ctx, cancel := context.WithTimeout(o.ctx, o.deadline)
	defer cancel()
	var wg sync.WaitGroup
	for _, m := range j.out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := o.cb.deliver(ctx, m.url, m.notify, m.body, m.headers); err != nil {
				o.log.Warn(m.what+" failed", "rollout_id", j.rolloutID, "origin", originOf(m.url), "error", err.Error())
				if o.failed != nil {
					o.failed(m)
				}
				return
			}
			o.log.Info(m.what+" sent", "rollout_id", j.rolloutID, "origin", originOf(m.url))
		}()
	}
	wg.Wait()
}

// Close stops taking results and waits up to limit for the queued ones to
// be sent; past it, the ones still under way are abandoned. It returns
// whether everything was sent in time.
func (o *Outbox) Close(limit time.Duration) bool {
	o.mu.Lock()
	if !o.closed {
		o.closed = true
		o.cond.Broadcast()
	}
	o.mu.Unlock()
	done := make(chan struct{})
	go func() {
		o.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-done:
		o.cancel()
		return true
	case <-t.C:
		o.cancel()
		<-done
		return false
	}
}

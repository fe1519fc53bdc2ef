package hook

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Outbox sends rollout results to Docker Hub callbacks in the background,
// after the rollout's service slot is free: a bounded queue, a few workers,
// every callback of one rollout in parallel and all of them within one
// deadline. A full outbox drops the result (and logs it) rather than hold
// up a rollout.
type Outbox struct {
	cb       *Callbacker
	deadline time.Duration
	log      *slog.Logger

	mu     sync.Mutex
	jobs   chan outboxJob
	closed bool
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type outboxJob struct {
	rolloutID string
	urls      []string
	res       CallbackResult
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
	ctx, cancel := context.WithCancel(context.Background())
	o := &Outbox{cb: cb, deadline: deadline, log: log, jobs: make(chan outboxJob, max(size, 1)), ctx: ctx, cancel: cancel}
	for range max(workers, 1) {
		o.wg.Add(1)
		go o.work()
	}
	return o
}

// Post queues a rollout's result for its callback URLs; false when the
// outbox is full or closed.
func (o *Outbox) Post(rolloutID string, urls []string, res CallbackResult) bool {
	if len(urls) == 0 {
		return true
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	select {
	case o.jobs <- outboxJob{rolloutID: rolloutID, urls: urls, res: res}:
		return true
	default:
		o.log.Warn("callback outbox full: result not sent", "rollout_id", rolloutID, "callbacks", len(urls))
		return false
	}
}

func (o *Outbox) work() {
	defer o.wg.Done()
	for j := range o.jobs {
		o.send(j)
	}
}

func (o *Outbox) send(j outboxJob) {
	ctx, cancel := context.WithTimeout(o.ctx, o.deadline)
	defer cancel()
	var wg sync.WaitGroup
	for _, u := range j.urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := o.cb.Send(ctx, u, j.res); err != nil {
				o.log.Warn("callback failed", "rollout_id", j.rolloutID, "callback_origin", originOf(u), "error", err.Error())
				return
			}
			o.log.Info("callback sent", "rollout_id", j.rolloutID, "state", j.res.State, "callback_origin", originOf(u))
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
		close(o.jobs)
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

package coord

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// ErrLocked is returned when another fleetroll holds the lock and the caller
// does not wait.
var ErrLocked = errors.New("locked")

// LockPrefix is where the services' locks live.
const LockPrefix = "/fleetroll/locks"

// LockKey is where the lock of a service lives.
func LockKey(service string) string { return LockPrefix + "/" + service }

// Lock is a service's cluster-wide rollout lock: an etcd key created
// atomically with a TTL, kept alive while held, deleted when released.
type Lock struct {
	KAPI  client.KeysAPI
	Key   string
	Owner string // who holds it: shown to the others
	TTL   time.Duration
	// OnWait, when set, is called with the holder each time Acquire starts
	// waiting for the lock.
	OnWait func(holder string)
	// Clock paces the keep-alive; the real clock when nil.
	Clock fleetroll.Clock
	// Margin: the holder stops acting this long before its lease could
	// expire (default TTL/3; see Held.Valid).
	Margin time.Duration
}

// Held is an acquired lock. Lost is closed when the lock could not be kept
// alive (etcd unreachable past the TTL, or the key taken): the holder must
// stop after its current step.
type Held struct {
	l Lock
	// sent is when the last refresh that etcd confirmed was sent: etcd
	// set the key's expiry at or after sent+TTL, so the lease is ours
	// until then at least.
	mu     sync.Mutex
	sent   time.Time
	lost   chan struct{}
	why    error
	once   sync.Once
	cancel context.CancelFunc
	done   chan struct{}
}

// DefaultLockTTL is the TTL of a lock key, kept alive while held.
const DefaultLockTTL = 30 * time.Second

// Acquire takes the lock. When it is held by someone else it returns an
// error wrapping ErrLocked that names the holder, or, with wait, waits until
// it is free (or ctx ends).
func (l Lock) Acquire(ctx context.Context, wait bool) (*Held, error) {
	if l.TTL <= 0 {
		l.TTL = DefaultLockTTL
	}
	if l.Clock == nil {
		l.Clock = fleetroll.SystemClock{}
	}
	if l.Margin <= 0 {
		l.Margin = l.TTL / 3
	}
	for {
		sent := l.Clock.Now()
		_, err := l.KAPI.Set(ctx, l.Key, l.Owner, &client.SetOptions{PrevExist: client.PrevNoExist, TTL: l.TTL})
		if err == nil {
			return l.keep(ctx, sent), nil
		}
		if !isCode(err, client.ErrorCodeNodeExist) {
			return nil, fmt.Errorf("lock %s: %w", l.Key, err)
		}
		resp, gerr := l.KAPI.Get(ctx, l.Key, nil)
		if isCode(gerr, client.ErrorCodeKeyNotFound) {
			continue // released meanwhile
		}
		if gerr != nil {
			return nil, fmt.Errorf("lock %s: %w", l.Key, gerr)
		}
		if !wait {
			return nil, fmt.Errorf("%w: %s is held by %s", ErrLocked, l.Key, resp.Node.Value)
		}
		if l.OnWait != nil {
			l.OnWait(resp.Node.Value)
		}
		// Wait for the key to go (deleted or expired), then try again.
		w := l.KAPI.Watcher(l.Key, &client.WatcherOptions{AfterIndex: resp.Index})
		for {
			ev, werr := w.Next(ctx)
			if ctx.Err() != nil {
				return nil, fmt.Errorf("waiting for %s (held by %s): %w", l.Key, resp.Node.Value, ctx.Err())
			}
			if werr != nil {
				return nil, fmt.Errorf("lock %s: %w", l.Key, werr)
			}
			if ev.Action == "delete" || ev.Action == "expire" || ev.Action == "compareAndDelete" {
				break
			}
		}
	}
}

// keep refreshes the key every TTL/3; failing for longer than the TTL, or
// finding the key gone or taken, marks the lock lost.
func (l Lock) keep(ctx context.Context, sent time.Time) *Held {
	kctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h := &Held{l: l, sent: sent, lost: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		lastOK := l.Clock.Now()
		for {
			select {
			case <-kctx.Done():
				return
			case <-l.Clock.After(l.TTL / 3):
			}
			rctx, rcancel := context.WithTimeout(kctx, l.TTL/3)
			sent := l.Clock.Now()
			_, err := l.KAPI.Set(rctx, l.Key, "", &client.SetOptions{Refresh: true, TTL: l.TTL, PrevExist: client.PrevExist, PrevValue: l.Owner})
			rcancel()
			switch {
			case err == nil:
				lastOK = l.Clock.Now()
				h.mu.Lock()
				h.sent = sent
				h.mu.Unlock()
			case kctx.Err() != nil:
				return
			case isCode(err, client.ErrorCodeKeyNotFound) || isCode(err, client.ErrorCodeTestFailed):
				h.markLost(fmt.Errorf("lock %s lost: %w", l.Key, err))
				return
			case l.Clock.Now().Sub(lastOK) >= l.TTL:
				h.markLost(fmt.Errorf("lock %s lost: not refreshed for %s: %w", l.Key, l.TTL, err))
				return
			}
		}
	}()
	return h
}

func (h *Held) markLost(err error) {
	h.once.Do(func() {
		h.why = err
		close(h.lost)
	})
}

// Lost is closed when the lock is lost.
func (h *Held) Lost() <-chan struct{} { return h.lost }

// Err returns why the lock was lost, or nil.
func (h *Held) Err() error {
	select {
	case <-h.lost:
		return h.why
	default:
		return nil
	}
}

// Valid returns nil while the lease is surely ours: no refresh failed for
// so long that the key could expire within the margin. Past that, another
// fleetroll may take the lock once the key expires, so the holder must stop
// writing to fleet at once (the margin covers one fleet request in flight:
// keep it above --request-timeout). It also fails once the lock is lost.
func (h *Held) Valid() error {
	if err := h.Err(); err != nil {
		return err
	}
	h.mu.Lock()
	sent := h.sent
	h.mu.Unlock()
	expires := sent.Add(h.l.TTL)
	if left := expires.Sub(h.l.Clock.Now()); left < h.l.Margin {
		return fmt.Errorf("lock %s: not refreshed since %s; its lease may expire in %s (under the %s margin)",
			h.l.Key, sent.UTC().Format(time.RFC3339), left.Round(time.Millisecond), h.l.Margin)
	}
	return nil
}

// Release stops the keep-alive and deletes the key if it is still ours.
func (h *Held) Release(ctx context.Context) error {
	h.cancel()
	<-h.done
	_, err := h.l.KAPI.Delete(ctx, h.l.Key, &client.DeleteOptions{PrevValue: h.l.Owner})
	if err != nil && !isCode(err, client.ErrorCodeKeyNotFound) && !isCode(err, client.ErrorCodeTestFailed) {
		return fmt.Errorf("release %s: %w", h.l.Key, err)
	}
	return nil
}

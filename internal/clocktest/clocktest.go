// Package clocktest is a manual clock for tests: time moves only when the
// test advances it, and a test can wait until the code under test has armed
// its timers instead of sleeping.
package clocktest

import (
	"context"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// Clock is a fleetroll.Clock whose time moves only by Advance.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*timer
	armed  chan struct{} // closed and replaced whenever a timer is made
	made   int
}

// New returns a clock at a fixed instant.
func New() *Clock {
	return &Clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), armed: make(chan struct{})}
}

func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *Clock) After(d time.Duration) <-chan time.Time { return c.NewTimer(d).C() }

func (c *Clock) NewTimer(d time.Duration) fleetroll.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.made++
	t := &timer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1), n: c.made}
	if d <= 0 {
		t.ch <- c.now
		t.fired = true
	} else {
		c.timers = append(c.timers, t)
	}
	close(c.armed)
	c.armed = make(chan struct{})
	return t
}

// WaitMade blocks until n timers (After included) have been made in all,
// or ctx ends; it reports whether they were.
func (c *Clock) WaitMade(ctx context.Context, n int) bool {
	for {
		c.mu.Lock()
		made, armed := c.made, c.armed
		c.mu.Unlock()
		if made >= n {
			return true
		}
		select {
		case <-armed:
		case <-ctx.Done():
			return false
		}
	}
}

// Made returns how many timers have been made so far.
func (c *Clock) Made() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.made
}

// WaitTimerAt blocks until a timer made after the first `after` ones is
// pending and due at exactly at, or ctx ends; it reports whether one is.
// Code that arms a timer after reading the clock is armed as the test meant
// only if the test did not advance the clock in between: waiting for the
// very timer it expects, rather than counting timers made, keeps the test
// from advancing too early (a count runs ahead when the code arms a timer
// the test did not foresee, and an older timer may be due at the same
// instant).
func (c *Clock) WaitTimerAt(ctx context.Context, after int, at time.Time) bool {
	for {
		c.mu.Lock()
		armed, found := c.armed, false
		for _, t := range c.timers {
			if t.n > after && t.at.Equal(at) {
				found = true
				break
			}
		}
		c.mu.Unlock()
		if found {
			return true
		}
		select {
		case <-armed:
		case <-ctx.Done():
			return false
		}
	}
}

// Armed returns a channel closed when the next timer is made.
func (c *Clock) Armed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.armed
}

// Pending returns the number of timers that have not fired nor stopped.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Advance moves the clock and fires the timers that are due.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.fired = true
			t.ch <- c.now
			continue
		}
		kept = append(kept, t)
	}
	c.timers = kept
}

type timer struct {
	c     *Clock
	n     int // the clock's n-th timer
	at    time.Time
	ch    chan time.Time
	fired bool
}

func (t *timer) C() <-chan time.Time { return t.ch }

func (t *timer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.fired {
		return false
	}
	for i, x := range t.c.timers {
		if x == t {
			t.c.timers = append(t.c.timers[:i], t.c.timers[i+1:]...)
			break
		}
	}
	t.fired = true
	return true
}

package fleetroll

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/coreos/fleet/schema"
)

// fakeClock advances by the requested duration on every wait, so tests run
// instantly and timeouts are reached deterministically.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.now = c.now.Add(d)
	now := c.now
	c.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- now
	return ch
}

// NewTimer fires at once, having advanced the clock by d.
func (c *fakeClock) NewTimer(d time.Duration) Timer { return firedTimer{c.After(d)} }

type firedTimer struct{ c <-chan time.Time }

func (t firedTimer) C() <-chan time.Time { return t.c }
func (t firedTimer) Stop() bool          { return false }

// simUnit is a unit in the fake fleet. States move one step per poll.
type simUnit struct {
	desired string
	active  string
	sub     string
	machine string
	noState bool // fleet publishes no state

	stopPolls  int  // polls between "loaded" and inactive/dead
	startPolls int  // polls between "launched" and active/running
	stuckStop  bool // never leaves active
	failStart  bool // goes to failed instead of running
	stopFailed bool // the stop ends in "failed" (exit status on SIGTERM)
	pending    int  // polls left in the current transition
	moving     bool // a target state was set and not yet reached
}

// fakeFleet implements Fleet in memory and records every call.
type fakeFleet struct {
	mu    sync.Mutex
	units map[string]*simUnit
	order []string
	calls []string
	// errs are returned (and consumed) before the call is carried out.
	errs []error
	// hook runs after each call is recorded, outside the lock.
	hook func(call string)
	// machines, when set, is what MachineIPs lists.
	machines map[string]string
	// pageSize > 0 makes Units check pagination handling of callers that
	// use it directly (the HTTP tests cover real pagination).
}

func newFakeFleet(names ...string) *fakeFleet {
	f := &fakeFleet{units: map[string]*simUnit{}}
	for _, n := range names {
		f.add(n, &simUnit{})
	}
	return f
}

func (f *fakeFleet) add(name string, u *simUnit) *simUnit {
	if u.desired == "" {
		u.desired, u.active, u.sub, u.machine = "launched", "active", "running", "machine-1"
	}
	if u.stopPolls == 0 {
		u.stopPolls = 2
	}
	if u.startPolls == 0 {
		u.startPolls = 2
	}
	f.units[name] = u
	f.order = append(f.order, name)
	return u
}

func (f *fakeFleet) record(call string) error {
	f.mu.Lock()
	f.calls = append(f.calls, call)
	var err error
	if len(f.errs) > 0 {
		err, f.errs = f.errs[0], f.errs[1:]
	}
	hook := f.hook
	f.mu.Unlock()
	if hook != nil {
		hook(call)
	}
	return err
}

func (f *fakeFleet) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeFleet) Units(ctx context.Context) ([]*schema.Unit, error) {
	if err := f.record("units"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*schema.Unit
	for _, n := range f.order {
		out = append(out, &schema.Unit{Name: n, DesiredState: f.units[n].desired})
	}
	return out, nil
}

func (f *fakeFleet) UnitState(ctx context.Context, name string) (*schema.UnitState, error) {
	if err := f.record("state " + name); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.units[name]
	if !ok || u.noState {
		return nil, fmt.Errorf("state of %s: %w", name, ErrNotFound)
	}
	u.step()
	f.calls[len(f.calls)-1] += " -> " + u.active + "/" + u.sub
	return &schema.UnitState{Name: name, MachineID: u.machine, SystemdActiveState: u.active, SystemdSubState: u.sub, SystemdLoadState: "loaded"}, nil
}

func (f *fakeFleet) MachineIPs(ctx context.Context) (map[string]string, error) {
	if err := f.record("machines"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.machines == nil {
		return nil, fmt.Errorf("machines: %w", ErrNotFound)
	}
	return maps.Clone(f.machines), nil
}

func (f *fakeFleet) SetUnitTargetState(ctx context.Context, name, target string) error {
	if err := f.record("set " + name + " " + target); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.units[name]
	if !ok {
		return fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	if u.desired == target {
		return nil
	}
	u.desired = target
	u.moving = true
	switch target {
	case "loaded":
		u.pending = u.stopPolls
	case "launched":
		u.pending = u.startPolls
	}
	return nil
}

// step moves the unit one poll closer to its desired state.
func (u *simUnit) step() {
	if !u.moving {
		return
	}
	switch u.desired {
	case "loaded":
		if u.active != "active" && u.active != "deactivating" {
			return
		}
		if u.stuckStop {
			return
		}
		if u.pending > 1 {
			u.pending--
			u.active, u.sub = "deactivating", "stop-sigterm"
			return
		}
		u.active, u.sub = "inactive", "dead"
		if u.stopFailed {
			u.active, u.sub = "failed", "failed"
		}
	case "launched":
		if u.active == "active" && u.sub == "running" {
			return
		}
		if u.pending > 1 {
			u.pending--
			if u.active != "failed" {
				u.active, u.sub = "activating", "start-pre"
			}
			return
		}
		if u.failStart {
			u.active, u.sub = "failed", "failed"
			return
		}
		u.active, u.sub = "active", "running"
	}
}

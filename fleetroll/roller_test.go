package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/fakefleet"
	"google.golang.org/api/googleapi"
)

func planOf(names ...string) *Plan {
	p := &Plan{Service: "my-service"}
	for _, n := range names {
		p.Units = append(p.Units, PlannedUnit{Name: n})
	}
	return p
}

func newTestRoller(t *testing.T, ff *fakefleet.Fleet, opt Options) (*Roller, *fakeClock, *[]Event) {
	t.Helper()
	f := connectFake(t, ff)
	clock := newFakeClock()
	var events []Event
	opt.Clock = clock
	opt.OnEvent = func(e Event) { events = append(events, e) }
	if opt.PollInterval == 0 {
		opt.PollInterval = 100 * time.Millisecond
	}
	r, err := NewRoller(f, opt)
	if err != nil {
		t.Fatal(err)
	}
	return r, clock, &events
}

// sets returns the target-state calls in order.
func sets(calls []string) []string {
	var out []string
	for _, c := range calls {
		if strings.HasPrefix(c, "set ") {
			out = append(out, strings.TrimPrefix(c, "set "))
		}
	}
	return out
}

// untouched fails the test when any call names unit.
func untouched(t *testing.T, calls []string, unit string) {
	t.Helper()
	for _, c := range calls {
		if strings.HasSuffix(c, " "+unit) || strings.Contains(c, " "+unit+" ") {
			t.Fatalf("%s was touched: %q", unit, c)
		}
	}
}

func TestRollRestartsOneAtATimeInOrder(t *testing.T) {
	a, b, c := "my-service@8901.service", "my-service@8902.service", "my-service@8903.service"
	f := newFakeFleet(a, b, c)
	// Observe availability at every call: never more than one unit may be
	// anything but active/running.
	maxDown := 0
	f.SetHook(func(string) {
		down := 0
		for _, n := range []string{a, b, c} {
			if u, _ := f.Unit(n); u.Active != "active" || u.Sub != "running" {
				down++
			}
		}
		maxDown = max(maxDown, down)
	})
	r, _, events := newTestRoller(t, f, Options{Grace: 3 * time.Second})
	rep, err := r.Roll(context.Background(), planOf(a, b, c))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{a + " loaded", a + " launched", b + " loaded", b + " launched", c + " loaded", c + " launched"}
	if got := sets(f.Calls()); !reflect.DeepEqual(got, want) {
		t.Fatalf("sets = %v, want %v", got, want)
	}
	// Exact call sequence for the first unit: the start is requested only
	// after a poll saw it stopped, and the next unit only after it ran.
	wantFirst := []string{"set " + a + " loaded", "state " + a + " -> deactivating/stop-sigterm", "state " + a + " -> inactive/dead",
		"set " + a + " launched", "state " + a + " -> activating/start-pre", "state " + a + " -> active/running", "set " + b + " loaded"}
	if got := f.Calls()[:len(wantFirst)]; !reflect.DeepEqual(got, wantFirst) {
		t.Fatalf("calls = %v, want %v", got, wantFirst)
	}
	if maxDown != 1 {
		t.Fatalf("max units down at once = %d, want 1", maxDown)
	}
	if rep.Status != StatusSucceeded || rep.Restarted() != 3 {
		t.Fatalf("report = %+v", rep)
	}
	var kinds []string
	for _, e := range *events {
		if e.Unit == a {
			kinds = append(kinds, string(e.Kind))
		}
		if e.RolloutID != r.RolloutID() {
			t.Fatalf("event without rollout ID: %+v", e)
		}
	}
	// The grace period after it has an event of its own.
	if want := []string{"stopping", "stopped", "starting", "running", "phase"}; !reflect.DeepEqual(kinds, want) {
		t.Fatalf("events for %s = %v, want %v", a, kinds, want)
	}
	// Poll interval 100ms, one extra poll per phase: 100ms stop, 100ms start.
	if u := rep.Units[0]; time.Duration(u.Stop) != 100*time.Millisecond || time.Duration(u.Start) != 100*time.Millisecond {
		t.Fatalf("durations = %s/%s", u.Stop, u.Start)
	}
	// Two grace periods (none after the last unit).
	if d := rep.Finished.Sub(rep.Started); d != 6*time.Second+600*time.Millisecond {
		t.Fatalf("roll took %s on the fake clock", d)
	}
}

func TestRollHaltsWhenAUnitFailsToStart(t *testing.T) {
	a, b, c := "s@1.service", "s@2.service", "s@3.service"
	f := newFakeFleet(a)
	f.Add(b, fakefleet.Unit{FailStart: true})
	f.Add(c, fakefleet.Unit{})
	r, _, _ := newTestRoller(t, f, Options{})
	rep, err := r.Roll(context.Background(), planOf(a, b, c))
	var ue *UnitError
	if !errors.As(err, &ue) || ue.Unit != b || ue.Phase != PhaseStart || !ue.LeftStopped || !errors.Is(err, ErrUnitFailed) {
		t.Fatalf("err = %#v", err)
	}
	if !strings.Contains(err.Error(), "IS DOWN") || !strings.Contains(err.Error(), "failed/failed") {
		t.Fatalf("error does not say loudly that the unit is down: %v", err)
	}
	untouched(t, f.Calls(), c)
	got := []Outcome{rep.Units[0].Outcome, rep.Units[1].Outcome, rep.Units[2].Outcome}
	if want := []Outcome{OutcomeRestarted, OutcomeFailed, OutcomeUntouched}; !reflect.DeepEqual(got, want) {
		t.Fatalf("outcomes = %v, want %v", got, want)
	}
	if rep.Status != StatusFailed || rep.Units[1].LastState != "failed/failed on machine-" || !rep.Units[1].LeftStopped {
		t.Fatalf("report = %+v", rep.Units[1])
	}
}

func TestRollStopTimeoutBringsUnitBack(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet()
	f.Add(a, fakefleet.Unit{StuckStop: true})
	f.Add(b, fakefleet.Unit{})
	r, clock, _ := newTestRoller(t, f, Options{StopTimeout: 2 * time.Second})
	start := clock.Now()
	rep, err := r.Roll(context.Background(), planOf(a, b))
	var ue *UnitError
	if !errors.As(err, &ue) || ue.Phase != PhaseStop || ue.LeftStopped || !strings.Contains(err.Error(), "timed out after 2s") {
		t.Fatalf("err = %v", err)
	}
	if got := sets(f.Calls()); !reflect.DeepEqual(got, []string{a + " loaded", a + " launched"}) {
		t.Fatalf("sets = %v: the unit must be set back to launched", got)
	}
	untouched(t, f.Calls(), b)
	if rep.Units[0].LastState != "active/running on machine-" {
		t.Fatalf("last state = %q", rep.Units[0].LastState)
	}
	if d := clock.Now().Sub(start); d < 2*time.Second || d > 3*time.Second {
		t.Fatalf("stop phase took %s on the fake clock, want about the 2s timeout", d)
	}
}

func TestRollStartTimeout(t *testing.T) {
	a := "s@1.service"
	f := newFakeFleet()
	f.Add(a, fakefleet.Unit{StartPolls: 1000})
	r, _, _ := newTestRoller(t, f, Options{StartTimeout: 5 * time.Second})
	_, err := r.Roll(context.Background(), planOf(a))
	var ue *UnitError
	if !errors.As(err, &ue) || ue.Phase != PhaseStart || !ue.LeftStopped || !strings.Contains(err.Error(), "timed out after 5s") ||
		!strings.Contains(err.Error(), "activating/start-pre") {
		t.Fatalf("err = %v", err)
	}
}

func TestRollRetriesTransientErrorsWithBackoff(t *testing.T) {
	a := "s@1.service"
	f := newFakeFleet(a)
	// A dropped connection, a 503, a dropped connection.
	f.FailNext(fakefleet.Fault{Drop: true}, fakefleet.Fault{Status: 503, Message: "unavailable"}, fakefleet.Fault{Drop: true})
	r, clock, _ := newTestRoller(t, f, Options{PollInterval: 100 * time.Millisecond, MaxBackoff: 300 * time.Millisecond})
	start := clock.Now()
	rep, err := r.Roll(context.Background(), planOf(a))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Restarted() != 1 {
		t.Fatalf("report = %+v", rep)
	}
	// The three failed set calls waited 100, 200 and 300 (capped) ms;
	// then the stop and the start took one extra poll each (backoff reset).
	if got, want := clock.Now().Sub(start), 600*time.Millisecond+200*time.Millisecond; got != want {
		t.Fatalf("fake time = %s, want %s", got, want)
	}
	if got := sets(f.Calls()); !reflect.DeepEqual(got, []string{a + " loaded", a + " loaded", a + " loaded", a + " loaded", a + " launched"}) {
		t.Fatalf("sets = %v", got)
	}
}

func TestRollPersistentTransientErrorTimesOut(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	f.SetHook(func(call string) {
		if call == "state "+a {
			f.FailNext(fakefleet.Fault{Status: 500, Message: "etcd down"})
		}
	})
	r, _, _ := newTestRoller(t, f, Options{StopTimeout: 3 * time.Second, StartTimeout: 3 * time.Second})
	_, err := r.Roll(context.Background(), planOf(a, b))
	if err == nil || !strings.Contains(err.Error(), "timed out after 3s; last error") || !strings.Contains(err.Error(), "etcd down") {
		t.Fatalf("err = %v", err)
	}
	untouched(t, f.Calls(), b)
}

func TestRollDoesNotRetryPermanentErrors(t *testing.T) {
	a := "s@1.service"
	f := newFakeFleet(a)
	f.FailNext(fakefleet.Fault{Status: 400, Message: "bad"})
	r, _, _ := newTestRoller(t, f, Options{})
	_, err := r.Roll(context.Background(), planOf(a))
	if err == nil || !strings.Contains(err.Error(), "bad") {
		t.Fatalf("err = %v", err)
	}
	// One failed stop request, then the unit is set back to launched.
	if got := sets(f.Calls()); !reflect.DeepEqual(got, []string{a + " loaded", a + " launched"}) {
		t.Fatalf("sets = %v", got)
	}
}

func TestRollMissingUnitIsNotRetried(t *testing.T) {
	r, _, _ := newTestRoller(t, newFakeFleet(), Options{})
	_, err := r.Roll(context.Background(), planOf("s@9.service"))
	var ue *UnitError
	if !errors.As(err, &ue) || !errors.Is(err, ErrNotFound) || ue.LeftStopped {
		t.Fatalf("err = %v", err)
	}
}

// A state that goes missing (fleet restarting) is not a stop: the roller
// waits for a positive "inactive" before it starts the unit.
func TestRollMissingStateIsNotAStop(t *testing.T) {
	a := "s@1.service"
	f := newFakeFleet(a)
	f.Update(a, func(u *fakefleet.Unit) { u.StopPolls = 1 })
	gone := 0
	f.SetHook(func(call string) {
		f.Update(a, func(u *fakefleet.Unit) {
			switch {
			case call == "set "+a+" loaded":
				u.NoState = true // fleet restarting: no state, and nothing moves while it is gone
			case call == "state "+a && u.NoState:
				if gone++; gone == 3 {
					u.NoState = false // back: now it stops
				}
			}
		})
	})
	r, _, _ := newTestRoller(t, f, Options{})
	if _, err := r.Roll(context.Background(), planOf(a)); err != nil {
		t.Fatal(err)
	}
	stopObservedBeforeStart(t, f.Calls(), a)
	if gone < 3 {
		t.Fatalf("started after %d polls without state", gone)
	}
}

func TestRollIgnoresFailedStateLeftFromTheStop(t *testing.T) {
	a := "s@1.service"
	f := newFakeFleet()
	f.Add(a, fakefleet.Unit{StopFailed: true, StartPolls: 4})
	r, _, _ := newTestRoller(t, f, Options{})
	rep, err := r.Roll(context.Background(), planOf(a))
	if err != nil {
		t.Fatalf("a failed state left from the stop was taken for a failed start: %v", err)
	}
	if rep.Units[0].Outcome != OutcomeRestarted {
		t.Fatalf("report = %+v", rep.Units[0])
	}
}

// cancelAt cancels the roll when the fake sees call.
func cancelAt(f *fakefleet.Fleet, call string) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	f.SetHook(func(c string) {
		if c == call {
			cancel()
		}
	})
	return ctx
}

// stopObservedBeforeStart fails unless a poll saw unit stopped between the
// stop and the start requests.
func stopObservedBeforeStart(t *testing.T, calls []string, unit string) {
	t.Helper()
	stopped, stopping := false, false
	for _, c := range calls {
		switch {
		case c == "set "+unit+" loaded":
			stopping = true
		case stopping && (c == "state "+unit+" -> inactive/dead" || c == "state "+unit+" -> failed/failed"):
			stopped = true
		case c == "set "+unit+" launched":
			if !stopped {
				t.Fatalf("start requested before the stop was observed: %v", calls)
			}
			return
		}
	}
}

func TestRollCancelledDuringStopBringsTheUnitBack(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	for _, at := range []string{"set " + a + " loaded", "state " + a} {
		t.Run(at, func(t *testing.T) {
			f := newFakeFleet(a, b)
			f.Update(a, func(u *fakefleet.Unit) { u.StopPolls = 3 })
			ctx := cancelAt(f, at)
			r, _, events := newTestRoller(t, f, Options{})
			rep, err := r.Roll(ctx, planOf(a, b))
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
			if got := sets(f.Calls()); !reflect.DeepEqual(got, []string{a + " loaded", a + " launched"}) {
				t.Fatalf("sets = %v", got)
			}
			stopObservedBeforeStart(t, f.Calls(), a)
			if u, _ := f.Unit(a); u.Active != "active" || u.Sub != "running" {
				t.Fatal("unit not running after cancellation")
			}
			untouched(t, f.Calls(), b)
			if u := rep.Units[0]; u.Outcome != OutcomeInterrupted || u.LeftStopped || u.Phase != PhaseStop {
				t.Fatalf("unit report = %+v", u)
			}
			if rep.Status != StatusInterrupted {
				t.Fatalf("status = %q", rep.Status)
			}
			var recovering bool
			for _, e := range *events {
				recovering = recovering || e.Kind == EventRecovering
			}
			if !recovering {
				t.Fatal("no recovering event")
			}
		})
	}
}

// A stop request cut off by the cancellation may or may not have reached
// fleet: the unit is set back to launched at once.
func TestRollCancelledStopRequestSetsTheUnitBack(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	ctx, cancel := context.WithCancel(context.Background())
	// The stop request hangs, and the roll is cancelled meanwhile.
	f.FailNext(fakefleet.Fault{Hang: true})
	f.SetHook(func(c string) {
		if c == "set "+a+" loaded" {
			cancel()
		}
	})
	r, _, _ := newTestRoller(t, f, Options{})
	rep, err := r.Roll(ctx, planOf(a, b))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if got := sets(f.Calls()); !reflect.DeepEqual(got, []string{a + " loaded", a + " launched"}) {
		t.Fatalf("sets = %v", got)
	}
	if u := rep.Units[0]; u.Outcome != OutcomeInterrupted || u.LeftStopped {
		t.Fatalf("unit report = %+v", u)
	}
	untouched(t, f.Calls(), b)
}

func TestRollCancelledDuringStartFinishesTheStart(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	ctx := cancelAt(f, "set "+a+" launched")
	r, _, _ := newTestRoller(t, f, Options{})
	rep, err := r.Roll(ctx, planOf(a, b))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if rep.Units[0].Outcome != OutcomeRestarted || rep.Units[1].Outcome != OutcomeUntouched {
		t.Fatalf("report = %+v", rep.Units)
	}
	if u, _ := f.Unit(a); u.Active != "active" {
		t.Fatalf("unit left %s", u.Active)
	}
	untouched(t, f.Calls(), b)
}

func TestRollCancelledDuringGrace(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	ctx, cancel := context.WithCancel(context.Background())
	r, _, _ := newTestRoller(t, f, Options{Grace: time.Hour})
	r.opt.OnEvent = func(e Event) {
		if e.Kind == EventRunning {
			cancel()
		}
	}
	rep, err := r.Roll(ctx, planOf(a, b))
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "grace period") {
		t.Fatalf("err = %v", err)
	}
	if rep.Units[0].Outcome != OutcomeRestarted || rep.Units[1].Outcome != OutcomeUntouched {
		t.Fatalf("report = %+v", rep.Units)
	}
	untouched(t, f.Calls(), b)
}

func TestRollCancelledBeforeStartTouchesNothing(t *testing.T) {
	f := newFakeFleet("s@1.service")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r, _, _ := newTestRoller(t, f, Options{})
	if _, err := r.Roll(ctx, planOf("s@1.service")); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if calls := f.Calls(); len(calls) != 0 {
		t.Fatalf("calls = %v", calls)
	}
}

func TestRollerRejectsNegativeDurations(t *testing.T) {
	if _, err := NewRoller(connectFake(t, newFakeFleet()), Options{Grace: -time.Second}); err == nil {
		t.Fatal("negative grace accepted")
	}
}

func TestIsTransient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{fmt.Errorf("wrapped: %w", syscall.ECONNRESET), true},
		{&googleapi.Error{Code: 500}, true},
		{&googleapi.Error{Code: 503}, true},
		{&googleapi.Error{Code: 429}, true},
		{&googleapi.Error{Code: 400}, false},
		{&googleapi.Error{Code: 409}, false},
		{fmt.Errorf("x: %w", ErrNotFound), false},
		{context.Canceled, false},
		{context.DeadlineExceeded, true},
		{errors.New("json: cannot unmarshal"), false},
		{nil, false},
	} {
		if got := IsTransient(tc.err); got != tc.want {
			t.Errorf("IsTransient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRollReportsAUnitThatMovedToAnotherMachine(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	f.SetHook(func(call string) {
		if call == "set "+a+" launched" {
			// Its machine was lost after the stop: fleet starts it elsewhere.
			f.Update(a, func(u *fakefleet.Unit) { u.Machine = "bbbbbbbb-2" })
		}
	})
	r, _, events := newTestRoller(t, f, Options{})
	rep, err := r.Roll(context.Background(), planOf(a, b))
	if err != nil {
		t.Fatal(err)
	}
	u := rep.Units[0]
	if u.Outcome != OutcomeRestarted || u.MovedFrom != "machine-" || u.Machine != "bbbbbbbb" {
		t.Fatalf("moved unit: %+v, want restarted, moved from machine- to bbbbbbbb", u)
	}
	if u := rep.Units[1]; u.MovedFrom != "" || u.Machine != "machine-" {
		t.Fatalf("unmoved unit: %+v", u)
	}
	var running []string
	for _, e := range *events {
		if e.Kind == EventRunning {
			running = append(running, e.State)
		}
	}
	if len(running) != 2 || !strings.Contains(running[0], "moved from") || strings.Contains(running[1], "moved from") {
		t.Fatalf("running events: %q", running)
	}
}

// Its machine lost after the stop and no other machine may take it: the
// start times out, the report says why, the unit stays launched for fleet to
// start once a machine can take it, and the next unit is untouched.
func TestRollUnitWhoseMachineLeftAndNoneTakesIt(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	f.SetMachines(map[string]string{"machine-1": "10.0.0.1", "machine-2": "10.0.0.2"})
	f.SetHook(func(call string) {
		if call == "set "+a+" launched" {
			f.Update(a, func(u *fakefleet.Unit) { u.NoState = true })
			f.SetMachines(map[string]string{"machine-2": "10.0.0.2"})
		}
	})
	r, _, _ := newTestRoller(t, f, Options{StartTimeout: 30 * time.Second})
	rep, err := r.Roll(context.Background(), planOf(a, b))
	var uerr *UnitError
	if !errors.As(err, &uerr) || uerr.Unit != a || uerr.Phase != PhaseStart {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "its machine machine- left the cluster") {
		t.Fatalf("the error does not say the machine left: %v", err)
	}
	if got := sets(f.Calls()); !reflect.DeepEqual(got, []string{a + " loaded", a + " launched"}) {
		t.Fatalf("target states set: %q", got)
	}
	untouched(t, f.Calls(), b)
	if rep.Units[0].Outcome != OutcomeFailed || !rep.Units[0].LeftStopped || rep.Units[1].Outcome != OutcomeUntouched {
		t.Fatalf("report: %+v", rep.Units)
	}

	// The machine still listed: no such claim.
	f2 := newFakeFleet(a)
	f2.SetMachines(map[string]string{"machine-1": "10.0.0.1"})
	f2.SetHook(func(call string) {
		if call == "set "+a+" launched" {
			f2.Update(a, func(u *fakefleet.Unit) { u.NoState = true })
		}
	})
	r2, _, _ := newTestRoller(t, f2, Options{StartTimeout: 30 * time.Second})
	if _, err := r2.Roll(context.Background(), planOf(a)); err == nil || strings.Contains(err.Error(), "left the cluster") {
		t.Fatalf("err = %v", err)
	}
}

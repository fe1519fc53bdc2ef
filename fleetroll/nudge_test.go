package fleetroll

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// countCalls counts the calls that start with prefix.
func countCalls(calls []string, prefix string) int {
	n := 0
	for _, c := range calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

// A write fleet's agent missed leaves the unit where it was; without a
// nudge the phase waits for its timeout, with one it moves.
func TestNudgeRecoversAMissedWrite(t *testing.T) {
	a := "s@1.service"
	for _, nudge := range []time.Duration{0, 300 * time.Millisecond} {
		f := newFakeFleet()
		f.Add(a, fakefleet.Unit{MissWrites: 1}) // the stop request is missed
		r, _, _ := newTestRoller(t, f, Options{NudgeInterval: nudge, StopTimeout: 10 * time.Second})
		rep, err := r.Roll(context.Background(), planOf(a))
		calls := f.Calls()
		if nudge == 0 {
			// No nudge; one read of the unit: the stall's diagnosis.
			if err == nil || !strings.Contains(err.Error(), "timed out after 10s") || countCalls(calls, "unit ") != 1 {
				t.Fatalf("without nudging: err = %v, calls %v", err, calls)
			}
			if d := rep.Units[0].Phases[0].Diagnosis; !strings.Contains(d, "has not acted on the write") || !strings.Contains(d, "nudging off") {
				t.Fatalf("without nudging, the stall's diagnosis: %q", d)
			}
			continue
		}
		if err != nil || rep.Units[0].Outcome != OutcomeRestarted {
			t.Fatalf("with nudging: err = %v, report %+v", err, rep.Units)
		}
		// One nudge: the target read back, then written again; none once
		// the unit moved.
		want := []string{a + " loaded", a + " loaded", a + " launched"}
		if got := sets(calls); !reflect.DeepEqual(got, want) {
			t.Fatalf("sets = %v, want %v", got, want)
		}
		if n := countCalls(calls, "unit "+a); n != 1 {
			t.Fatalf("%d target reads, want 1: %v", n, calls)
		}
	}
}

// A stall while fleet's agent has destroyed units of the unit's machine to
// unload is said to be that: fleet still publishes their states, and lists
// no such units. Those of another machine do not count.
func TestStallNamesTheUnitsLeftToUnload(t *testing.T) {
	a := "s@1.service"
	f := newFakeFleet()
	f.Add(a, fakefleet.Unit{MissWrites: 1})
	for _, u := range []string{"gone@1.service", "gone@2.service", "gone@3.service"} {
		f.AddUnloading(u, fakefleet.DefaultMachine)
	}
	f.AddUnloading("elsewhere@1.service", "machine-2")
	r, _, _ := newTestRoller(t, f, Options{StopTimeout: 10 * time.Second})
	rep, _ := r.Roll(context.Background(), planOf(a))
	d := rep.Units[0].Phases[0].Diagnosis
	if !strings.Contains(d, `has not acted on the write (it last acted on "launched"): it is busy: 3 unit(s) destroyed on its machine are not unloaded yet`) {
		t.Fatalf("the stall's diagnosis: %q", d)
	}
}

// Nudges happen only while the phase is pending, at the configured rate.
func TestNudgeOnlyWhilePending(t *testing.T) {
	a := "s@1.service"
	f := newFakeFleet()
	// The stop is acted on at once but takes 20 polls: deactivating, so
	// fleet has acted and nothing is nudged.
	f.Add(a, fakefleet.Unit{StopPolls: 20})
	r, _, _ := newTestRoller(t, f, Options{NudgeInterval: 200 * time.Millisecond, PollInterval: 100 * time.Millisecond})
	if _, err := r.Roll(context.Background(), planOf(a)); err != nil {
		t.Fatal(err)
	}
	if got := sets(f.Calls()); !reflect.DeepEqual(got, []string{a + " loaded", a + " launched"}) {
		t.Fatalf("a stop fleet acted on at once was nudged: %v", got)
	}
	f2 := newFakeFleet()
	f2.Add(a, fakefleet.Unit{})
	f2.SetHook(func(call string) {
		if call == "set "+a+" launched" && countCalls(f2.Calls(), "set "+a+" launched") == 1 {
			// The hook runs before the write is applied: the start request
			// and the first nudge are missed, the second nudge is not.
			f2.Update(a, func(u *fakefleet.Unit) { u.MissWrites = 2 })
		}
	})
	r2, _, _ := newTestRoller(t, f2, Options{NudgeInterval: 200 * time.Millisecond, PollInterval: 100 * time.Millisecond})
	rep, err := r2.Roll(context.Background(), planOf(a))
	if err != nil || rep.Units[0].Outcome != OutcomeRestarted {
		t.Fatalf("err = %v, report %+v", err, rep.Units)
	}
	want := []string{a + " loaded", a + " launched", a + " launched", a + " launched"}
	if got := sets(f2.Calls()); !reflect.DeepEqual(got, want) {
		t.Fatalf("sets = %v, want %v (two nudges of the missed start)", got, want)
	}
}

// Someone else sets another target while fleetroll waits (fleetctl stop
// during the start): fleetroll halts, writes nothing more, leaves the unit
// as they set it and touches no other unit.
func TestNudgeHaltsWhenSomeoneElseChangedTheTarget(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet()
	f.Add(a, fakefleet.Unit{})
	f.Add(b, fakefleet.Unit{})
	f.SetHook(func(call string) {
		if call == "set "+a+" launched" {
			// The start is missed, and an operator stops the unit.
			f.Update(a, func(u *fakefleet.Unit) { u.MissWrites = 1 })
		}
		if strings.HasPrefix(call, "state "+a) && countCalls(f.Calls(), "set "+a+" launched") == 1 {
			f.Update(a, func(u *fakefleet.Unit) {
				if u.Desired == "launched" && u.Active == "inactive" {
					u.Desired = "loaded"
				}
			})
		}
	})
	r, _, _ := newTestRoller(t, f, Options{NudgeInterval: 200 * time.Millisecond, PollInterval: 100 * time.Millisecond})
	rep, err := r.Roll(context.Background(), planOf(a, b))
	var ue *UnitError
	if !errors.As(err, &ue) || !errors.Is(err, ErrTargetChanged) || ue.Unit != a || ue.Phase != PhaseStart || ue.LeftStopped {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), `is now "loaded", not "launched"`) {
		t.Fatalf("the error does not say what changed: %v", err)
	}
	if got := sets(f.Calls()); !reflect.DeepEqual(got, []string{a + " loaded", a + " launched"}) {
		t.Fatalf("fleetroll wrote after the change: %v", got)
	}
	if u, _ := f.Unit(a); u.Desired != "loaded" {
		t.Fatalf("the operator's target was overridden: %s", u.Desired)
	}
	untouched(t, f.Calls(), b)
	if rep.Units[0].Outcome != OutcomeFailed || rep.Units[1].Outcome != OutcomeUntouched {
		t.Fatalf("report %+v", rep.Units)
	}
}

func TestNudgeIntervalMustNotBeNegative(t *testing.T) {
	if err := (Options{NudgeInterval: -time.Second}).Validate(); err == nil {
		t.Fatal("negative nudge interval accepted")
	}
}

// fleet's agent acted on the request, but the published state lags: the
// nudges read the unit, see its currentState at the target, and write
// nothing.
func TestNudgeWritesNothingOnceTheAgentActed(t *testing.T) {
	a := "s@1.service"
	f := newFakeFleet()
	f.Add(a, fakefleet.Unit{PublishLag: 6})
	r, _, _ := newTestRoller(t, f, Options{NudgeInterval: 100 * time.Millisecond, PollInterval: 100 * time.Millisecond})
	if _, err := r.Roll(context.Background(), planOf(a)); err != nil {
		t.Fatal(err)
	}
	calls := f.Calls()
	if got := sets(calls); !reflect.DeepEqual(got, []string{a + " loaded", a + " launched"}) {
		t.Fatalf("sets = %v: a nudge wrote although the agent had acted", got)
	}
	if countCalls(calls, "unit "+a) == 0 {
		t.Fatalf("no nudge read the unit while its published state lagged: %v", calls)
	}
}

// A unit that failed before its roll shows no change when fleet's agent
// acts on its stop: the roller waits for fleet's currentState to leave
// "launched" (nudging the stop meanwhile) before it writes the start, which
// an agent still holding the unit launched would ignore for good.
func TestRestartOfAFailedUnitWaitsForTheAgentToActOnTheStop(t *testing.T) {
	a := "s@1.service"
	for _, c := range []struct {
		name        string
		missed      int
		noHeartbeat bool
		sets        int // writes of "loaded"
		held        time.Duration
	}{
		// The agent holds it launched (heartbeat), misses the stop, acts
		// on the first nudge: the heartbeat goes, the start follows.
		{"stop missed, then nudged", 1, false, 2, 0},
		// No heartbeat to watch (the fake acts on a write before the first
		// look; or there was none): the stop is held for a reconciliation
		// of the agent, nudged every 300 ms.
		{"acted on before the first look", 0, false, 1 + int(agentReconcile/(300*time.Millisecond)), agentReconcile},
		{"no heartbeat, stop missed", 1, true, 1 + int(agentReconcile/(300*time.Millisecond)), agentReconcile},
	} {
		f := newFakeFleet()
		f.Add(a, fakefleet.Unit{Desired: "launched", Active: "failed", Sub: "failed", MissWrites: c.missed, NoHeartbeat: c.noHeartbeat})
		r, _, _ := newTestRoller(t, f, Options{NudgeInterval: 300 * time.Millisecond, PollInterval: 100 * time.Millisecond,
			StopTimeout: 10 * time.Second, StartTimeout: 10 * time.Second})
		rep, err := r.Roll(context.Background(), planOf(a))
		if err != nil || rep.Units[0].Outcome != OutcomeRestarted {
			t.Fatalf("%s: err = %v, report %+v", c.name, err, rep.Units)
		}
		if u, _ := f.Unit(a); u.Restarts != 1 || u.Active != "active" {
			t.Fatalf("%s: unit %+v, want it started once", c.name, u)
		}
		sets := f.Sets()
		if len(sets) != c.sets+1 || countCalls(sets, a+" loaded") != c.sets || sets[c.sets] != a+" launched" {
			t.Fatalf("%s: sets = %v, want %d of loaded, then launched", c.name, sets, c.sets)
		}
		if held := time.Duration(rep.Units[0].Stop); held < c.held || held > c.held+time.Second {
			t.Fatalf("%s: the stop took %s, want %s", c.name, held, c.held)
		}
	}
}

// A unit running at its stop's first poll needs no read of fleet's
// currentState: the stop is seen happen.
func TestStopOfARunningUnitReadsNoCurrentState(t *testing.T) {
	a := "s@1.service"
	f := newFakeFleet(a)
	r, _, _ := newTestRoller(t, f, Options{NudgeInterval: 300 * time.Millisecond})
	if _, err := r.Roll(context.Background(), planOf(a)); err != nil {
		t.Fatal(err)
	}
	if n := countCalls(f.Calls(), "unit "+a); n != 0 {
		t.Fatalf("%d reads of the unit's target, want 0: %v", n, f.Calls())
	}
}

package fleetroll

import (
	"context"
	"errors"
	"slices"
	"testing"
)

// decider answers a canary pause with d, recording what it was asked and
// which units had been touched by then.
type decider struct {
	d        Decision
	err      error
	asked    []string
	setsThen []string
	f        interface{ Sets() []string }
}

func (c *decider) hook(n int) *Canary {
	return &Canary{N: n, Decide: func(_ context.Context, _ string, canaries []string, ready func()) (Decision, error) {
		ready()
		c.asked = canaries
		c.setsThen = c.f.Sets()
		return c.d, c.err
	}}
}

func TestCanaryPausesAfterItsUnitsThenPromotes(t *testing.T) {
	units := []string{"s@1.service", "s@2.service", "s@3.service", "s@4.service"}
	f := newFakeFleet(units...)
	c := &decider{d: Decision{Kind: DecisionPromote, By: "test"}, f: f}
	r, _, events := newTestRoller(t, f, Options{Hooks: Hooks{Canary: c.hook(2)}})
	rep, err := r.Roll(t.Context(), planOf(units...))
	if err != nil || rep.Status != StatusSucceeded || rep.Restarted() != 4 {
		t.Fatalf("roll: %v %+v", err, rep)
	}
	if !slices.Equal(c.asked, units[:2]) {
		t.Fatalf("paused after %v", c.asked)
	}
	// At the pause, the canaries were restarted and nothing else touched.
	want := []string{units[0] + " loaded", units[0] + " launched", units[1] + " loaded", units[1] + " launched"}
	if !slices.Equal(c.setsThen, want) {
		t.Fatalf("sets at the pause: %v", c.setsThen)
	}
	if rep.Canary == nil || rep.Canary.Kind != DecisionPromote || rep.Canary.By != "test" || rep.Canary.Decided.Before(rep.Canary.Paused) {
		t.Fatalf("canary record: %+v", rep.Canary)
	}
	var kinds []EventKind
	for _, e := range *events {
		if e.Unit == "" {
			kinds = append(kinds, e.Kind)
			if e.Canary == nil {
				t.Fatalf("rollout event without its canary record: %+v", e)
			}
		}
	}
	if !slices.Equal(kinds, []EventKind{EventPaused, EventDecided}) {
		t.Fatalf("rollout events %v", kinds)
	}
}

func TestCanaryAbortLeavesTheOthersUntouched(t *testing.T) {
	units := []string{"s@1.service", "s@2.service", "s@3.service"}
	f := newFakeFleet(units...)
	c := &decider{d: Decision{Kind: DecisionAbort, By: "fleetroll abort"}, f: f}
	r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{Canary: c.hook(1)}})
	rep, err := r.Roll(t.Context(), planOf(units...))
	var ce *CanaryError
	if !errors.As(err, &ce) || rep.Status != StatusAborted || rep.Restarted() != 1 {
		t.Fatalf("roll: %v %+v", err, rep)
	}
	if got := []Outcome{rep.Units[1].Outcome, rep.Units[2].Outcome}; !slices.Equal(got, []Outcome{OutcomeUntouched, OutcomeUntouched}) {
		t.Fatalf("outcomes after the abort: %v", got)
	}
	if len(f.Sets()) != 2 {
		t.Fatalf("sets %v", f.Sets())
	}
	// A pause that fails (etcd lost) halts the same way, as failed.
	f2 := newFakeFleet(units...)
	c2 := &decider{err: errors.New("etcd unreachable"), f: f2}
	r2, _, _ := newTestRoller(t, f2, Options{Hooks: Hooks{Canary: c2.hook(1)}})
	rep, err = r2.Roll(t.Context(), planOf(units...))
	if err == nil || rep.Status != StatusFailed || len(f2.Sets()) != 2 {
		t.Fatalf("failed pause: %v %+v %v", err, rep, f2.Sets())
	}
	// A newer trigger during the pause: superseded.
	f3 := newFakeFleet(units...)
	c3 := &decider{d: Decision{Kind: DecisionSupersede, By: "rollout abc"}, f: f3}
	r3, _, _ := newTestRoller(t, f3, Options{Hooks: Hooks{Canary: c3.hook(1)}})
	if rep, _ = r3.Roll(t.Context(), planOf(units...)); rep.Status != StatusSuperseded {
		t.Fatalf("superseded pause: %+v", rep)
	}
}

// A canary that covers the whole plan (or more) does not pause.
func TestCanaryOfEveryUnitDoesNotPause(t *testing.T) {
	units := []string{"s@1.service", "s@2.service"}
	f := newFakeFleet(units...)
	c := &decider{d: Decision{Kind: DecisionAbort}, f: f}
	r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{Canary: c.hook(2)}})
	if rep, err := r.Roll(t.Context(), planOf(units...)); err != nil || rep.Canary != nil || c.asked != nil {
		t.Fatalf("roll: %v %+v", err, rep)
	}
}

// An aborted canary of a deploy goes back to the previous release, whatever
// on_failure says.
func TestDeployCanaryAbortRollsTheCanariesBack(t *testing.T) {
	v1, v2 := rel(1), rel(2)
	rels := &memReleases{current: &v1}
	f, names, _ := deployFleet(t, rels, "")
	c := &decider{d: Decision{Kind: DecisionAbort, By: "canary wait", Reason: "my-service@1.service not healthy"}, f: f}
	r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{Canary: c.hook(1)}})
	rep, err := r.Deploy(t.Context(), plan3(names), Deploy{To: v2, Releases: rels, NoPull: true})
	var rb *RolledBackError
	if !errors.As(err, &rb) || rep.Status != StatusRolledBack || rels.image() != v1.Image {
		t.Fatalf("deploy: %v %+v, release %s", err, rep, rels.image())
	}
	want := []Outcome{OutcomeRolledBack, OutcomeUntouched, OutcomeUntouched}
	for i, u := range rep.Units {
		if u.Outcome != want[i] {
			t.Errorf("%s: %s, want %s", u.Unit, u.Outcome, want[i])
		}
	}
	if rep.Units[0].ImageDigest != v1.Digest() {
		t.Errorf("the canary runs %s", rep.Units[0].ImageDigest)
	}
	if len(c.asked) != 1 {
		t.Fatalf("the way back paused too: asked %v", c.asked)
	}
}

// A roll taken over with canaries already restarted pauses after the
// canaries left (at once when none is), and its pause names them all.
func TestCanaryTakenOverCountsTheCanariesDone(t *testing.T) {
	units := []string{"s@1.service", "s@2.service", "s@3.service", "s@4.service"}
	for _, c := range []struct {
		done      int
		wantSets  int
		wantAsked []string
	}{
		{done: 1, wantSets: 4, wantAsked: units[:3]},
		{done: 3, wantSets: 0, wantAsked: units[:3]},
	} {
		f := newFakeFleet(units...)
		d := &decider{d: Decision{Kind: DecisionPromote}, f: f}
		hook := d.hook(3)
		hook.Done = units[:c.done]
		r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{Canary: hook}})
		rep, err := r.Roll(t.Context(), planOf(units[c.done:]...))
		if err != nil || rep.Status != StatusSucceeded || rep.Restarted() != len(units)-c.done {
			t.Fatalf("%d done: %v %+v", c.done, err, rep)
		}
		if !slices.Equal(d.asked, c.wantAsked) || len(d.setsThen) != c.wantSets {
			t.Fatalf("%d done: paused for %v with sets %v", c.done, d.asked, d.setsThen)
		}
	}
}

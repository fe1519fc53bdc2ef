package fleetroll

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/fleet/schema"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

var bgOptions = []fakefleet.Option{{Section: "Service", Name: "ExecStart", Value: "/bin/demo -port %i"}}

// bgFleet is s@1 and s@2 running, each with its sidekick side@N.
func bgFleet() *fakefleet.Fleet {
	f := fakefleet.New()
	for _, n := range []string{"s@1.service", "s@2.service", "side@1.service", "side@2.service"} {
		f.Add(n, fakefleet.Unit{Options: bgOptions})
	}
	return f
}

func TestBlueGreenStartsTheNewOnesBeforeStoppingTheOld(t *testing.T) {
	f := bgFleet()
	var swapped []string
	callsAtSwap := 0
	b := &BlueGreen{Spare: []string{"3", "4"}, Sidekick: "side", Swapped: func(_ context.Context, live, spare []string) error {
		swapped = append(append(swapped, live...), spare...)
		callsAtSwap = len(f.Calls())
		return nil
	}}
	r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{BlueGreen: b}})
	rep, err := r.Roll(t.Context(), bgPlan())
	if err != nil || rep.Status != StatusSucceeded || rep.Strategy != StrategyBlueGreen {
		t.Fatalf("roll: %v %+v", err, rep)
	}
	want := []Outcome{OutcomeRetired, OutcomeRetired, OutcomeLaunched, OutcomeLaunched}
	for i, u := range rep.Units {
		if u.Outcome != want[i] {
			t.Errorf("%s: %s, want %s", u.Unit, u.Outcome, want[i])
		}
	}
	for _, n := range []string{"s@3.service", "s@4.service", "side@3.service", "side@4.service"} {
		u, ok := f.Unit(n)
		if !ok || u.Desired != "launched" || !slices.Equal(u.Options, bgOptions) {
			t.Errorf("%s: %+v", n, u)
		}
	}
	for _, n := range []string{"s@1.service", "s@2.service", "side@1.service", "side@2.service"} {
		if _, ok := f.Unit(n); ok {
			t.Errorf("%s not destroyed", n)
		}
	}
	if !slices.Equal(swapped, []string{"3", "4", "1", "2"}) {
		t.Fatalf("swapped: live and spare %v", swapped)
	}
	// Nothing old was stopped before the swap, which came once both new
	// units ran.
	for _, c := range f.Calls()[:callsAtSwap] {
		if strings.HasPrefix(c, "set s@1") || strings.HasPrefix(c, "set s@2") || strings.HasPrefix(c, "destroy") {
			t.Fatalf("old unit touched before the swap: %q in %v", c, f.Calls()[:callsAtSwap])
		}
	}
}

func TestBlueGreenUnplacedDestroysTheNewOnes(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(*fakefleet.Fleet)
		hooks Hooks
		want  string
		// watch is the minimum healthy time of the new units.
		watch time.Duration
	}{
		{"not placed", func(f *fakefleet.Fleet) {
			f.OnCreate(func(name string, u *fakefleet.Unit) { u.NoState = name == "s@4.service" })
		}, Hooks{}, "not placed on any machine", 0},
		{"fails its start", func(f *fakefleet.Fleet) {
			f.OnCreate(func(name string, u *fakefleet.Unit) { u.FailStart = name == "s@3.service" })
		}, Hooks{}, "failed", 0},
		{"fails its gate", func(*fakefleet.Fleet) {}, Hooks{AfterRunning: func(_ context.Context, unit string, _ *schema.UnitState) error {
			if unit == "s@4.service" {
				return errors.New("instance not healthy")
			}
			return nil
		}}, "instance not healthy", 0},
		{"crashes in its watch", func(f *fakefleet.Fleet) {
			f.OnCreate(func(name string, u *fakefleet.Unit) {
				if name == "s@4.service" {
					u.CrashAfter = 3
				}
			})
		}, Hooks{}, "crashed (failed/failed", 10 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := bgFleet()
			c.setup(f)
			swapped := false
			c.hooks.BlueGreen = &BlueGreen{Spare: []string{"3", "4"}, Sidekick: "side", Swapped: func(context.Context, []string, []string) error {
				swapped = true
				return nil
			}}
			r, _, _ := newTestRoller(t, f, Options{Hooks: c.hooks, MinHealthy: c.watch})
			rep, err := r.Roll(t.Context(), bgPlan())
			if err == nil || rep.Status != StatusFailed || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "the old ones kept serving") {
				t.Fatalf("roll: %v %+v", err, rep)
			}
			if swapped {
				t.Fatal("swapped after a failure")
			}
			for _, n := range []string{"s@3.service", "s@4.service", "side@3.service", "side@4.service"} {
				if _, ok := f.Unit(n); ok {
					t.Errorf("%s not destroyed", n)
				}
			}
			for _, n := range []string{"s@1.service", "s@2.service", "side@1.service", "side@2.service"} {
				if u, ok := f.Unit(n); !ok || u.Desired != "launched" || u.Restarts != 0 {
					t.Errorf("%s touched: %+v", n, u)
				}
			}
			for _, s := range f.Sets() {
				if strings.HasPrefix(s, "s@1") || strings.HasPrefix(s, "s@2") {
					t.Errorf("old unit set: %s", s)
				}
			}
		})
	}
}

func TestBlueGreenRefusesBeforeTouchingAnything(t *testing.T) {
	for _, c := range []struct {
		b    BlueGreen
		want string
	}{
		{BlueGreen{Spare: []string{"3"}}, "1 spare instances for 2 live ones"},
		{BlueGreen{Spare: []string{"2", "3"}}, "spare s@2.service already exists"},
		{BlueGreen{Spare: []string{"3", "4"}, Sidekick: "nope"}, "sidekick nope@1.service"},
	} {
		f := bgFleet()
		r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{BlueGreen: &c.b}})
		if _, err := r.Roll(t.Context(), bgPlan()); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.b, err, c.want)
		}
		for _, call := range f.Calls() {
			if !strings.HasPrefix(call, "units") {
				t.Errorf("%+v: %s", c.b, call)
			}
		}
	}
}

func bgPlan() *Plan {
	return &Plan{Service: "s", Units: []PlannedUnit{{Name: "s@1.service"}, {Name: "s@2.service"}}}
}

// A blue-green deploy that fails before the switch writes the previous
// release back (the old instances run it); one that succeeds keeps the new.
func TestBlueGreenDeploy(t *testing.T) {
	for _, fail := range []bool{false, true} {
		v1, v2 := rel(1), rel(2)
		rels := &memReleases{current: &v1}
		f := bgFleet()
		f.OnCreate(func(name string, u *fakefleet.Unit) { u.FailStart = fail && name == "s@4.service" })
		r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{BlueGreen: &BlueGreen{Spare: []string{"3", "4"}}}})
		rep, err := r.Deploy(t.Context(), bgPlan(), Deploy{To: v2, Releases: rels, NoPull: true})
		if fail {
			var gu *GaveUpError
			if err == nil || rels.image() != v1.Image || !strings.Contains(rep.Error, "kept serving") {
				t.Fatalf("failed blue-green deploy: %v, release %s, %+v", err, rels.image(), rep)
			}
			// Its new instance failed on the release: the release is
			// given up (and so quarantined by the runner).
			if !errors.As(err, &gu) || gu.Back.Image != v1.Image {
				t.Fatalf("a blue-green deploy that failed on its release does not give it up: %#v", err)
			}
			continue
		}
		if err != nil || rels.image() != v2.Image || rep.Units[2].ImageDigest != v2.Digest() {
			t.Fatalf("blue-green deploy: %v, release %s, %+v", err, rels.image(), rep)
		}
	}
}

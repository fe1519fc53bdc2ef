package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/fleet/schema"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// memReleases is Releases in memory, with the same compare-and-swap as the
// etcd store.
type memReleases struct {
	mu      sync.Mutex
	current *Release
	sets    []string
}

func (m *memReleases) Current(context.Context, string) (*Release, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.current == nil {
		return nil, nil
	}
	c := *m.current
	return &c, nil
}

func (m *memReleases) Set(_ context.Context, _ string, rel Release, prev *Release) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if (prev == nil) != (m.current == nil) || prev != nil && prev.Image != m.current.Image {
		return errors.New("the current release changed meanwhile")
	}
	m.current = &rel
	m.sets = append(m.sets, rel.Digest())
	return nil
}

func (m *memReleases) image() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.current == nil {
		return ""
	}
	return m.current.Image
}

func rel(n int) Release {
	return Release{Image: fmt.Sprintf("127.0.0.1:5000/demo/my-service@sha256:%064x", n), Tag: fmt.Sprintf("v%d", n)}
}

// deployFleet is three instances on two machines whose starts run the
// release current at that moment; badImage, when it is current, makes the
// second instance's start fail.
func deployFleet(t *testing.T, rels *memReleases, badImage string) (*fakefleet.Fleet, []string, func() int) {
	t.Helper()
	names := []string{"my-service@1.service", "my-service@2.service", "my-service@3.service"}
	f := fakefleet.New()
	f.Add(names[0], fakefleet.Unit{Machine: "aaaa1111"})
	f.Add(names[1], fakefleet.Unit{Machine: "bbbb2222"})
	f.Add(names[2], fakefleet.Unit{Machine: "aaaa1111"})
	f.SetMachines(map[string]string{"aaaa1111": "10.0.0.1", "bbbb2222": "10.0.0.2"})
	var mu sync.Mutex
	maxDown := 0
	f.SetHook(func(call string) {
		if unit, ok := strings.CutSuffix(strings.TrimPrefix(call, "set "), " launched"); ok && strings.HasPrefix(call, "set my-service@") {
			bad := badImage != "" && rels.image() == badImage && unit == names[1]
			f.Update(unit, func(u *fakefleet.Unit) { u.FailStart = bad })
		}
		down := 0
		for _, n := range names {
			if u, _ := f.Unit(n); u.Active != "active" || u.Sub != "running" {
				down++
			}
		}
		mu.Lock()
		maxDown = max(maxDown, down)
		mu.Unlock()
	})
	return f, names, func() int { mu.Lock(); defer mu.Unlock(); return maxDown }
}

func plan3(names []string) *Plan {
	p := &Plan{Service: "my-service"}
	for _, n := range names {
		p.Units = append(p.Units, PlannedUnit{Name: n})
	}
	return p
}

func TestDeployPrePullsOnEveryMachineBeforeAnyStop(t *testing.T) {
	v1, v2 := rel(1), rel(2)
	rels := &memReleases{current: &v1}
	f, names, _ := deployFleet(t, rels, "")
	r, _, _ := newTestRoller(t, f, Options{})
	rep, err := r.Deploy(context.Background(), plan3(names), Deploy{To: v2, Releases: rels})
	if err != nil {
		t.Fatal(err)
	}
	calls := f.Calls()
	firstStop, created, destroyed := -1, map[string]string{}, map[string]int{}
	for i, c := range calls {
		switch {
		case strings.HasPrefix(c, "create "):
			if firstStop >= 0 {
				t.Fatalf("pull unit created after a stop: %v", calls)
			}
			created[strings.TrimPrefix(c, "create ")] = ""
		case strings.HasPrefix(c, "destroy "):
			destroyed[strings.TrimPrefix(c, "destroy ")] = i
		case strings.HasSuffix(c, " loaded") && firstStop < 0:
			firstStop = i
		}
	}
	if len(created) != 2 {
		t.Fatalf("pull units created: %v, want one per machine", created)
	}
	for name := range created {
		if i, ok := destroyed[name]; !ok || i > firstStop {
			t.Fatalf("pull unit %s destroyed at %d, first stop at %d", name, i, firstStop)
		}
		if !strings.HasPrefix(name, PullPrefix+"my-service-"+r.RolloutID()+"-") {
			t.Fatalf("pull unit name %s", name)
		}
	}
	if rels.image() != v2.Image {
		t.Fatalf("current release %s, want %s", rels.image(), v2.Image)
	}
	if rep.Status != StatusSucceeded || rep.Release == nil || rep.Release.From.Image != v1.Image || rep.Release.To.Image != v2.Image || rep.Release.To.Rollout != r.RolloutID() {
		t.Fatalf("report %+v release %+v", rep, rep.Release)
	}
	if rep.Pull == nil || len(rep.Pull.Machines) != 2 || rep.Pull.Machines[0].Machine != "aaaa1111" || rep.Pull.Machines[1].Error != "" {
		t.Fatalf("pull report %+v", rep.Pull)
	}
	for _, u := range rep.Units {
		if u.Outcome != OutcomeRestarted || u.ImageDigest != v2.Digest() {
			t.Fatalf("unit %+v", u)
		}
	}
}

// An instance whose machine fleet has not published yet is waited for
// (then pulled on its machine alone); one never placed makes every machine
// pull, and the record says why. A pre-pull never covers zero machines.
func TestDeployPrePullsWhereAnUnplacedInstanceCanLand(t *testing.T) {
	for _, placed := range []bool{true, false} {
		t.Run(fmt.Sprintf("placed %v", placed), func(t *testing.T) {
			v1, v2 := rel(1), rel(2)
			rels := &memReleases{current: &v1}
			f, names, _ := deployFleet(t, rels, "")
			f.SetMachines(map[string]string{"aaaa1111": "10.0.0.1", "bbbb2222": "10.0.0.2", "cccc3333": "10.0.0.3"})
			f.Update(names[1], func(u *fakefleet.Unit) { u.NoState = true })
			var polls atomic.Int32
			f.SetHook(func(call string) {
				// Placed after two polls; or only once the pull began.
				if (placed && strings.HasPrefix(call, "state "+names[1]) && polls.Add(1) == 3) || (!placed && strings.HasPrefix(call, "create ")) {
					f.Update(names[1], func(u *fakefleet.Unit) { u.NoState = false })
				}
			})
			r, _, _ := newTestRoller(t, f, Options{})
			rep, err := r.Deploy(t.Context(), plan3(names), Deploy{To: v2, Releases: rels, Pull: PullOptions{PlacementWait: 200 * time.Millisecond}})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range rep.Pull.Machines {
				got = append(got, m.Machine+": "+m.Why)
			}
			want := []string{"aaaa1111: runs " + names[0] + "; runs " + names[2], "bbbb2222: runs " + names[1]}
			if !placed {
				lands := names[1] + " not placed by fleet after 200ms: it could land here"
				want = []string{"aaaa1111: runs " + names[0] + "; runs " + names[2] + "; " + lands, "bbbb2222: " + lands, "cccc3333: " + lands}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("pulled on\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
			}
		})
	}
	// No machine at all: refused, nothing stopped.
	v1, v2 := rel(1), rel(2)
	rels := &memReleases{current: &v1}
	f, names, _ := deployFleet(t, rels, "")
	f.SetMachines(map[string]string{})
	for _, n := range names {
		f.Update(n, func(u *fakefleet.Unit) { u.NoState = true })
	}
	r, _, _ := newTestRoller(t, f, Options{})
	if _, err := r.Deploy(t.Context(), plan3(names), Deploy{To: v2, Releases: rels, Pull: PullOptions{PlacementWait: 20 * time.Millisecond}}); err == nil || !strings.Contains(err.Error(), "no machine to pull on") {
		t.Fatalf("no machine: %v", err)
	}
	for _, c := range f.Calls() {
		if strings.HasSuffix(c, " loaded") {
			t.Fatalf("stopped %s", c)
		}
	}
}

func TestPullUnitIsPinnedAndBuiltFromCheckedValues(t *testing.T) {
	v2 := rel(2)
	u, key, err := PullUnit("my-service", "0123456789ab", "aaaa1111bbbb", v2.Image)
	if err != nil {
		t.Fatal(err)
	}
	opts := map[string][]string{}
	for _, o := range u.Options {
		opts[o.Section+"."+o.Name] = append(opts[o.Section+"."+o.Name], o.Value)
	}
	if got := opts["X-Fleet.MachineID"]; len(got) != 1 || got[0] != "aaaa1111bbbb" {
		t.Fatalf("MachineID %v", got)
	}
	if opts["Service.Type"][0] != "oneshot" || opts["Service.RemainAfterExit"][0] != "yes" {
		t.Fatalf("not a oneshot that stays active: %v", opts)
	}
	if !strings.Contains(strings.Join(opts["Service.Environment"], " "), "IMAGE="+v2.Image) || key != PullErrorsPrefix+"/my-service/0123456789ab/aaaa1111" {
		t.Fatalf("env %v key %s", opts["Service.Environment"], key)
	}
	for _, bad := range []struct{ service, rollout, machine, image string }{
		{"my-service", "0123456789ab", "aaaa", "127.0.0.1:5000/demo/x:latest"},
		{"my-service", "0123456789ab", "aaaa", "127.0.0.1:5000/demo/x@sha256:$(reboot)"},
		{"my-service", "0123456789ab", "a'a", v2.Image},
		{"my service", "0123456789ab", "aaaa", v2.Image},
		{"my-service", "nope", "aaaa", v2.Image},
	} {
		if _, _, err := PullUnit(bad.service, bad.rollout, bad.machine, bad.image); err == nil {
			t.Errorf("PullUnit(%+v) accepted", bad)
		}
	}
}

func TestDeployHaltsBeforeAnyStopWhenAPullFails(t *testing.T) {
	v1, v2 := rel(1), rel(2)
	rels := &memReleases{current: &v1}
	f, names, _ := deployFleet(t, rels, "")
	f.OnCreate(func(name string, u *fakefleet.Unit) {
		if u.Machine == "bbbb2222" {
			u.FailStart = true
		}
	})
	r, _, _ := newTestRoller(t, f, Options{})
	var asked []string
	rep, err := r.Deploy(context.Background(), plan3(names), Deploy{To: v2, Releases: rels, Pull: PullOptions{
		Reason: func(_ context.Context, key string) string {
			asked = append(asked, key)
			return "manifest unknown: blob sha256:abc not found"
		}}})
	var pe *PullError
	if !errors.As(err, &pe) || pe.Machine != "bbbb2222" || !strings.Contains(err.Error(), "manifest unknown") || !strings.Contains(err.Error(), "no instance was touched") {
		t.Fatalf("err = %v", err)
	}
	if rep.Phase != PhasePull || rep.Status != StatusFailed || rels.image() != v1.Image {
		t.Fatalf("report %+v, current %s", rep, rels.image())
	}
	if len(asked) != 1 || !strings.HasSuffix(asked[0], "/bbbb2222") {
		t.Fatalf("reasons asked for %v", asked)
	}
	for _, n := range names {
		notRestarted(t, f.Calls(), n)
	}
	assertPullUnitsGone(t, f)
	for _, u := range rep.Units {
		if u.Outcome != OutcomeUntouched {
			t.Fatalf("unit %+v", u)
		}
	}
}

// notRestarted fails the test when unit's target state was set (its state
// may be read: the pre-pull asks where each instance runs).
func notRestarted(t *testing.T, calls []string, unit string) {
	t.Helper()
	for _, c := range calls {
		if strings.HasPrefix(c, "set "+unit+" ") {
			t.Fatalf("%s was touched: %q", unit, c)
		}
	}
}

func assertPullUnitsGone(t *testing.T, f *fakefleet.Fleet) {
	t.Helper()
	created, destroyed := 0, 0
	for _, c := range f.Calls() {
		if strings.HasPrefix(c, "create "+PullPrefix) {
			created++
			if _, ok := f.Unit(strings.TrimPrefix(c, "create ")); ok {
				t.Fatalf("%s left in fleet", strings.TrimPrefix(c, "create "))
			}
		}
		if strings.HasPrefix(c, "destroy "+PullPrefix) {
			destroyed++
		}
	}
	if created == 0 || destroyed < created {
		t.Fatalf("%d pull units created, %d destroyed", created, destroyed)
	}
}

func TestDeployInterruptedDuringThePullDestroysThePullUnits(t *testing.T) {
	v1, v2 := rel(1), rel(2)
	rels := &memReleases{current: &v1}
	f, names, _ := deployFleet(t, rels, "")
	f.OnCreate(func(_ string, u *fakefleet.Unit) { u.StartPolls = 1000 }) // a slow pull
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var n atomic.Int32 // the pulls poll at once
	f.SetHook(func(call string) {
		if strings.HasPrefix(call, "state "+PullPrefix) && n.Add(1) == 3 {
			cancel() // Ctrl-C
		}
	})
	r, _, _ := newTestRoller(t, f, Options{})
	rep, err := r.Deploy(ctx, plan3(names), Deploy{To: v2, Releases: rels})
	if !errors.Is(err, context.Canceled) || rep.Status != StatusInterrupted || rep.Phase != PhasePull {
		t.Fatalf("err = %v, report %+v", err, rep)
	}
	assertPullUnitsGone(t, f)
	for _, n := range names {
		notRestarted(t, f.Calls(), n)
	}
	if rels.image() != v1.Image {
		t.Fatal("the release changed")
	}
}

func TestDeployRollsBackToThePreviousRelease(t *testing.T) {
	for _, phase := range []Phase{PhaseStart, PhaseHealth} {
		t.Run(string(phase), func(t *testing.T) {
			v2, v3 := rel(2), rel(3)
			rels := &memReleases{current: &v2}
			bad := ""
			var opt Options
			if phase == PhaseStart {
				bad = v3.Image // the second instance fails to start on v3
			}
			f, names, maxDown := deployFleet(t, rels, bad)
			if phase == PhaseHealth {
				opt.Hooks.AfterRunning = func(_ context.Context, unit string, _ *schema.UnitState) error {
					if unit == names[1] && rels.image() == v3.Image {
						return errors.New("health gate: 500 Internal Server Error")
					}
					return nil
				}
			}
			r, _, _ := newTestRoller(t, f, opt)
			var notes []string
			rep, err := r.Deploy(context.Background(), plan3(names), Deploy{To: v3, Releases: rels, OnFailure: OnFailureRollback,
				Note: func(m string) { notes = append(notes, m) }})
			var rb *RolledBackError
			if !errors.As(err, &rb) || rb.To.Image != v2.Image {
				t.Fatalf("err = %v", err)
			}
			if rep.Status != StatusRolledBack || rels.image() != v2.Image {
				t.Fatalf("status %s, current %s", rep.Status, rels.image())
			}
			// What is true at the end: every instance is back, none down.
			for _, msg := range []string{err.Error(), rep.Error} {
				if strings.Contains(msg, "IS DOWN") || !strings.Contains(msg, names[1]) || !strings.Contains(msg, "rolled back to "+v2.Image+": every instance it moved runs it again") {
					t.Fatalf("final message %q", msg)
				}
			}
			if got := strings.Join(rels.sets, ","); got != v3.Digest()+","+v2.Digest() {
				t.Fatalf("release writes %s", got)
			}
			if rep.Release.From.Image != v2.Image || rep.Release.To.Image != v3.Image {
				t.Fatalf("release %+v", rep.Release)
			}
			want := []Outcome{OutcomeRolledBack, OutcomeRolledBack, OutcomeUntouched}
			for i, u := range rep.Units {
				if u.Outcome != want[i] {
					t.Fatalf("unit %d: %+v, want %s", i, u, want[i])
				}
				if i < 2 && u.ImageDigest != v2.Digest() {
					t.Fatalf("unit %d runs %s", i, u.ImageDigest)
				}
			}
			if u := rep.Units[1]; !strings.Contains(u.Error, string(phase)) || strings.Contains(u.Error, "IS DOWN") || u.LeftStopped ||
				!strings.HasSuffix(u.Error, "rolled back: it runs the previous release again") {
				t.Fatalf("the failed unit's error is lost, or untrue at the end: %+v", u)
			}
			notRestarted(t, f.Calls(), names[2])
			if maxDown() != 1 {
				t.Fatalf("%d instances down at once", maxDown())
			}
			if !strings.Contains(strings.Join(notes, "\n"), "rolling back to "+v2.Image) {
				t.Fatalf("notes %v", notes)
			}
		})
	}
}

func TestDeployFirstReleaseCannotRollBack(t *testing.T) {
	v3 := rel(3)
	rels := &memReleases{}
	f, names, _ := deployFleet(t, rels, v3.Image)
	r, _, _ := newTestRoller(t, f, Options{})
	rep, err := r.Deploy(context.Background(), plan3(names), Deploy{To: v3, Releases: rels, OnFailure: OnFailureRollback})
	if !errors.Is(err, ErrNoPrevious) || rep.Status != StatusFailed || !strings.Contains(rep.Error, "first deploy") {
		t.Fatalf("err = %v, report %+v", err, rep)
	}
	if rels.image() != v3.Image {
		t.Fatalf("current %s", rels.image())
	}
}

func TestDeployRefusesWhenTheReleaseChangedMeanwhile(t *testing.T) {
	v1, v2 := rel(1), rel(2)
	rels := &memReleases{current: &v1}
	f, names, _ := deployFleet(t, rels, "")
	// Another fleetroll deploys between this one's read and its write.
	f.SetHook(func(call string) {
		if strings.HasPrefix(call, "destroy ") {
			rels.mu.Lock()
			other := rel(9)
			rels.current = &other
			rels.mu.Unlock()
		}
	})
	r, _, _ := newTestRoller(t, f, Options{})
	_, err := r.Deploy(context.Background(), plan3(names), Deploy{To: v2, Releases: rels})
	if err == nil || !strings.Contains(err.Error(), "changed meanwhile") || !strings.Contains(err.Error(), "no instance was touched") {
		t.Fatalf("err = %v", err)
	}
	for _, n := range names {
		notRestarted(t, f.Calls(), n)
	}
}

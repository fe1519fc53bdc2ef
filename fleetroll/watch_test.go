package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coreos/fleet/schema"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

func TestWatchStatus(t *testing.T) {
	st := func(active, sub, machine string) *schema.UnitState {
		return &schema.UnitState{SystemdActiveState: active, SystemdSubState: sub, MachineID: machine}
	}
	for _, c := range []struct {
		name string
		st   *schema.UnitState
		want string // "" when it runs well
	}{
		{"running", st("active", "running", "m1"), ""},
		{"crashed", st("failed", "failed", "m1"), "crashed (failed/failed"},
		{"restarting", st("activating", "auto-restart", "m1"), "restarting (activating/auto-restart"},
		{"stopped", st("inactive", "dead", "m1"), "stopped (inactive/dead"},
		{"stopping", st("deactivating", "stop-sigterm", "m1"), "stopped (deactivating/stop-sigterm"},
		{"exited", st("active", "exited", "m1"), "not running (active/exited"},
		{"moved", st("active", "running", "m2"), "moved from machine m1 to m2"},
		{"no state", nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			msg, err := WatchStatus(c.st, "m1")
			switch {
			case c.want == "" && c.st == nil && (err != nil || !strings.Contains(msg, "not judged")):
				t.Fatalf("WatchStatus(no state) = %q, %v; want not judged", msg, err)
			case c.want == "" && c.st != nil && (err != nil || !strings.HasPrefix(msg, "running")):
				t.Fatalf("WatchStatus = %q, %v; want running", msg, err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("WatchStatus = %q, %v; want an error with %q", msg, err, c.want)
			}
		})
	}
}

func TestProbeVerdict(t *testing.T) {
	refusedErr := &net.OpError{Op: "dial", Net: "tcp", Err: fmt.Errorf("connect: %w", errConnRefused())}
	bad := errors.New("answered 503 Service Unavailable")
	for _, c := range []struct {
		name   string
		err    error
		before int
		count  int
		fails  string
	}{
		{"well", nil, 2, 0, ""},
		{"first bad answer", bad, 0, 1, ""},
		{"second bad answer", bad, 1, 2, ""},
		{"third bad answer", bad, 2, 3, "unhealthy 3 times in a row (last: answered 503"},
		{"refused at once", refusedErr, 0, 1, "refused"},
		// fleet's API failing (even refusing) as the check's URL is sought
		// is not the unit failing: the count stays.
		{"not probed", fmt.Errorf("%w: list machines: %w", ErrNotProbed, refusedErr), 2, 2, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, err := probeVerdict(c.err, c.before)
			if n != c.count || (c.fails == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.fails)) {
				t.Fatalf("probeVerdict = %d, %v; want %d and %q", n, err, c.count, c.fails)
			}
		})
	}
}

// errConnRefused is a refused connection as the dialer reports it.
func errConnRefused() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = net.Dial("tcp", addr)
	if err == nil {
		panic("a closed port answered")
	}
	return err
}

// A release that crashes a few seconds after its start fails the roll at
// that unit, in the watch, before the next unit is touched; the record
// says how it was seen and when.
func TestWatchFailsAUnitThatCrashesAfterItsStart(t *testing.T) {
	a, b, c := "s@1.service", "s@2.service", "s@3.service"
	f := newFakeFleet(a)
	f.Add(b, fakefleet.Unit{CrashAfter: 6}) // six polls of 1 s running, then failed
	f.Add(c, fakefleet.Unit{})
	r, _, _ := newTestRoller(t, f, Options{MinHealthy: 10 * time.Second, PollInterval: time.Second, Grace: 15 * time.Second})
	rep, err := r.Roll(context.Background(), planOf(a, b, c))
	var ue *UnitError
	if !errors.As(err, &ue) || ue.Unit != b || ue.Phase != PhaseWatch || ue.LeftStopped || !errors.Is(err, ErrCrashed) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "crashed (failed/failed") || !strings.Contains(err.Error(), "s after its start") {
		t.Fatalf("the error does not say how and when it failed: %v", err)
	}
	untouched(t, f.Calls(), c)
	got := []Outcome{rep.Units[0].Outcome, rep.Units[1].Outcome, rep.Units[2].Outcome}
	if want := []Outcome{OutcomeRestarted, OutcomeFailed, OutcomeUntouched}; !reflect.DeepEqual(got, want) {
		t.Fatalf("outcomes = %v, want %v", got, want)
	}
	if rep.Status != StatusFailed || rep.Phase != PhaseWatch || rep.Units[1].Phase != PhaseWatch {
		t.Fatalf("report = %+v", rep)
	}
}

// The last unit is watched too (it has no grace period), and the watch
// runs alongside the grace period: a unit's slot is held for the longer of
// the two, with the watch first.
func TestWatchCoversTheLastUnitAndRunsAlongsideTheGrace(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a)
	f.Add(b, fakefleet.Unit{CrashAfter: 4})
	r, _, _ := newTestRoller(t, f, Options{MinHealthy: 10 * time.Second, PollInterval: time.Second, Grace: 25 * time.Second})
	rep, err := r.Roll(context.Background(), planOf(a, b))
	var ue *UnitError
	if !errors.As(err, &ue) || ue.Unit != b || ue.Phase != PhaseWatch {
		t.Fatalf("the last unit's crash was not seen: %v", err)
	}
	var phases []string
	for _, sp := range rep.Units[0].Phases {
		phases = append(phases, fmt.Sprintf("%s %.0fs", sp.Phase, sp.Finished.Sub(sp.Started).Seconds()))
	}
	if want := []string{"stop 1s", "start 1s", "watch 10s", "grace 15s"}; !reflect.DeepEqual(phases, want) {
		t.Fatalf("phases of %s = %v, want %v (the grace is what is left of it after the watch)", a, phases, want)
	}

	// A well unit with no grace: the watch alone holds it.
	f = newFakeFleet(a)
	r, _, _ = newTestRoller(t, f, Options{MinHealthy: 10 * time.Second, PollInterval: time.Second})
	rep, err = r.Roll(context.Background(), planOf(a))
	if err != nil || rep.Units[0].Outcome != OutcomeRestarted {
		t.Fatalf("a well unit: %v, %+v", err, rep.Units[0])
	}
	last := rep.Units[0].Phases[len(rep.Units[0].Phases)-1]
	if last.Phase != PhaseWatch || last.Finished.Sub(last.Started) != 10*time.Second {
		t.Fatalf("last phase = %+v, want a 10s watch", last)
	}
}

// With a health check, the watch probes it: a refused connection fails at
// once (a unit that restarts itself faster than fleet publishes states is
// still caught), other failures after three in a row.
func TestWatchProbesTheHealthCheck(t *testing.T) {
	for _, c := range []struct {
		name  string
		probe func(n int) error
		want  string
	}{
		{"refused", func(n int) error {
			if n < 3 {
				return nil
			}
			_, err := net.Dial("tcp", closedPort(t))
			return err
		}, "its health check was refused"},
		{"unhealthy", func(n int) error {
			if n < 2 {
				return nil
			}
			return errors.New("answered 503 Service Unavailable")
		}, "unhealthy 3 times in a row"},
		{"a blip", func(n int) error {
			if n == 2 || n == 4 {
				return errors.New("answered 503 Service Unavailable")
			}
			return nil
		}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := "s@1.service"
			f := newFakeFleet(a)
			n := 0
			r, _, _ := newTestRoller(t, f, Options{MinHealthy: 10 * time.Second, PollInterval: time.Second,
				Hooks: Hooks{Probe: func(ctx context.Context, unit string, st *schema.UnitState) error {
					n++
					if unit != a || st == nil {
						return fmt.Errorf("probe of %s with state %v", unit, st)
					}
					return c.probe(n)
				}}})
			_, err := r.Roll(context.Background(), planOf(a))
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("a passing blip failed the unit: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

func closedPort(t *testing.T) string {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close()
	return addr
}

// A deploy whose instance crashes in its watch rolls back with
// --on-failure rollback, as one that fails its start does.
func TestDeployRollsBackAUnitThatCrashesInItsWatch(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet()
	f.Add(a, fakefleet.Unit{CrashAfter: 3})
	f.Add(b, fakefleet.Unit{})
	r, _, _ := newTestRoller(t, f, Options{MinHealthy: 10 * time.Second, PollInterval: time.Second})
	v1, v2 := rel(1), rel(2)
	store := &memReleases{current: &v1}
	// The way back starts well: the crash is the new release's.
	f.SetHook(func(call string) {
		if call == "set "+a+" loaded" && store.image() == v1.Image {
			f.Update(a, func(u *fakefleet.Unit) { u.CrashAfter = 0 })
		}
	})
	rep, err := r.Deploy(context.Background(), planOf(a, b), Deploy{To: v2, Releases: store, OnFailure: OnFailureRollback, NoPull: true})
	var rb *RolledBackError
	if !errors.As(err, &rb) || rep.Status != StatusRolledBack {
		t.Fatalf("err = %v, status %s", err, rep.Status)
	}
	if rep.Units[0].Outcome != OutcomeRolledBack || rep.Units[1].Outcome != OutcomeUntouched {
		t.Fatalf("outcomes = %s, %s", rep.Units[0].Outcome, rep.Units[1].Outcome)
	}
	untouched(t, f.Calls(), b)
}

// The progress deadline ends a wait that fleet's agent never ends (it
// never acts on the stop), long before the stop timeout: the roll halts
// there, naming the unit and the phase, and the unit is set back to
// launched.
func TestProgressDeadlineHaltsARollThatDoesNotProgress(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet()
	f.Add(a, fakefleet.Unit{StuckStop: true})
	f.Add(b, fakefleet.Unit{})
	r, clock, _ := newTestRoller(t, f, Options{ProgressDeadline: 30 * time.Second, PollInterval: time.Second})
	t0 := clock.Now()
	rep, err := r.Roll(context.Background(), planOf(a, b))
	var ue *UnitError
	if !errors.As(err, &ue) || ue.Unit != a || ue.Phase != PhaseStop || !errors.Is(err, ErrNoProgress) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "stop s@1.service: no progress: no unit got through in the progress deadline of 30s") {
		t.Fatalf("the error does not name the unit, the phase and the deadline: %v", err)
	}
	if d := clock.Now().Sub(t0); d > 35*time.Second {
		t.Fatalf("the roll took %s, want about the 30s deadline (the stop timeout is 2m)", d)
	}
	if got := f.Sets(); !reflect.DeepEqual(got, []string{a + " loaded", a + " launched"}) {
		t.Fatalf("sets = %v: the unit must be set back to launched", got)
	}
	untouched(t, f.Calls(), b)
	if rep.Status != StatusFailed || rep.Phase != PhaseStop {
		t.Fatalf("status %s, phase %s", rep.Status, rep.Phase)
	}

	// A start that never comes, and a deadline that each unit getting
	// through moves on: the first unit's 20 s do not count against the
	// second's.
	f = newFakeFleet()
	f.Add(a, fakefleet.Unit{})
	f.Add(b, fakefleet.Unit{StartPolls: 1000})
	r, _, _ = newTestRoller(t, f, Options{ProgressDeadline: 30 * time.Second, PollInterval: time.Second, Grace: 20 * time.Second})
	_, err = r.Roll(context.Background(), planOf(a, b))
	if !errors.As(err, &ue) || ue.Unit != b || ue.Phase != PhaseStart || !errors.Is(err, ErrNoProgress) {
		t.Fatalf("err = %v", err)
	}
}

// A unit an operator destroys during its watch is someone else's decision,
// not a crash of the release: the roll halts with ErrTargetChanged, and a
// deploy does not roll back (nor, upstream, quarantine its digest).
func TestWatchTellsADestroyedUnitFromACrash(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	polls := 0
	f.SetHook(func(call string) {
		if !strings.HasPrefix(call, "state "+a) {
			return
		}
		if polls++; polls == 6 { // well into its watch
			f.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodDelete, "/fleet/v1/units/"+a, nil))
		}
	})
	r, _, _ := newTestRoller(t, f, Options{MinHealthy: 10 * time.Second, PollInterval: time.Second})
	v1, v2 := rel(1), rel(2)
	store := &memReleases{current: &v1}
	_, err := r.Deploy(context.Background(), planOf(a, b), Deploy{To: v2, Releases: store, OnFailure: OnFailureRollback, NoPull: true})
	if !errors.Is(err, ErrTargetChanged) || errors.Is(err, ErrCrashed) {
		t.Fatalf("err = %v, want ErrTargetChanged, not a crash", err)
	}
	if errors.As(err, new(*RolledBackError)) || store.image() != v2.Image {
		t.Fatalf("a destroyed unit rolled the deploy back: %v", err)
	}
	untouched(t, f.Calls(), b)
}

// A deploy whose rollout stalls past its progress deadline, even in a
// stop, rolls back with --on-failure rollback: the units it moved go back.
func TestDeployRollsBackPastItsProgressDeadline(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a)
	f.Add(b, fakefleet.Unit{StuckStop: true})
	r, _, _ := newTestRoller(t, f, Options{ProgressDeadline: 30 * time.Second, PollInterval: time.Second})
	v1, v2 := rel(1), rel(2)
	store := &memReleases{current: &v1}
	f.SetHook(func(call string) {
		if call == "set "+b+" launched" {
			f.Update(b, func(u *fakefleet.Unit) { u.StuckStop = false })
		}
	})
	rep, err := r.Deploy(context.Background(), planOf(a, b), Deploy{To: v2, Releases: store, OnFailure: OnFailureRollback, NoPull: true})
	var rb *RolledBackError
	if !errors.As(err, &rb) || !errors.Is(err, ErrNoProgress) || rep.Status != StatusRolledBack || store.image() != v1.Image {
		t.Fatalf("err = %v, status %s, release %s", err, rep.Status, store.image())
	}
	if rep.Units[0].Outcome != OutcomeRolledBack {
		t.Fatalf("%s: %s, want rolled_back", a, rep.Units[0].Outcome)
	}
}

// A stop whose write fleet's agent ignores (it missed it) is diagnosed
// within the phase, once: the record's stop span and the log say what
// fleet's agent and state showed and what fleetroll did; a stop fleet acts
// on at once is not.
func TestAStalledPhaseIsDiagnosedWithinIt(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet()
	f.Add(a, fakefleet.Unit{MissWrites: 2})
	f.Add(b, fakefleet.Unit{})
	var log strings.Builder
	r, _, _ := newTestRoller(t, f, Options{PollInterval: time.Second, NudgeInterval: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	rep, err := r.Roll(context.Background(), planOf(a, b))
	if err != nil {
		t.Fatal(err)
	}
	stop := rep.Units[0].Phases[0]
	if stop.Phase != PhaseStop || !strings.Contains(stop.Diagnosis, "stop pending for 3s") ||
		!strings.Contains(stop.Diagnosis, `fleet's agent has not acted on the write (it last acted on "launched")`) ||
		!strings.Contains(stop.Diagnosis, "writes the target again every 2s") {
		t.Fatalf("the stop's diagnosis: %+v", stop)
	}
	if !stop.Finished.After(stop.Started.Add(StallAfter)) {
		t.Fatalf("diagnosed in a phase that ended before the stall: %+v", stop)
	}
	if n := strings.Count(log.String(), "phase stalled"); n != 1 || !strings.Contains(log.String(), "unit="+a) {
		t.Fatalf("%d stall lines in the log:\n%s", n, log.String())
	}
	for _, sp := range rep.Units[1].Phases {
		if sp.Diagnosis != "" {
			t.Fatalf("a prompt phase was diagnosed: %+v", sp)
		}
	}
}

func TestStalled(t *testing.T) {
	running := &schema.UnitState{SystemdActiveState: "active", SystemdSubState: "running", MachineID: "m1"}
	for _, c := range []struct {
		name                     string
		target, desired, current string
		unloading                int
		err                      error
		nudge                    time.Duration
		want                     string
	}{
		{"missed, nudging", "loaded", "loaded", "launched", 0, nil, time.Second, "has not acted on the write (it last acted on \"launched\"): it missed it; fleetroll writes the target again every 1s"},
		{"missed, no nudging", "loaded", "loaded", "launched", 0, nil, 0, "with nudging off, fleet's agent acts at its next reconcile"},
		{"acted, not published", "loaded", "loaded", "loaded", 2, nil, time.Second, "acted on it (its current state is \"loaded\"), but fleet has not published systemd's new state yet: it publishes a change within about a second, but fleet v1.0.0 can lose one that falls on its periodic republish"},
		{"busy unloading units destroyed", "launched", "launched", "loaded", 3, nil, time.Second, "has not acted on the write (it last acted on \"loaded\"): it is busy: 3 unit(s) destroyed on its machine are not unloaded yet, and fleet v1.0.0's agent unloads them one per reconcile"},
		{"changed by someone", "launched", "loaded", "loaded", 0, nil, time.Second, "someone else changed it"},
		{"no answer", "launched", "", "", 0, errors.New("timeout"), time.Second, "fleet's API did not say what its agent did (timeout)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Stalled(c.target, c.desired, c.current, c.unloading, c.err, running, 3200*time.Millisecond, c.nudge)
			if !strings.Contains(got, c.want) || !strings.Contains(got, "pending for 3.2s, fleet showing active/running") {
				t.Fatalf("Stalled = %q, want %q", got, c.want)
			}
		})
	}
}

// The units a machine's agent has yet to unload: a state published there
// for a unit fleet no longer lists.
func TestUnloading(t *testing.T) {
	units := []*schema.Unit{{Name: "s@1.service"}, {Name: "s@2.service"}, nil}
	state := func(name, machine string) *schema.UnitState { return &schema.UnitState{Name: name, MachineID: machine} }
	states := []*schema.UnitState{state("s@1.service", "m1"), state("s@2.service", "m2"), state("gone@1.service", "m1"),
		state("gone@2.service", "m1"), state("gone@3.service", "m2"), nil}
	for _, c := range []struct {
		machine string
		want    int
	}{{"m1", 2}, {"m2", 1}, {"m3", 0}} {
		if got := Unloading(units, states, c.machine); got != c.want {
			t.Errorf("Unloading on %s = %d, want %d", c.machine, got, c.want)
		}
	}
	if got := Unloading(nil, nil, "m1"); got != 0 {
		t.Errorf("Unloading of nothing = %d", got)
	}
}

// fleet publishes no state for a launched unit at times (it or its agent
// restarting, under load): during the watch that is no crash, and the
// unit passes; only one destroyed or stopped by someone else halts it.
func TestWatchToleratesAStateFleetDoesNotPublish(t *testing.T) {
	a := "s@1.service"
	f := newFakeFleet(a)
	polls := 0
	f.SetHook(func(call string) {
		if strings.HasPrefix(call, "state "+a) {
			polls++
			if u, _ := f.Unit(a); u.Restarts > 0 && u.Active == "active" {
				// Three polls into the watch, three polls without a state.
				f.Update(a, func(u *fakefleet.Unit) { u.NoState = polls >= 6 && polls < 9 })
			}
		}
	})
	r, _, _ := newTestRoller(t, f, Options{MinHealthy: 10 * time.Second, PollInterval: time.Second})
	rep, err := r.Roll(context.Background(), planOf(a))
	if err != nil || rep.Units[0].Outcome != OutcomeRestarted {
		t.Fatalf("a unit whose state went missing a moment was failed: %v %+v", err, rep.Units[0])
	}
	if polls < 9 {
		t.Fatalf("the watch polled %d times: the missing states were not seen", polls)
	}
}

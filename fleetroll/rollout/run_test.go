package rollout

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/clocktest"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
	client "go.etcd.io/etcd/client/v2"
)

func startEtcd(t *testing.T) client.KeysAPI {
	t.Helper()
	url, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{url}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return kapi
}

func newFleet(t *testing.T, ff *fakefleet.Fleet) fleetroll.Fleet {
	t.Helper()
	srv := httptest.NewServer(ff)
	t.Cleanup(srv.Close)
	f, err := fleetroll.Connect(srv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// fast are settings for the fake fleet: no grace, no watch after the
// start, quick polls.
func fast() Settings {
	s := Defaults()
	s.Grace, s.PollInterval, s.MinHealthyTime = 0, time.Millisecond, 0
	return s
}

// A rollout with etcd takes the lock by default and writes its intent
// before it stops a unit, clearing it once the unit is back; the next
// rollout, finding the intent of one that died, restores its units first
// and records that rollout as interrupted. A unit that cannot be restored
// fails the recovery: nothing else is touched, the intent stays.
func TestRunKeepsAnIntentAndRecoversADeadOne(t *testing.T) {
	kapi := startEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	a, b := "my-service@1.service", "my-service@2.service"
	ff := fakefleet.New(a, b)
	r := Runner{Fleet: newFleet(t, ff), Etcd: kapi}
	intents := coord.Intents{KAPI: kapi}
	var mu sync.Mutex
	var seen []string
	ff.SetHook(func(call string) {
		if strings.HasPrefix(call, "set ") {
			in, err := intents.Get(ctx, "my-service")
			mu.Lock()
			defer mu.Unlock()
			if err != nil || in == nil {
				seen = append(seen, call+": no intent")
				return
			}
			seen = append(seen, call+": "+string(in.Units[0].Phase))
		}
	})
	s := fast()
	s.Ports = PortList{"1"}
	rep, err := r.Run(ctx, Request{ID: "00000000000a", Service: "my-service", Settings: s, Owner: "first", Trigger: fleetroll.Trigger{Source: "cli"}})
	if err != nil || rep.Status != fleetroll.StatusSucceeded {
		t.Fatalf("run: %v %+v", err, rep)
	}
	mu.Lock()
	got := strings.Join(seen, "; ")
	mu.Unlock()
	if got != "set "+a+" loaded: stop; set "+a+" launched: start" {
		t.Fatalf("intent at each write: %s", got)
	}
	if in, _ := intents.Get(ctx, "my-service"); in != nil {
		t.Fatalf("intent left after the unit came back: %+v", in)
	}
	if rec, ok, err := (coord.History{KAPI: kapi}).Get(ctx, "00000000000a"); err != nil || !ok || rec.By != "first" || rec.Status != fleetroll.StatusSucceeded {
		t.Fatalf("history: %+v %v %v", rec, ok, err)
	}

	// A fleetroll that died with b stopped: its intent, its lock expired.
	ff.SetHook(nil)
	ff.Update(b, func(u *fakefleet.Unit) { u.Desired, u.Active, u.Sub = "loaded", "inactive", "dead" })
	dead := coord.Intent{Rollout: "00000000000b", Owner: "a killed fleetroll", Trigger: fleetroll.Trigger{Source: "cli"}, Started: time.Now(),
		Units: []coord.IntentUnit{{Unit: b, Phase: fleetroll.PhaseStop}}}
	if err := intents.Put(ctx, "my-service", dead); err != nil {
		t.Fatal(err)
	}
	var said []string
	rep, err = r.Run(ctx, Request{ID: "00000000000c", Service: "my-service", Settings: s, Owner: "second", Say: func(m string) { said = append(said, m) }})
	if err != nil || rep.Status != fleetroll.StatusSucceeded {
		t.Fatalf("run after a dead one: %v %+v", err, rep)
	}
	if u, _ := ff.Unit(b); u.Desired != "launched" || u.Active != "active" {
		t.Fatalf("%s not restored: %+v", b, u)
	}
	if in, _ := intents.Get(ctx, "my-service"); in != nil {
		t.Fatalf("intent left after recovery: %+v", in)
	}
	if len(said) < 2 || !strings.Contains(said[0], "recovering rollout 00000000000b") || !strings.Contains(said[1], "running again") {
		t.Fatalf("said %q", said)
	}
	rec, ok, err := coord.History{KAPI: kapi}.Get(ctx, "00000000000b")
	if err != nil || !ok || rec.Status != fleetroll.StatusInterrupted || rec.Units[0].Unit != b || rec.Units[0].Phase != fleetroll.PhaseStop {
		t.Fatalf("history of the dead rollout: %+v, %v, %v", rec, ok, err)
	}

	// A unit that cannot be restored.
	ff.Update(b, func(u *fakefleet.Unit) { u.Desired, u.Active, u.Sub, u.FailStart = "loaded", "inactive", "dead", true })
	if err := intents.Put(ctx, "my-service", dead); err != nil {
		t.Fatal(err)
	}
	before := len(ff.Sets())
	if rep, err := r.Run(ctx, Request{ID: "00000000000d", Service: "my-service", Settings: s, Owner: "third"}); !errors.Is(err, ErrRecoveryFailed) || rep != nil {
		t.Fatalf("recovery of a unit that cannot start: %v %+v", err, rep)
	}
	for _, set := range ff.Sets()[before:] {
		if !strings.Contains(set, b) {
			t.Fatalf("touched %s after a failed recovery", set)
		}
	}
	if in, _ := intents.Get(ctx, "my-service"); in == nil {
		t.Fatal("the intent was dropped though the unit is down")
	}
	if _, err := kapi.Get(ctx, coord.LockKey("my-service"), nil); err == nil {
		t.Fatal("the lock was kept after a failed recovery")
	}

	// Recover alone: the unit can start again; it is restored, and says so.
	ff.Update(b, func(u *fakefleet.Unit) { u.Desired, u.Active, u.Sub, u.FailStart = "loaded", "inactive", "dead", false })
	did, err := r.Recover(ctx, "my-service", s, "recover", nil)
	if err != nil || !did {
		t.Fatalf("recover: %v %v", did, err)
	}
	if did, err := r.Recover(ctx, "my-service", s, "recover", nil); err != nil || did {
		t.Fatalf("recover with nothing left: %v %v", did, err)
	}
}

// Without etcd, the lock is off by default; a setting that needs etcd is
// refused before anything is touched.
func TestRunWithoutEtcd(t *testing.T) {
	ff := fakefleet.New("my-service@1.service")
	r := Runner{Fleet: newFleet(t, ff)}
	rep, err := r.Run(t.Context(), Request{Service: "my-service", Settings: fast()})
	if err != nil || rep.Restarted() != 1 {
		t.Fatalf("run without etcd: %v %+v", err, rep)
	}
	for _, s := range []Settings{{Lock: LockWait}, {Drain: &fleetroll.DrainPolicy{}}, {Image: "registry.example/a/b"}, {Watch: new(true)}} {
		set := fast()
		set.Lock, set.Drain, set.Image, set.Watch = s.Lock, s.Drain, s.Image, s.Watch
		before := len(ff.Sets())
		if _, err := r.Run(t.Context(), Request{Service: "my-service", Settings: set}); !errors.Is(err, ErrNeedsEtcd) {
			t.Errorf("%+v without etcd: %v", s, err)
		}
		if len(ff.Sets()) != before {
			t.Errorf("%+v without etcd touched fleet", s)
		}
	}
	if _, err := r.Run(t.Context(), Request{Service: "my-service", Settings: fast(), Deploy: &Change{Ref: "v1"}}); !errors.Is(err, ErrNeedsEtcd) {
		t.Errorf("a deploy without etcd: %v", err)
	}
}

func TestLockOf(t *testing.T) {
	with, without := Runner{Etcd: fakeKAPI{}}, Runner{}
	for _, c := range []struct {
		r      Runner
		s      Settings
		deploy bool
		want   LockMode
	}{
		{with, Settings{}, false, LockWait},
		{without, Settings{}, false, LockOff},
		{with, Settings{Lock: LockOff}, false, LockOff},
		{with, Settings{Lock: LockOff}, true, LockWait},
		{with, Settings{Lock: LockOff, Strategy: StrategyBlueGreen}, false, LockWait},
		{with, Settings{Lock: LockFail}, false, LockFail},
		{with, Settings{Lock: LockFail}, true, LockFail},
	} {
		if got := c.r.LockOf(c.s, c.deploy); got != c.want {
			t.Errorf("etcd %v, %+v, deploy %v: %q, want %q", c.r.Etcd != nil, c.s, c.deploy, got, c.want)
		}
	}
}

// fakeKAPI stands for an etcd that is there (LockOf only asks whether).
type fakeKAPI struct{ client.KeysAPI }

func TestSettingsValidate(t *testing.T) {
	h := &fleetroll.HealthPolicy{Path: "/healthz"}
	for _, c := range []struct {
		s    Settings
		want string
	}{
		{Settings{Canary: -1}, "canary must not be negative"},
		{Settings{CanaryWait: time.Second}, "canary_wait needs canary"},
		{Settings{Canary: 1, CanaryWait: time.Second}, "canary_wait needs the health gate"},
		{Settings{Canary: 1, CanaryWait: -time.Second, Health: h}, "canary_wait must not be negative"},
		{Settings{Canary: 1, CanaryWait: time.Second, Health: h}, ""},
		{Settings{Lock: "maybe"}, `lock "maybe"`},
		{Settings{Strategy: StrategyBlueGreen}, "needs spare_ports"},
		{Settings{SparePorts: PortList{"8911"}}, "spare_ports are for strategy blue-green"},
		{Settings{Strategy: StrategyBlueGreen, SparePorts: PortList{"8911"}, Canary: 1}, "canary is for strategy rolling"},
		{Settings{Health: &fleetroll.HealthPolicy{Path: "healthz"}}, "health.path"},
		{Settings{Drain: &fleetroll.DrainPolicy{Prefix: "services"}}, "drain.prefix"},
		{Settings{OnFailure: "shrug"}, "shrug"},
		{Settings{Image: "not an image"}, "image"},
		{Settings{Grace: -time.Second}, "negative"},
		{Settings{PlacementTimeout: -time.Second}, "placement_timeout"},
		{Defaults(), ""},
		{Settings{StopTimeout: -time.Second}, "stop_timeout must be positive"},
	} {
		err := c.s.Complete("my-service").Validate()
		if (err == nil) != (c.want == "") || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.s, err, c.want)
		}
	}
	if got := (Settings{Canary: 1}).Uses(); len(got) != 1 || got[0] != "--canary" {
		t.Errorf("a canary decides through etcd: %q", got)
	}
	c := Settings{Drain: &fleetroll.DrainPolicy{Delay: time.Second}, Health: &fleetroll.HealthPolicy{Path: "/h"}}.Complete("web")
	if c.Drain.Prefix != "/services/web" || c.Drain.Delay != time.Second || c.Drain.Timeout != fleetroll.DefaultDrainTimeout ||
		c.Health.Successes != fleetroll.DefaultHealthSuccesses || !c.PrePulls() || c.LockTTL != coord.DefaultLockTTL {
		t.Errorf("complete: %+v %+v %+v", c, c.Drain, c.Health)
	}
}

// waitPaused waits until the rollout's pause is recorded in etcd.
func waitPaused(ctx context.Context, t *testing.T, kapi client.KeysAPI, rollout string) {
	t.Helper()
	w := kapi.Watcher(coord.PausePrefix, &client.WatcherOptions{Recursive: true})
	for {
		if _, err := kapi.Get(ctx, coord.PausePrefix+"/"+rollout, nil); err == nil {
			return
		}
		if _, err := w.Next(ctx); err != nil {
			t.Fatalf("no pause of %s: %v", rollout, err)
		}
	}
}

// healthServer answers /healthz with 200 while ok, 500 after; the unit
// named after its port is my-service@PORT.service on machine m1
// (127.0.0.1).
func healthServer(t *testing.T, ok *atomic.Bool) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ok.Load() {
			http.Error(w, "sick", http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return "my-service@" + port + ".service"
}

type result struct {
	rep *fleetroll.Report
	err error
}

func runAsync(ctx context.Context, r Runner, req Request) chan result {
	out := make(chan result, 1)
	go func() {
		rep, err := r.Run(ctx, req)
		out <- result{rep, err}
	}()
	return out
}

// canaryClock is the real clock, but for the canary wait (a minute): the
// fake one, which the test advances.
type canaryClock struct {
	fleetroll.SystemClock
	fake *clocktest.Clock
}

func (c canaryClock) After(d time.Duration) <-chan time.Time {
	if d == time.Minute {
		return c.fake.After(d)
	}
	return c.SystemClock.After(d)
}

// A rollout pauses after its canary; a decision through etcd promotes it.
func TestCanaryPausePromotedThroughEtcd(t *testing.T) {
	kapi := startEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	units := []string{"my-service@1.service", "my-service@2.service", "my-service@3.service"}
	ff := fakefleet.New(units...)
	r := Runner{Fleet: newFleet(t, ff), Etcd: kapi}
	s := fast()
	s.Canary = 1
	done := runAsync(ctx, r, Request{ID: "0000000000c1", Service: "my-service", Settings: s})
	waitPaused(ctx, t, kapi, "0000000000c1")
	if sets := ff.Sets(); len(sets) != 2 {
		t.Fatalf("touched at the pause: %v", sets)
	}
	if _, err := (coord.Pauses{KAPI: kapi}).Decide(ctx, "0000000000c1", fleetroll.Decision{Kind: fleetroll.DecisionPromote, By: "test"}); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil || res.rep.Restarted() != 3 || res.rep.Canary.By != "test" {
		t.Fatalf("roll: %v %+v", res.err, res.rep)
	}
}

// With a canary wait: a canary that is unhealthy when it ends aborts the
// rollout; one that is healthy promotes it.
func TestCanaryWait(t *testing.T) {
	kapi := startEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, healthy := range []bool{false, true} {
		var ok, other atomic.Bool
		ok.Store(true)
		other.Store(true)
		units := []string{healthServer(t, &ok), healthServer(t, &other)}
		ff := fakefleet.New()
		for _, u := range units {
			ff.Add(u, fakefleet.Unit{Machine: "m1"})
		}
		ff.SetMachines(map[string]string{"m1": "127.0.0.1"})
		clock := clocktest.New()
		r := Runner{Fleet: newFleet(t, ff), Etcd: kapi, Clock: canaryClock{fleetroll.SystemClock{}, clock}}
		s := fast()
		s.Canary, s.CanaryWait = 1, time.Minute
		s.Health = &fleetroll.HealthPolicy{Path: "/healthz", Successes: 1, Interval: 10 * time.Millisecond, Timeout: 300 * time.Millisecond}
		id := "0000000000d0"
		if healthy {
			id = "0000000000d1"
		}
		var ports []string
		for _, u := range units {
			ports = append(ports, strings.TrimSuffix(strings.TrimPrefix(u, "my-service@"), ".service"))
		}
		s.Ports = ports
		done := runAsync(ctx, r, Request{ID: id, Service: "my-service", Settings: s})
		waitPaused(ctx, t, kapi, id)
		ok.Store(healthy)
		if !clock.WaitMade(ctx, 1) {
			t.Fatal("the canary wait never began")
		}
		clock.Advance(time.Minute)
		res := <-done
		rep, err := res.rep, res.err
		if healthy {
			if err != nil || rep.Restarted() != 2 || rep.Canary.Kind != fleetroll.DecisionPromote || rep.Canary.By != "canary wait" {
				t.Fatalf("healthy canary: %v %+v", err, rep)
			}
			continue
		}
		var ce *fleetroll.CanaryError
		if !errors.As(err, &ce) || rep.Status != fleetroll.StatusAborted || !strings.Contains(rep.Canary.Reason, "not healthy") {
			t.Fatalf("unhealthy canary: %v %+v", err, rep)
		}
		if rep.Units[1].Outcome != fleetroll.OutcomeUntouched {
			t.Fatalf("after the abort: %+v", rep.Units[1])
		}
	}
}

// A unit restored by the recovery of its own rollout counts as restarted
// only when it had been stopped.
func TestRestoredIsRestart(t *testing.T) {
	stopped := []fleetroll.Span{{Phase: fleetroll.PhaseStop}, {Phase: fleetroll.PhaseStart}}
	for _, c := range []struct {
		phase fleetroll.Phase
		u     fleetroll.UnitReport
		want  bool
	}{
		{fleetroll.PhaseDrain, fleetroll.UnitReport{Outcome: fleetroll.OutcomeRestarted, Phases: stopped}, false},
		{fleetroll.PhaseStop, fleetroll.UnitReport{Outcome: fleetroll.OutcomeRestarted, Phases: stopped}, true},
		// Killed before its stop request: it never stopped.
		{fleetroll.PhaseStop, fleetroll.UnitReport{Outcome: fleetroll.OutcomeRestarted, Phases: stopped[1:]}, false},
		{fleetroll.PhaseStart, fleetroll.UnitReport{Outcome: fleetroll.OutcomeRestarted}, true},
		{fleetroll.PhaseHealth, fleetroll.UnitReport{Outcome: fleetroll.OutcomeRestarted}, true},
		{fleetroll.PhaseStart, fleetroll.UnitReport{Outcome: fleetroll.OutcomeFailed}, false},
	} {
		if got := restoredIsRestart(c.phase, c.u); got != c.want {
			t.Errorf("%s %+v: %v, want %v", c.phase, c.u, got, c.want)
		}
	}
}

// A blue-green rollout killed before its switch leaves the old set
// serving: the recovery destroys the new units and their sidekicks. Killed
// after it (the live record names the new set), the old ones go. Either
// way one full set runs, the live record says which, nothing is left over,
// and the killed rollout is recorded as interrupted.
func TestRecoverBlueGreen(t *testing.T) {
	for _, switched := range []bool{false, true} {
		t.Run(fmt.Sprintf("switched %v", switched), func(t *testing.T) {
			kapi := startEtcd(t)
			ctx := t.Context()
			var names []string
			for _, s := range []string{"my-service", "side"} {
				for _, p := range []string{"1", "2", "11", "12"} {
					names = append(names, fleetroll.UnitName(s, p))
				}
			}
			ff := fakefleet.New(names...)
			r := Runner{Fleet: newFleet(t, ff), Etcd: kapi}
			bg := coord.BlueGreenIntent{Live: []string{"1", "2"}, New: []string{"11", "12"}, Sidekick: "side", Switched: switched}
			if switched {
				// Killed after the live record was written, before the
				// intent said so: the live record is the truth.
				bg.Switched = false
				if err := (coord.Lives{KAPI: kapi}).Put(ctx, "my-service", coord.LiveSets{Live: bg.New, Spare: bg.Live}); err != nil {
					t.Fatal(err)
				}
			}
			ff.Update("my-service@2.service", func(u *fakefleet.Unit) { u.Desired, u.Active, u.Sub = "loaded", "inactive", "dead" })
			dead := coord.Intent{Rollout: "0000000000e1", Owner: "a killed fleetroll", Started: time.Now(), BlueGreen: &bg,
				Units: []coord.IntentUnit{{Unit: "my-service@2.service", Phase: fleetroll.PhaseStop}}}
			if err := (coord.Intents{KAPI: kapi}).Put(ctx, "my-service", dead); err != nil {
				t.Fatal(err)
			}
			// A deploy: the killed rollout had written its release.
			store := coord.ReleaseStore{KAPI: kapi}
			v1 := fleetroll.Release{Image: "127.0.0.1:5000/demo/x@sha256:" + strings.Repeat("1", 64), Rollout: "0000000000e0"}
			v2 := fleetroll.Release{Image: "127.0.0.1:5000/demo/x@sha256:" + strings.Repeat("2", 64), Rollout: "0000000000e1"}
			if err := store.Set(ctx, "my-service", v1, nil); err != nil {
				t.Fatal(err)
			}
			if err := store.Set(ctx, "my-service", v2, &v1); err != nil {
				t.Fatal(err)
			}
			s := fast()
			s.Strategy, s.SparePorts, s.Ports, s.Sidekick = StrategyBlueGreen, PortList{"11", "12"}, PortList{"1", "2"}, "side"
			did, err := r.Recover(ctx, "my-service", s, "recover", nil)
			if err != nil || !did {
				t.Fatalf("recover: %v %v", did, err)
			}
			keep, gone := []string{"1", "2"}, []string{"11", "12"}
			if switched {
				keep, gone = gone, keep
			}
			for _, p := range keep {
				for _, svc := range []string{"my-service", "side"} {
					if u, ok := ff.Unit(fleetroll.UnitName(svc, p)); !ok || u.Desired != "launched" || u.Active != "active" {
						t.Errorf("%s kept: %+v %v", fleetroll.UnitName(svc, p), u, ok)
					}
				}
			}
			for _, p := range gone {
				for _, svc := range []string{"my-service", "side"} {
					if _, ok := ff.Unit(fleetroll.UnitName(svc, p)); ok {
						t.Errorf("%s left behind", fleetroll.UnitName(svc, p))
					}
				}
			}
			// Before the switch the old set serves the release before:
			// it is the current one again.
			wantRelease := v1.Image
			if switched {
				wantRelease = v2.Image
			}
			if cur, err := store.Current(ctx, "my-service"); err != nil || cur == nil || cur.Image != wantRelease {
				t.Fatalf("current release %+v %v, want %s", cur, err, wantRelease)
			}
			live, err := coord.Lives{KAPI: kapi}.Get(ctx, "my-service")
			if err != nil || live == nil || !slices.Equal(live.Live, keep) {
				t.Fatalf("live record %+v %v, want %v", live, err, keep)
			}
			if in, _ := (coord.Intents{KAPI: kapi}).Get(ctx, "my-service"); in != nil {
				t.Fatalf("intent left: %+v", in)
			}
			rec, ok, err := coord.History{KAPI: kapi}.Get(ctx, "0000000000e1")
			if err != nil || !ok || rec.Status != fleetroll.StatusInterrupted || rec.Strategy != fleetroll.StrategyBlueGreen || len(rec.Units) != 4 {
				t.Fatalf("history: %+v %v %v", rec, ok, err)
			}
		})
	}
}

// A blue-green rollout's intent names the sets it actually replaces (a
// first one, of every launched instance, with no ports set), before the
// new units are created; once it succeeded, nothing is left to recover.
func TestBlueGreenIntentNamesThePlannedSets(t *testing.T) {
	kapi := startEtcd(t)
	ctx := t.Context()
	ff := fakefleet.New("my-service@1.service", "my-service@2.service")
	for _, u := range []string{"my-service@1.service", "my-service@2.service"} {
		ff.Update(u, func(u *fakefleet.Unit) {
			u.Options = []fakefleet.Option{{Section: "Service", Name: "ExecStart", Value: "/bin/demo %i"}}
		})
	}
	var (
		mu   sync.Mutex // the two creates are made at once
		seen []string
	)
	ff.SetHook(func(call string) {
		if !strings.HasPrefix(call, "create my-service@") {
			return
		}
		in, err := (coord.Intents{KAPI: kapi}).Get(context.Background(), "my-service")
		line := fmt.Sprintf("%s: no blue-green intent (%v)", call, err)
		if err == nil && in != nil && in.BlueGreen != nil {
			line = fmt.Sprintf("%s: live %v new %v switched %v", call, in.BlueGreen.Live, in.BlueGreen.New, in.BlueGreen.Switched)
		}
		mu.Lock()
		seen = append(seen, line)
		mu.Unlock()
	})
	s := fast()
	s.Strategy, s.SparePorts = StrategyBlueGreen, PortList{"11", "12"}
	rep, err := Runner{Fleet: newFleet(t, ff), Etcd: kapi}.Run(ctx, Request{Service: "my-service", Settings: s})
	if err != nil || rep.Status != fleetroll.StatusSucceeded {
		t.Fatalf("blue-green: %v %+v", err, rep)
	}
	slices.Sort(seen)
	want := []string{"create my-service@11.service: live [1 2] new [11 12] switched false", "create my-service@12.service: live [1 2] new [11 12] switched false"}
	if !slices.Equal(seen, want) {
		t.Fatalf("intent at each create:\n%s\nwant\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
	if in, _ := (coord.Intents{KAPI: kapi}).Get(ctx, "my-service"); in != nil {
		t.Fatalf("intent left after a blue-green that succeeded: %+v", in)
	}
}

// A service whose only instance a killed fleetroll left stopped: the next
// plain rollout (every launched instance) finds none launched, yet the
// recovery comes first, and then it rolls.
func TestRunRecoversBeforeItFindsNothingToRoll(t *testing.T) {
	kapi := startEtcd(t)
	ctx := t.Context()
	ff := fakefleet.New("solo@1.service")
	ff.Update("solo@1.service", func(u *fakefleet.Unit) { u.Desired, u.Active, u.Sub = "loaded", "inactive", "dead" })
	if err := (coord.Intents{KAPI: kapi}).Put(ctx, "solo", coord.Intent{Rollout: "0000000000f0", Owner: "a killed fleetroll", Started: time.Now(),
		Units: []coord.IntentUnit{{Unit: "solo@1.service", Phase: fleetroll.PhaseStop}}}); err != nil {
		t.Fatal(err)
	}
	rep, err := Runner{Fleet: newFleet(t, ff), Etcd: kapi}.Run(ctx, Request{Service: "solo", Settings: fast()})
	if err != nil || rep.Restarted() != 1 {
		t.Fatalf("run: %v %+v", err, rep)
	}
	// Without an intent, nothing launched is a plan error, before the lock.
	ff.Update("solo@1.service", func(u *fakefleet.Unit) { u.Desired, u.Active, u.Sub = "loaded", "inactive", "dead" })
	var pe *fleetroll.PlanError
	if _, err := (Runner{Fleet: newFleet(t, ff), Etcd: kapi}).Run(ctx, Request{Service: "solo", Settings: fast()}); !errors.As(err, &pe) {
		t.Fatalf("nothing launched, no intent: %v", err)
	}
}

// A receiver that takes over a blue-green rollout whose switch was made
// (its intent is the rollout's own): the recovery retires the old set, and
// the rollout is done, not run again (which would swap the sets back).
func TestBlueGreenTakenOverAfterItsSwitchEnds(t *testing.T) {
	kapi := startEtcd(t)
	ctx := t.Context()
	ff := fakefleet.New("my-service@1.service", "my-service@11.service")
	r := Runner{Fleet: newFleet(t, ff), Etcd: kapi}
	if err := (coord.Lives{KAPI: kapi}).Put(ctx, "my-service", coord.LiveSets{Live: []string{"11"}, Spare: []string{"1"}}); err != nil {
		t.Fatal(err)
	}
	in := coord.Intent{Rollout: "0000000000f7", Owner: "receiver A", Started: time.Now(),
		BlueGreen: &coord.BlueGreenIntent{Live: []string{"1"}, New: []string{"11"}, Switched: true}}
	if err := (coord.Intents{KAPI: kapi}).Put(ctx, "my-service", in); err != nil {
		t.Fatal(err)
	}
	s := fast()
	s.Strategy, s.Ports, s.SparePorts = StrategyBlueGreen, PortList{"1"}, PortList{"11"}
	rep, err := r.Run(ctx, Request{ID: "0000000000f7", Service: "my-service", Settings: s, Resume: &fleetroll.Report{ID: "0000000000f7"}})
	if err != nil || rep.Status != fleetroll.StatusSucceeded || len(rep.Units) != 2 ||
		rep.Units[0].Outcome != fleetroll.OutcomeRetired || rep.Units[1].Outcome != fleetroll.OutcomeLaunched {
		t.Fatalf("takeover after the switch: %v %+v", err, rep)
	}
	if _, ok := ff.Unit("my-service@1.service"); ok {
		t.Fatal("the old unit is left")
	}
	for _, c := range ff.Calls() {
		if strings.HasPrefix(c, "create ") {
			t.Fatalf("ran again: %s", c)
		}
	}
	if live, _ := (coord.Lives{KAPI: kapi}).Get(ctx, "my-service"); live == nil || !slices.Equal(live.Live, []string{"11"}) {
		t.Fatalf("live record %+v", live)
	}
}

// A rollout resumed from its own intent (a receiver taking over another's)
// reports the steps of its units' restore as it reports its roll's: the
// receivers' streams show the takeover. The restore of another rollout's
// units (a dead one, recorded as interrupted) is not this rollout's steps.
func TestRunReportsTheRestoreOfItsOwnUnits(t *testing.T) {
	for _, c := range []struct {
		intent string
		want   bool
	}{{"0000000000a1", true}, {"0000000000b2", false}} {
		kapi := startEtcd(t)
		ctx := t.Context()
		ff := fakefleet.New("solo@1.service", "solo@2.service")
		ff.Update("solo@1.service", func(u *fakefleet.Unit) { u.Desired, u.Active, u.Sub = "loaded", "inactive", "dead" })
		if err := (coord.Intents{KAPI: kapi}).Put(ctx, "solo", coord.Intent{Rollout: c.intent, Owner: "receiver A", Started: time.Now(),
			Units: []coord.IntentUnit{{Unit: "solo@1.service", Phase: fleetroll.PhaseStop}}}); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var steps []string
		s := fast()
		s.Ports = PortList{"2"}
		req := Request{ID: "0000000000a1", Service: "solo", Settings: s, Resume: &fleetroll.Report{ID: "0000000000a1"},
			OnEvent: func(e fleetroll.Event) { mu.Lock(); steps = append(steps, e.Unit+" "+string(e.Kind)); mu.Unlock() }}
		if rep, err := (Runner{Fleet: newFleet(t, ff), Etcd: kapi}).Run(ctx, req); err != nil {
			t.Fatalf("intent of %s: %v %+v", c.intent, err, rep)
		}
		mu.Lock()
		got := slices.Contains(steps, "solo@1.service starting")
		mu.Unlock()
		if got != c.want {
			t.Errorf("intent of %s: the restore's steps reported %v, want %v (steps %v)", c.intent, got, c.want, steps)
		}
	}
}

// fleet's API answers 500 to a listing while a unit is being destroyed: a
// plan reads fleet again a few times before the rollout fails on it, and
// one that fleet keeps refusing fails as fleet's, with nothing touched.
func TestPlanReadsFleetAgainAfterATransientError(t *testing.T) {
	// The pauses, shortened (no test of this package runs in parallel).
	defer func(p []time.Duration) { planRetries = p }(planRetries)
	planRetries = []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond, time.Millisecond}
	ff := fakefleet.New("my-service@1.service")
	r := Runner{Fleet: newFleet(t, ff)}
	ff.FailNext(fakefleet.Fault{Status: 500})
	rep, err := r.Run(t.Context(), Request{Service: "my-service", Settings: fast()})
	if err != nil || rep.Restarted() != 1 {
		t.Fatalf("a roll after one 500 of fleet: %v %+v", err, rep)
	}
	var faults []fakefleet.Fault
	for range len(planRetries) + 1 {
		faults = append(faults, fakefleet.Fault{Status: 500})
	}
	ff.FailNext(faults...)
	before := len(ff.Sets())
	if _, err := r.Run(t.Context(), Request{Service: "my-service", Settings: fast()}); !errors.Is(err, ErrFleet) {
		t.Errorf("fleet answering 500 every time: %v, want ErrFleet", err)
	}
	if len(ff.Sets()) != before {
		t.Errorf("a rollout fleet could not plan touched fleet")
	}
}

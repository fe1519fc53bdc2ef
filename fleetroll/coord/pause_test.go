package coord

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/clocktest"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
	client "go.etcd.io/etcd/client/v2"
)

// waitPaused waits until the rollout's pause is recorded in etcd.
func waitPaused(ctx context.Context, t *testing.T, kapi client.KeysAPI, rollout string) *Pause {
	t.Helper()
	w := kapi.Watcher(PausePrefix, &client.WatcherOptions{Recursive: true})
	for {
		if ps, _, err := (Pauses{KAPI: kapi}).get(ctx, rollout); err == nil {
			return ps
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

func canaryRoll(ctx context.Context, t *testing.T, s Safety, f fleetroll.Fleet, id string, units []string) (chan *fleetroll.Report, chan error) {
	t.Helper()
	hooks, release, err := s.Prepare(ctx, "my-service")
	if err != nil {
		t.Fatal(err)
	}
	opts := fleetroll.Options{PollInterval: time.Millisecond, RolloutID: id, Hooks: hooks}
	r, err := fleetroll.NewRoller(f, opts)
	if err != nil {
		t.Fatal(err)
	}
	plan := &fleetroll.Plan{Service: "my-service"}
	for _, u := range units {
		plan.Units = append(plan.Units, fleetroll.PlannedUnit{Name: u})
	}
	reps, errs := make(chan *fleetroll.Report, 1), make(chan error, 1)
	go func() {
		defer release()
		rep, err := r.Roll(ctx, plan)
		reps <- rep
		errs <- err
	}()
	return reps, errs
}

// A rollout pauses after its canary; a decision through etcd promotes it,
// and the pause is gone once decided.
func TestCanaryPausePromotedThroughEtcd(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	units := []string{"my-service@1.service", "my-service@2.service", "my-service@3.service"}
	ff := fakefleet.New(units...)
	f := newFleet(t, ff)
	s := Safety{KAPI: kapi, Fleet: f, Policy: fleetroll.Policy{Canary: 1}}
	reps, errs := canaryRoll(ctx, t, s, f, "0000000000c1", units)
	ps := waitPaused(ctx, t, kapi, "0000000000c1")
	if ps.Service != "my-service" || len(ps.Canaries) != 1 || ps.Canaries[0] != units[0] || ps.Decision != nil {
		t.Fatalf("pause: %+v", ps)
	}
	if sets := ff.Sets(); len(sets) != 2 {
		t.Fatalf("touched at the pause: %v", sets)
	}
	pauses := Pauses{KAPI: kapi}
	if _, err := pauses.Decide(ctx, "0000000000c9", fleetroll.Decision{Kind: fleetroll.DecisionPromote}); !errors.Is(err, ErrNotPaused) {
		t.Fatalf("decision on a rollout that is not paused: %v", err)
	}
	if _, err := pauses.Decide(ctx, "../locks", fleetroll.Decision{Kind: fleetroll.DecisionPromote}); err == nil || errors.Is(err, ErrNotPaused) {
		t.Fatalf("a bad rollout ID reached etcd: %v", err)
	}
	if _, err := pauses.Decide(ctx, "0000000000c1", fleetroll.Decision{Kind: fleetroll.DecisionPromote, By: "test"}); err != nil {
		t.Fatal(err)
	}
	rep, err := <-reps, <-errs
	if err != nil || rep.Restarted() != 3 || rep.Canary.By != "test" {
		t.Fatalf("roll: %v %+v", err, rep)
	}
	if _, err := pauses.Decide(ctx, "0000000000c1", fleetroll.Decision{Kind: fleetroll.DecisionAbort}); !errors.Is(err, ErrNotPaused) {
		t.Fatalf("a decision after the pause: %v", err)
	}
	// A pause opened again (by the fleetroll that took the rollout over)
	// keeps the decision taken meanwhile.
	ps = &Pause{Rollout: "0000000000c2", Service: "my-service", Canaries: units[:1]}
	if err := pauses.Open(ctx, *ps); err != nil {
		t.Fatal(err)
	}
	if _, err := pauses.Decide(ctx, ps.Rollout, fleetroll.Decision{Kind: fleetroll.DecisionAbort, By: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := pauses.Open(ctx, *ps); err != nil {
		t.Fatal(err)
	}
	if d, err := pauses.Await(ctx, ps.Rollout, time.Second); err != nil || d.Kind != fleetroll.DecisionAbort {
		t.Fatalf("decision after a second open: %+v %v", d, err)
	}
}

// With a canary wait: a canary that is unhealthy when it ends aborts the
// rollout; one that is healthy promotes it.
func TestCanaryWait(t *testing.T) {
	kapi, _, _ := startEtcd(t)
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
		f := newFleet(t, ff)
		clock := clocktest.New()
		s := Safety{KAPI: kapi, Fleet: f, Roll: fleetroll.Options{Clock: clock}, Policy: fleetroll.Policy{Canary: 1, CanaryWait: time.Minute,
			Health: &fleetroll.HealthPolicy{Path: "/healthz", Successes: 1, Interval: 10 * time.Millisecond, Timeout: 300 * time.Millisecond}}}
		id := "0000000000d0"
		if healthy {
			id = "0000000000d1"
		}
		reps, errs := canaryRoll(ctx, t, s, f, id, units)
		waitPaused(ctx, t, kapi, id)
		ok.Store(healthy)
		if !clock.WaitMade(ctx, 1) {
			t.Fatal("the canary wait never began")
		}
		clock.Advance(time.Minute)
		rep, err := <-reps, <-errs
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

func TestCanaryPolicy(t *testing.T) {
	h := &fleetroll.HealthPolicy{Path: "/healthz"}
	for _, c := range []struct {
		p    fleetroll.Policy
		want string
	}{
		{fleetroll.Policy{Canary: -1}, "canary must not be negative"},
		{fleetroll.Policy{CanaryWait: time.Second}, "canary_wait needs canary"},
		{fleetroll.Policy{Canary: 1, CanaryWait: time.Second}, "canary_wait needs the health gate"},
		{fleetroll.Policy{Canary: 1, CanaryWait: -time.Second, Health: h}, "canary_wait must not be negative"},
		{fleetroll.Policy{Canary: 1, CanaryWait: time.Second, Health: h}, ""},
	} {
		err := c.p.Validate()
		if (err == nil) != (c.want == "") || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.p, err, c.want)
		}
	}
	if !(fleetroll.Policy{Canary: 1}).NeedsEtcd() {
		t.Error("a canary decides through etcd")
	}
}

package coord

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/clocktest"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// The lease is trusted only while a refresh confirmed it recently enough:
// with etcd gone, the holder is fenced a margin before the key could expire.
func TestLockFencesBeforeTheLeaseCouldExpire(t *testing.T) {
	kapi, _, stop := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clock := clocktest.New()
	l := Lock{KAPI: kapi, Key: LockKey("s"), Owner: "me", TTL: 3 * time.Second, Clock: clock}
	h, err := l.Acquire(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = h.Release(context.Background()) }()
	stop() // etcd gone: no refresh succeeds from now on
	if err := h.Valid(); err != nil {
		t.Fatalf("fenced at once: %v", err)
	}
	// One refresh (at TTL/3) fails; the lease is still surely ours.
	if !clock.WaitMade(ctx, 1) {
		t.Fatal("no keep-alive")
	}
	clock.Advance(time.Second)
	if !clock.WaitMade(ctx, 2) {
		t.Fatal("the keep-alive did not go on")
	}
	if err := h.Valid(); err != nil {
		t.Fatalf("fenced with 2s of lease left: %v", err)
	}
	// Within the margin (TTL/3) of the earliest expiry: fenced.
	clock.Advance(1100 * time.Millisecond)
	if err := h.Valid(); err == nil || !strings.Contains(err.Error(), "may expire") {
		t.Fatalf("not fenced 1.9s before the lease could expire: %v", err)
	}
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

// A roll under the lock writes its intent before it stops a unit and
// clears it once the unit is back; a fleetroll that takes the lock and finds
// the intent of one that died restores its units first and records that
// rollout as interrupted.
func TestIntentAndRecovery(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := "my-service@1.service", "my-service@2.service"
	ff := fakefleet.New(a, b)
	f := newFleet(t, ff)
	intents := Intents{KAPI: kapi}
	var seen []string
	ff.SetHook(func(call string) {
		if strings.HasPrefix(call, "set ") {
			in, err := intents.Get(ctx, "my-service")
			if err != nil || in == nil {
				seen = append(seen, call+": no intent")
				return
			}
			seen = append(seen, call+": "+string(in.Units[0].Phase))
		}
	})
	roll := fleetroll.Options{PollInterval: time.Millisecond, RolloutID: "00000000000a"}
	s := Safety{KAPI: kapi, Fleet: f, Owner: "first", Policy: fleetroll.Policy{Lock: fleetroll.LockWait}, Rollout: "00000000000a", Roll: roll,
		Trigger: fleetroll.Trigger{Source: "cli"}}
	hooks, release, err := s.Prepare(ctx, "my-service")
	if err != nil {
		t.Fatal(err)
	}
	roll.Hooks = hooks
	r, err := fleetroll.NewRoller(f, roll)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Roll(ctx, &fleetroll.Plan{Service: "my-service", Units: []fleetroll.PlannedUnit{{Name: a}}}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(seen, "; "); got != "set "+a+" loaded: stop; set "+a+" launched: start" {
		t.Fatalf("intent at each write: %s", got)
	}
	if in, _ := intents.Get(ctx, "my-service"); in != nil {
		t.Fatalf("intent left after the unit came back: %+v", in)
	}
	release()

	// A fleetroll that died with b stopped: its intent, its lock expired.
	ff.SetHook(nil)
	ff.Update(b, func(u *fakefleet.Unit) { u.Desired, u.Active, u.Sub = "loaded", "inactive", "dead" })
	dead := Intent{Rollout: "00000000000b", Owner: "a killed fleetroll", Trigger: fleetroll.Trigger{Source: "cli"}, Started: time.Now(),
		Units: []IntentUnit{{Unit: b, Phase: fleetroll.PhaseStop}}}
	if err := intents.Put(ctx, "my-service", dead); err != nil {
		t.Fatal(err)
	}
	var said []string
	s2 := s
	s2.Owner, s2.Rollout, s2.OnRecover = "second", "00000000000c", func(m string) { said = append(said, m) }
	_, release2, err := s2.Prepare(ctx, "my-service")
	if err != nil {
		t.Fatal(err)
	}
	release2()
	if u, _ := ff.Unit(b); u.Desired != "launched" || u.Active != "active" {
		t.Fatalf("%s not restored: %+v", b, u)
	}
	if in, _ := intents.Get(ctx, "my-service"); in != nil {
		t.Fatalf("intent left after recovery: %+v", in)
	}
	if len(said) != 2 || !strings.Contains(said[0], "recovering rollout 00000000000b") || !strings.Contains(said[1], "running again") {
		t.Fatalf("said %q", said)
	}
	rec, ok, err := History{KAPI: kapi}.Get(ctx, "00000000000b")
	if err != nil || !ok || rec.Status != fleetroll.StatusInterrupted || rec.Units[0].Unit != b || rec.Units[0].Phase != fleetroll.PhaseStop {
		t.Fatalf("history of the dead rollout: %+v, %v, %v", rec, ok, err)
	}

	// A unit that cannot be restored: the recovery fails, nothing else is
	// touched, the intent stays for the next try.
	ff.Update(b, func(u *fakefleet.Unit) { u.Desired, u.Active, u.Sub, u.FailStart = "loaded", "inactive", "dead", true })
	if err := intents.Put(ctx, "my-service", dead); err != nil {
		t.Fatal(err)
	}
	s2.Rollout = "00000000000d"
	if _, _, err := s2.Prepare(ctx, "my-service"); !errors.Is(err, ErrRecoveryFailed) {
		t.Fatalf("recovery of a unit that cannot start: %v", err)
	}
	if in, _ := intents.Get(ctx, "my-service"); in == nil {
		t.Fatal("the intent was dropped though the unit is down")
	}
	if _, err := kapi.Get(ctx, LockKey("my-service"), nil); err == nil {
		t.Fatal("the lock was kept after a failed recovery")
	}
}

package coord

import (
	"context"
	"testing"
	"time"

	client "go.etcd.io/etcd/client/v2"
)

func TestNewState(t *testing.T) {
	running := &client.Node{Value: `{"activeState":"active","subState":"running"}`}
	dead := &client.Node{Value: `{"activeState":"inactive","subState":"dead"}`}
	for _, c := range []struct {
		name string
		resp *client.Response
		want bool
	}{
		{"first state", &client.Response{Action: "set", Node: running}, true},
		{"a new state", &client.Response{Action: "set", Node: dead, PrevNode: running}, true},
		{"the same state written again", &client.Response{Action: "set", Node: running, PrevNode: running}, false},
		{"expired", &client.Response{Action: "expire", Node: &client.Node{}, PrevNode: running}, true},
		{"a watch set up again", nil, true},
	} {
		if got := newState(c.resp); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// A state fleet publishes under PREFIX/states/UNIT/MACHINE wakes the watch
// of that unit, not of another; the watch ends with its context.
func TestFleetStatesWake(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	key := DefaultFleetPrefix + "states/s@1.service/m1"
	if _, err := kapi.Set(ctx, key, "running", nil); err != nil {
		t.Fatal(err)
	}
	mine := FleetStates{KAPI: kapi}.Watch(ctx, "s@1.service")
	other := FleetStates{KAPI: kapi}.Watch(ctx, "s@2.service")
	deadline := time.After(10 * time.Second)
	// The watch may start after a first write: write until it wakes.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-mine:
			select {
			case <-other:
				t.Fatal("another unit's state woke this one")
			default:
			}
			return
		case <-tick.C:
			if _, err := kapi.Set(ctx, key, []string{"stopped", "running"}[i%2], nil); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("no wake-up")
		}
	}
}

func TestLastRepublish(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 30, 0, time.UTC)
	at := func(ds ...time.Duration) []time.Time { // expirations, from now
		var out []time.Time
		for _, d := range ds {
			out = append(out, now.Add(d))
		}
		return out
	}
	for _, c := range []struct {
		name string
		exps []time.Time
		last time.Time
		ok   bool
	}{
		{"republished 10 s ago, one unit changed since", at(28*time.Second, 20*time.Second, 20*time.Second+3*time.Millisecond), now.Add(-10 * time.Second), true},
		{"republished now", at(30*time.Second, 30*time.Second), now, true},
		{"every unit changed since: no two alike", at(21*time.Second, 25*time.Second, 28*time.Second), time.Time{}, false},
		{"one state", at(20 * time.Second), time.Time{}, false},
		{"nothing published", nil, time.Time{}, false},
		{"a TTL longer than fleet's default", at(45*time.Second, 45*time.Second), time.Time{}, false},
		{"no republish for longer than a period", at(2*time.Second, 2*time.Second), time.Time{}, false},
	} {
		last, ok := LastRepublish(c.exps, now)
		if ok != c.ok || !last.Equal(c.last) {
			t.Errorf("%s: %s %v, want %s %v", c.name, last, ok, c.last, c.ok)
		}
	}
	last := now.Add(-10 * time.Second)
	for _, c := range []struct {
		now, next time.Time
	}{
		{now, last.Add(24 * time.Second)},
		{last.Add(time.Second), last}, // just passed: still the one that matters
		{last.Add(24 * time.Second), last.Add(24 * time.Second)},
		{last.Add(60 * time.Second), last.Add(72 * time.Second)},
	} {
		if got := NextRepublish(last, c.now); !got.Equal(c.next) {
			t.Errorf("after %s, at %s: next %s, want %s", last, c.now, got, c.next)
		}
	}
}

// The next republish of a unit's machine is read from the states fleet's
// agent published there with its TTL: those that share the earliest
// expiration date the last republish; another machine's states do not
// count. Once every state has changed since, the republish seen is
// remembered; one not seen is found among etcd's recent changes (a state
// written again with its value).
func TestFleetRepublishReadsTheMachinesStates(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	set := func(keys []string, value string, ttl time.Duration) {
		t.Helper()
		for _, key := range keys {
			if _, err := kapi.Set(ctx, DefaultFleetPrefix+"states/"+key, value, &client.SetOptions{TTL: ttl}); err != nil {
				t.Fatal(err)
			}
		}
	}
	near := func(what string, got time.Time, ok bool, want time.Time) {
		t.Helper()
		if !ok || got.Before(want.Add(-2*time.Second)) || got.After(want.Add(time.Second)) {
			t.Fatalf("%s: next republish %s %v, want about %s", what, got, ok, want)
		}
	}
	// Machine m1's republish 10 s ago (20 s left of 30) of a and b; a
	// change of c since; machine m2's older states are not m1's.
	// fleet's republish writes them in the same instant: two requests of
	// a loaded machine may be further apart than the 10 ms that dating
	// allows, and are made again until they are not.
	for try := 0; ; try++ {
		set([]string{"a@1.service/m1", "b@1.service/m1"}, "running", 20*time.Second)
		a, errA := kapi.Get(ctx, DefaultFleetPrefix+"states/a@1.service/m1", nil)
		b, errB := kapi.Get(ctx, DefaultFleetPrefix+"states/b@1.service/m1", nil)
		if errA != nil || errB != nil {
			t.Fatal(errA, errB)
		}
		if d := b.Node.Expiration.Sub(*a.Node.Expiration); d < 5*time.Millisecond || try == 50 {
			break
		}
	}
	set([]string{"c@1.service/m1"}, "running", 28*time.Second)
	set([]string{"d@1.service/m2", "e@1.service/m2"}, "running", 5*time.Second)
	rp := NewFleetRepublish(kapi)
	want := time.Now().Add(14 * time.Second)
	next, ok := rp.Next(ctx, "c@1.service")
	near("m1", next, ok, want)
	// a and b change too: no two states alike; the republish seen holds.
	set([]string{"a@1.service/m1"}, "dead", 29*time.Second)
	set([]string{"b@1.service/m1"}, "dead", 30*time.Second)
	next, ok = rp.Next(ctx, "a@1.service")
	near("m1, every state changed since", next, ok, want)
	// Not seen by this one, nor in etcd's changes (a, b and c were never
	// written again unchanged): unknown.
	if next, ok := NewFleetRepublish(kapi).Next(ctx, "a@1.service"); ok {
		t.Errorf("a republish told (%s) with no state of it, none remembered and none in etcd's changes", next)
	}
	// A republish now (c written again with its value), then a change of
	// c: the states show none, etcd's changes do.
	set([]string{"c@1.service/m1"}, "running", 30*time.Second)
	set([]string{"c@1.service/m1"}, "dead", 30*time.Second)
	next, ok = NewFleetRepublish(kapi).Next(ctx, "a@1.service")
	near("m1, from etcd's changes (just passed)", next, ok, time.Now())
	for _, unit := range []string{"unknown@1.service", "../x", ""} {
		if _, ok := rp.Next(ctx, unit); ok {
			t.Errorf("%q: a republish told", unit)
		}
	}
}

func TestAgentsAfter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name      string
		until     time.Duration // from t0; < 0: never deaf before
		reconcile bool          // before
		at        time.Duration
		change    JobChange
		want      time.Duration // < 0: listening
		wantRec   bool
	}{
		{"a target heard by listening agents", -1, false, 0, TargetWrite, time.Second, true},
		{"a heartbeat heard", -1, false, 0, JobWrite, time.Second, false},
		{"a target in a second after an act is not heard", time.Second, false, 400 * time.Millisecond, TargetWrite, time.Second, false},
		{"a heartbeat in a reconciling second changes nothing", time.Second, true, 400 * time.Millisecond, JobWrite, time.Second, true},
		{"just before they listen again", time.Second, false, 999 * time.Millisecond, JobWrite, time.Second, false},
		{"once they listen again", time.Second, false, time.Second, TargetWrite, 2 * time.Second, true},
		{"long after", time.Second, false, 10 * time.Second, JobWrite, 11 * time.Second, false},
		// An agent that acts has just watched again: a sleep taken to
		// last longer was wrong; its second ends with no reconcile.
		{"an agent's act", 1500 * time.Millisecond, true, time.Second, AgentActed, 2 * time.Second, false},
		{"an agent's act when listening", -1, false, time.Second, AgentActed, 2 * time.Second, false},
		{"a broken watch", time.Second, true, 400 * time.Millisecond, WatchBroken, -1, false},
	} {
		var before AgentsEar
		if c.until >= 0 {
			before = AgentsEar{Until: t0.Add(c.until), Reconcile: c.reconcile}
		}
		var want time.Time
		if c.want >= 0 {
			want = t0.Add(c.want)
		}
		got := AgentsAfter(before, t0.Add(c.at), c.change)
		if !got.Until.Equal(want) || got.Reconcile != c.wantRec {
			t.Errorf("%s: %+v, want until %s, reconcile %v", c.name, got, c.want, c.wantRec)
		}
	}
}

func TestKindOfJobChange(t *testing.T) {
	const m = "3d1219c7c4c5404aaa1f6d2a48adfda4"
	state := func(key, v string) *client.Node {
		return &client.Node{Key: DefaultFleetPrefix + "job/s@1.service/" + key, Value: v}
	}
	for _, c := range []struct {
		name string
		resp *client.Response
		want JobChange
	}{
		{"a target state written", &client.Response{Action: "set", Node: state("target-state", "loaded"), PrevNode: state("target-state", "launched")}, TargetWrite},
		{"the same target written again (a nudge)", &client.Response{Action: "set", Node: state("target-state", "loaded"), PrevNode: state("target-state", "loaded")}, TargetWrite},
		{"a unit scheduled", &client.Response{Action: "set", Node: state("target", m)}, TargetWrite},
		{"a unit destroyed", &client.Response{Action: "delete", Node: state("target-state", ""), PrevNode: state("target-state", "launched")}, JobWrite},
		{"a unit's object", &client.Response{Action: "set", Node: state("object", "{}")}, JobWrite},
		{"a unit stopped by its agent", &client.Response{Action: "delete", Node: state("job-state", ""), PrevNode: state("job-state", m)}, AgentActed},
		{"a unit launched by its agent", &client.Response{Action: "set", Node: state("job-state", m)}, AgentActed},
		{"the agent's heartbeat", &client.Response{Action: "set", Node: state("job-state", m), PrevNode: state("job-state", m)}, JobWrite},
		{"a heartbeat that expired", &client.Response{Action: "expire", Node: state("job-state", ""), PrevNode: state("job-state", m)}, JobWrite},
		{"a broken watch", nil, WatchBroken},
	} {
		if got := KindOfJobChange(c.resp); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

// A change under fleet's jobs deafens the agents for their second; a
// broken watch forgets it (the agents are taken to listen); the watch
// stops with its context.
func TestFleetAgentsFollowTheJobs(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx, cancel := context.WithCancel(t.Context())
	a := WatchFleetAgents(ctx, kapi)
	if d := deafUntil(a); !d.IsZero() {
		t.Fatalf("deaf until %s before any change", d)
	}
	// The watch may start after a first write: write until it is seen.
	key := DefaultFleetPrefix + "job/s@1.service/target-state"
	deadline := time.Now().Add(10 * time.Second)
	var before time.Time
	for deafUntil(a).IsZero() {
		if time.Now().After(deadline) {
			t.Fatal("no change of the jobs seen")
		}
		if before.IsZero() {
			before = time.Now()
		}
		if _, err := kapi.Set(ctx, key, "loaded", nil); err != nil {
			t.Fatal(err)
		}
		// Seen within a moment, or written again.
		for end := time.Now().Add(200 * time.Millisecond); deafUntil(a).IsZero() && time.Now().Before(end); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	d := deafUntil(a)
	if d.Before(before.Add(time.Second)) || d.After(time.Now().Add(time.Second)) {
		t.Errorf("deaf until %s, want a second after a write (the first at %s)", d.Format(time.StampMicro), before.Format(time.StampMicro))
	}
	a.Changed(time.Now(), WatchBroken)
	if got := deafUntil(a); !got.IsZero() {
		t.Errorf("after a broken watch: deaf until %s, want listening", got)
	}
	cancel()
	select {
	case <-a.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not stop with its context")
	}
}

// An agent's launch within the last second (a rollout that just ended)
// deafens the agents from the start; one older does not.
func TestFleetAgentsStartFromALaunchJustMade(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	key := DefaultFleetPrefix + "job/s@1.service/job-state"
	before := time.Now()
	if _, err := kapi.Set(ctx, key, "m1", &client.SetOptions{TTL: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	a := WatchFleetAgents(ctx, kapi)
	deadline := time.Now().Add(5 * time.Second)
	for deafUntil(a).IsZero() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	d := deafUntil(a)
	if d.Before(before.Add(time.Second-10*time.Millisecond)) || d.After(after.Add(time.Second+10*time.Millisecond)) {
		t.Errorf("deaf until %s, want a second after the launch at %s", d.Format(time.StampMicro), before.Format(time.StampMicro))
	}

	// Dated 20 s ago: the agents listen.
	if _, err := kapi.Set(ctx, key, "m1", &client.SetOptions{TTL: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if at, _, ok := lastJobState(ctx, kapi); ok {
		t.Errorf("a job-state written 20 s ago (by its TTL) dated %s", at)
	}
}

func deafUntil(a *FleetAgents) time.Time {
	until, _ := a.Deaf("s@1.service")
	return until
}

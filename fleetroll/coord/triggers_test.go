package coord

import (
	"slices"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// One push is one entry, whichever receiver adds it: the second add merges
// and keeps both callbacks. A manual trigger while its entry runs gets one
// of its own; removing returns the entry as it was last.
func TestTriggersMergeOnePush(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	q := Triggers{KAPI: kapi}
	n := 0
	rec := func() fleetroll.Report {
		n++
		return fleetroll.Report{ID: fleetroll.NewID(), Service: "s", Status: fleetroll.StatusQueued}
	}
	a, merged, err := q.Add(ctx, "s", "dockerhub|demo/s|latest||1", false, rec, "https://cb/a")
	if err != nil || merged {
		t.Fatalf("first add: %v %v", merged, err)
	}
	b, merged, err := q.Add(ctx, "s", "dockerhub|demo/s|latest||1", false, rec, "https://cb/b")
	if err != nil || !merged || b.Record.ID != a.Record.ID || !slices.Equal(b.Callbacks, []string{"https://cb/a", "https://cb/b"}) || n != 1 {
		t.Fatalf("second add: %+v merged=%v %v", b, merged, err)
	}
	if _, err := q.Update(ctx, a.Key, func(e *QueuedTrigger) { e.Runner = "r" }); err != nil {
		t.Fatal(err)
	}
	m, merged, err := q.Add(ctx, "s", "manual||||", true, rec, "")
	if err != nil || merged {
		t.Fatal(merged, err)
	}
	again, merged, err := q.Add(ctx, "s", "manual||||", true, rec, "")
	if err != nil || !merged || again.Record.ID != m.Record.ID {
		t.Fatalf("a queued manual trigger merges: %+v %v %v", again, merged, err)
	}
	if _, err := q.Update(ctx, m.Key, func(e *QueuedTrigger) { e.Runner = "r" }); err != nil {
		t.Fatal(err)
	}
	if third, merged, err := q.Add(ctx, "s", "manual||||", true, rec, ""); err != nil || merged || third.Record.ID == m.Record.ID {
		t.Fatalf("a manual trigger while its twin runs: %+v %v %v", third, merged, err)
	}
	all, err := q.List(ctx)
	if err != nil || len(all["s"]) != 3 || all["s"][0].Record.ID != a.Record.ID {
		t.Fatalf("list %+v %v", all, err)
	}
	last, err := q.Remove(ctx, a.Key)
	if err != nil || len(last.Callbacks) != 2 || last.Runner != "r" {
		t.Fatalf("remove %+v %v", last, err)
	}
	if _, _, err := q.Add(ctx, "../x", "p", false, rec, ""); err == nil {
		t.Fatal("a bad service name reached a key")
	}
}

// A delivery is claimed once across receivers until it is forgotten.
func TestDeliveriesAcrossReceivers(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	a, b := Deliveries{KAPI: kapi, Window: time.Minute}, Deliveries{KAPI: kapi, Window: time.Minute}
	if _, dup, err := a.Claim(ctx, "github|1"); dup || err != nil {
		t.Fatal(dup, err)
	}
	if err := a.Started(ctx, "github|1", []string{"0123456789ab"}); err != nil {
		t.Fatal(err)
	}
	ids, dup, err := b.Claim(ctx, "github|1")
	if !dup || err != nil || !slices.Equal(ids, []string{"0123456789ab"}) {
		t.Fatalf("at the other receiver: %v %v %v", ids, dup, err)
	}
	if err := b.Forget(ctx, "github|1"); err != nil {
		t.Fatal(err)
	}
	if _, dup, err := a.Claim(ctx, "github|1"); dup || err != nil {
		t.Fatalf("forgotten, then claimed again: %v %v", dup, err)
	}
}

package coord

import (
	"fmt"
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

// The deliveries remembered in etcd stay under a fixed number of keys
// however many arrive; a delivery still in its slot is a replay, one whose
// slot another delivery took is no longer remembered.
func TestDeliveriesAreBounded(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	d := Deliveries{KAPI: kapi, Window: time.Minute, Slots: 4}
	for i := range 40 {
		if _, dup, err := d.Claim(ctx, fmt.Sprintf("dockerhub|demo/x|latest|%d", i)); dup || err != nil {
			t.Fatalf("delivery %d: %v %v", i, dup, err)
		}
	}
	resp, err := kapi.Get(ctx, DeliveryPrefix, nil)
	if err != nil || len(resp.Node.Nodes) > 4 {
		t.Fatalf("keys after 40 deliveries: %v %v", len(resp.Node.Nodes), err)
	}
	// Two deliveries of one slot: the newer one takes it.
	var a, b string
	slotOf := map[string]string{}
	for i := 0; a == "" || b == ""; i++ {
		key := fmt.Sprintf("github|%d", i)
		k, _ := d.slot(key)
		if first, ok := slotOf[k]; ok {
			a, b = first, key
		}
		slotOf[k] = key
	}
	if _, dup, err := d.Claim(ctx, a); err != nil || dup {
		t.Fatalf("a: %v %v", dup, err)
	}
	if err := d.Started(ctx, a, []string{"0123456789ab"}); err != nil {
		t.Fatal(err)
	}
	if ids, dup, err := d.Claim(ctx, a); err != nil || !dup || !slices.Equal(ids, []string{"0123456789ab"}) {
		t.Fatalf("a again, in its slot: %v %v %v", ids, dup, err)
	}
	if _, dup, err := d.Claim(ctx, b); err != nil || dup {
		t.Fatalf("b, in a's slot: %v %v", dup, err)
	}
	if _, dup, err := d.Claim(ctx, a); err != nil || dup {
		t.Fatalf("a after b took its slot: %v %v", dup, err)
	}
	// Started and Forget leave another delivery's slot alone.
	if err := d.Started(ctx, b, []string{"ba9876543210"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Forget(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, dup, _ := d.Claim(ctx, a); !dup {
		t.Fatal("b's forget dropped a's delivery")
	}
}

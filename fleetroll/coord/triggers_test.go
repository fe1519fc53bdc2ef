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
	add := func(push string, again bool, cb string) (QueuedTrigger, bool, error) {
		a, err := q.Add(ctx, "s", push, again, rec, cb, nil)
		return a.Entry, a.Merged, err
	}
	a, merged, err := add("dockerhub|demo/s|latest||1", false, "https://cb/a")
	if err != nil || merged {
		t.Fatalf("first add: %v %v", merged, err)
	}
	b, merged, err := add("dockerhub|demo/s|latest||1", false, "https://cb/b")
	if err != nil || !merged || b.Record.ID != a.Record.ID || !slices.Equal(b.Callbacks, []string{"https://cb/a", "https://cb/b"}) || n != 1 {
		t.Fatalf("second add: %+v merged=%v %v", b, merged, err)
	}
	if _, err := q.Update(ctx, a.Key, func(e *QueuedTrigger) { e.Runner = "r" }); err != nil {
		t.Fatal(err)
	}
	m, merged, err := add("manual||||", true, "")
	if err != nil || merged {
		t.Fatal(merged, err)
	}
	again, merged, err := add("manual||||", true, "")
	if err != nil || !merged || again.Record.ID != m.Record.ID {
		t.Fatalf("a queued manual trigger merges: %+v %v %v", again, merged, err)
	}
	if _, err := q.Update(ctx, m.Key, func(e *QueuedTrigger) { e.Runner = "r" }); err != nil {
		t.Fatal(err)
	}
	if third, merged, err := add("manual||||", true, ""); err != nil || merged || third.Record.ID == m.Record.ID {
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
	if _, err := q.Add(ctx, "../x", "p", false, rec, "", nil); err == nil {
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

// A service keeps one waiting entry however many pushes arrive: a new push
// takes the waiting one's place (its record and what carry hands on), one
// read and one write each; an entry that runs is left to run.
func TestTriggersOneWaitingEntryPerService(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	q := Triggers{KAPI: kapi}
	rec := func() fleetroll.Report {
		return fleetroll.Report{ID: fleetroll.NewID(), Service: "s", Status: fleetroll.StatusQueued}
	}
	carried := 0
	carry := func(old QueuedTrigger, e *QueuedTrigger) {
		carried++
		e.Callbacks = append(e.Callbacks, old.Callbacks...)
	}
	var ids []string
	for i := range 50 {
		add, err := q.Add(ctx, "s", fmt.Sprintf("dockerhub|demo/s|latest||%d", i), false, rec, fmt.Sprintf("https://cb/%d", i), carry)
		if err != nil || add.Merged {
			t.Fatalf("push %d: %+v %v", i, add, err)
		}
		if (i == 0) != (add.Superseded == nil) || (i > 0 && add.Superseded.Record.ID != ids[i-1]) {
			t.Fatalf("push %d superseded %+v, want the previous push's entry", i, add.Superseded)
		}
		ids = append(ids, add.Entry.Record.ID)
	}
	all, err := q.List(ctx)
	if err != nil || len(all["s"]) != 1 || all["s"][0].Record.ID != ids[49] || carried != 49 || len(all["s"][0].Callbacks) != 50 {
		t.Fatalf("after 50 pushes: %d entries, carried %d, %+v %v", len(all["s"]), carried, all["s"], err)
	}
	// The same push again merges into the waiting entry.
	if add, err := q.Add(ctx, "s", "dockerhub|demo/s|latest||49", false, rec, "", carry); err != nil || !add.Merged || add.Entry.Record.ID != ids[49] {
		t.Fatalf("the same push again: %+v %v", add, err)
	}
	// Once it runs, the next push waits beside it.
	if _, err := q.Update(ctx, all["s"][0].Key, func(e *QueuedTrigger) { e.Runner = "r" }); err != nil {
		t.Fatal(err)
	}
	add, err := q.Add(ctx, "s", "dockerhub|demo/s|latest||50", false, rec, "", carry)
	if err != nil || add.Merged || add.Superseded != nil {
		t.Fatalf("a push while one runs: %+v %v", add, err)
	}
	if all, _ := q.List(ctx); len(all["s"]) != 2 {
		t.Fatalf("%d entries, want the running one and the waiting one", len(all["s"]))
	}
}

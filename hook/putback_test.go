package hook

import (
	"bytes"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
)

// A rollout put back by a receiver's shutdown (its progress kept, the
// rollouts it had superseded named) and a newer entry that superseded
// other pushes meanwhile both wait. The next receiver runs the newer one:
// its record names the one put back and every rollout that one named.
func TestNewerPushSupersedesARolloutPutBack(t *testing.T) {
	rs := newReceivers(t)
	ctx := t.Context()
	q := coord.Triggers{KAPI: rs.kapi}
	now := time.Now().UTC()
	trig := func(pushed string) fleetroll.Trigger {
		return fleetroll.Trigger{Source: "dockerhub", Repository: "demo/my-service", Tag: "latest", PushedAt: pushed, Received: now}
	}
	put := fleetroll.Report{Version: fleetroll.SchemaVersion, ID: fleetroll.NewID(), Service: "my-service", Status: fleetroll.StatusQueued,
		Trigger: trig("1"), Started: now, By: "receiver A",
		Queue: &fleetroll.QueueInfo{Queued: now, FirstQueued: now.Add(-time.Minute), Supersedes: []string{"0000000000a1", "0000000000a2"}},
		Units: []fleetroll.UnitReport{{Unit: testUnits[0], Outcome: fleetroll.OutcomeRestarted},
			{Unit: testUnits[1], Outcome: fleetroll.OutcomePending}, {Unit: testUnits[2], Outcome: fleetroll.OutcomePending}}}
	if _, err := q.Add(ctx, "my-service", triggerKey(put.Trigger), false, func() fleetroll.Report { return put }, "", nil); err != nil {
		t.Fatal(err)
	}
	// The newer one is queued while the first runs (its entry busy), and
	// is idle when the first is put back.
	all, err := q.List(ctx)
	if err != nil || len(all["my-service"]) != 1 {
		t.Fatalf("queue %v %v", all, err)
	}
	first := all["my-service"][0]
	if _, err := q.Update(ctx, first.Key, func(e *coord.QueuedTrigger) { e.Runner = "receiver A" }); err != nil {
		t.Fatal(err)
	}
	newer := fleetroll.Report{Version: fleetroll.SchemaVersion, ID: fleetroll.NewID(), Service: "my-service", Status: fleetroll.StatusQueued,
		Trigger: trig("3"), Queue: &fleetroll.QueueInfo{Queued: now, Supersedes: []string{"0000000000b1"}}, Units: []fleetroll.UnitReport{}}
	if _, err := q.Add(ctx, "my-service", triggerKey(newer.Trigger), false, func() fleetroll.Report { return newer }, "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Update(ctx, first.Key, func(e *coord.QueuedTrigger) { e.Runner = "" }); err != nil {
		t.Fatal(err)
	}

	b := rs.start(t, "receiver B")
	final := waitFinal(t, b, newer.ID)
	if final.Status != fleetroll.StatusSucceeded {
		t.Fatalf("rollout %+v", final)
	}
	var names []string
	if final.Queue != nil {
		names = slices.Clone(final.Queue.Supersedes)
	}
	slices.Sort(names)
	want := []string{"0000000000a1", "0000000000a2", "0000000000b1", put.ID}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("the newer rollout names %v, want %v", names, want)
	}
	rec, ok, err := coord.History{KAPI: rs.kapi}.Get(ctx, put.ID)
	if err != nil || !ok || rec.Queue == nil || rec.Queue.SupersededBy != newer.ID {
		t.Fatalf("the rollout put back: %+v %v %v", rec, ok, err)
	}
}

// The same through receivers: A runs a push that superseded another, and
// stops (shut down) in the middle of it while two more pushes came (the
// second took the first's place); its rollout is put back with its
// progress. B then runs the newest push: its record names every other.
func TestPutBackRolloutIsSupersededByTheNewest(t *testing.T) {
	rs := newReceivers(t)
	push := func(env *testEnv, marker int) string {
		t.Helper()
		body := bytes.Replace(rs.push(t), []byte("1795835368"), []byte(fmt.Sprint(marker)), 1)
		resp, ans := env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, body, jsonHeaders())
		if resp.StatusCode != 202 {
			t.Fatalf("push %d: %d %v", marker, resp.StatusCode, ans)
		}
		return ans["id"].(string)
	}
	stopping := make(chan struct{})
	var once atomic.Bool
	rs.fleet.SetHook(func(call string) {
		if call == "set "+testUnits[1]+" loaded" && once.CompareAndSwap(false, true) {
			close(stopping)
		}
	})
	a := rs.start(t, "receiver A")
	first := push(a, 1)
	second := push(a, 2) // takes the first's place before it runs, or waits
	<-stopping
	third := push(a, 3)
	fourth := push(a, 4)
	a.stop()
	b := rs.start(t, "receiver B")
	fifth := push(b, 5)
	final := waitFinal(t, b, fifth)
	if final.Status != fleetroll.StatusSucceeded {
		t.Fatalf("rollout %+v", final)
	}
	named := map[string]bool{fifth: true}
	if final.Queue != nil {
		for _, id := range final.Queue.Supersedes {
			named[id] = true
		}
	}
	hist, err := coord.History{KAPI: rs.kapi}.List(t.Context(), "my-service")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range hist {
		if r.Status == fleetroll.StatusSucceeded && r.ID != fifth {
			named[r.ID] = true // one that ran before
			if r.Queue != nil {
				for _, id := range r.Queue.Supersedes {
					named[id] = true
				}
			}
		}
	}
	for _, id := range []string{first, second, third, fourth} {
		if !named[id] {
			t.Errorf("push's rollout %s is in no rollout that ran; the last one names %v", id, final.Queue)
		}
	}
}

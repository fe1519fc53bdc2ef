package coord

import (
	"testing"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// Review: an entry is keyed by the push that created it, but a newer push
// replaces it in place, so the key no longer names the push it carries.
// When that entry runs, the first push (here a manual "roll now", whose key
// is always "manual||||" for a service without a ref) can no longer be
// queued: its create hits the key, NodeExist, and Add retries the same
// name ten times and fails. serve answers 503 to every "roll now" of the
// service for as long as that rollout runs (a canary pause: hours).
func TestReviewPushWhoseKeyAnotherPushTookCanStillBeQueued(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	q := Triggers{KAPI: kapi}
	rec := func() fleetroll.Report {
		return fleetroll.Report{ID: fleetroll.NewID(), Service: "s", Status: fleetroll.StatusQueued}
	}
	m, err := q.Add(ctx, "s", "manual||||", true, rec, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := q.Add(ctx, "s", "dockerhub|demo/s|latest||1", false, rec, "", nil)
	if err != nil || p.Superseded == nil || p.Entry.Key != m.Entry.Key {
		t.Fatalf("the push should take the manual entry's place: %+v %v", p, err)
	}
	// A receiver runs the push (under the manual trigger's key).
	if _, err := q.Update(ctx, p.Entry.Key, func(e *QueuedTrigger) { e.Runner = "r" }); err != nil {
		t.Fatal(err)
	}
	// "Roll now" again while it runs: it should wait beside it.
	again, err := q.Add(ctx, "s", "manual||||", true, rec, "", nil)
	if err != nil {
		t.Fatalf("a manual trigger while the push that took its key runs: %v", err)
	}
	if again.Merged || again.Entry.Record.ID == p.Entry.Record.ID {
		t.Fatalf("merged into the running push: %+v", again)
	}
}

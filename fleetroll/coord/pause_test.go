package coord

import (
	"errors"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// A decision needs an open pause and a well-formed rollout ID; a pause
// opened again (by the fleetroll that took the rollout over) keeps the
// decision taken meanwhile.
func TestPauses(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	pauses := Pauses{KAPI: kapi}
	if _, err := pauses.Decide(ctx, "0000000000c9", fleetroll.Decision{Kind: fleetroll.DecisionPromote}); !errors.Is(err, ErrNotPaused) {
		t.Fatalf("decision on a rollout that is not paused: %v", err)
	}
	if _, err := pauses.Decide(ctx, "../locks", fleetroll.Decision{Kind: fleetroll.DecisionPromote}); err == nil || errors.Is(err, ErrNotPaused) {
		t.Fatalf("a bad rollout ID reached etcd: %v", err)
	}
	ps := Pause{Rollout: "0000000000c2", Service: "my-service", Canaries: []string{"my-service@1.service"}}
	if err := pauses.Open(ctx, ps); err != nil {
		t.Fatal(err)
	}
	if _, err := pauses.Decide(ctx, ps.Rollout, fleetroll.Decision{Kind: fleetroll.DecisionAbort, By: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := pauses.Open(ctx, ps); err != nil {
		t.Fatal(err)
	}
	if d, err := pauses.Await(ctx, ps.Rollout, time.Second); err != nil || d.Kind != fleetroll.DecisionAbort {
		t.Fatalf("decision after a second open: %+v %v", d, err)
	}
	if err := pauses.Close(ctx, ps.Rollout); err != nil {
		t.Fatal(err)
	}
	if _, err := pauses.Decide(ctx, ps.Rollout, fleetroll.Decision{Kind: fleetroll.DecisionAbort}); !errors.Is(err, ErrNotPaused) {
		t.Fatalf("a decision after the pause: %v", err)
	}
}

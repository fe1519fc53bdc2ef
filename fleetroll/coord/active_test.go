package coord

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// Active lists what has not ended, from the queue, the pauses and the
// locks: a receiver's running and queued rollouts, a paused one with its
// canaries, a CLI's that holds a lock (its rollout named by its intent),
// and a pause that nothing else explains; a lock a receiver's running
// rollout explains is not listed twice.
func TestActiveRollouts(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	put := func(key string, v any) {
		t.Helper()
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kapi.Set(ctx, key, string(b), nil); err != nil {
			t.Fatal(err)
		}
	}
	rec := func(id, svc string, started time.Time, outcomes ...fleetroll.Outcome) fleetroll.Report {
		r := fleetroll.Report{ID: id, Service: svc, Started: started, Trigger: fleetroll.Trigger{Source: "dockerhub", Repository: "demo/" + svc, Tag: "latest"}}
		for i, o := range outcomes {
			r.Units = append(r.Units, fleetroll.UnitReport{Unit: svc + "@" + string(rune('1'+i)) + ".service", Outcome: o})
		}
		return r
	}
	// web: one running on receiver A (its lock too), one queued behind.
	put(QueuePrefix+"/entries/web/a", QueuedTrigger{Record: rec("0000000000a1", "web", t0, fleetroll.OutcomeRestarted, fleetroll.OutcomePending), Runner: "receiver A"})
	put(QueuePrefix+"/entries/web/b", QueuedTrigger{Record: rec("0000000000a2", "web", time.Time{})})
	if _, err := kapi.Set(ctx, LockKey("web"), "receiver A, rollout 0000000000a1", nil); err != nil {
		t.Fatal(err)
	}
	// api: running on receiver B, paused after its canary.
	put(QueuePrefix+"/entries/api/a", QueuedTrigger{Record: rec("0000000000b1", "api", t0.Add(time.Minute), fleetroll.OutcomeRestarted, fleetroll.OutcomePending), Runner: "receiver B"})
	if err := (Pauses{KAPI: kapi}).Open(ctx, Pause{Rollout: "0000000000b1", Service: "api", Canaries: []string{"api@1.service"}, Since: t0.Add(2 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	// cli: a fleetroll restart holding the lock, a unit in flight.
	cliOwner := "fleetroll restart cli on host1 (pid 42) since 2026-01-01T12:00:00Z"
	if _, err := kapi.Set(ctx, LockKey("cli"), cliOwner, nil); err != nil {
		t.Fatal(err)
	}
	if err := (Intents{KAPI: kapi}).Put(ctx, "cli", Intent{Rollout: "0000000000c1", Owner: cliOwner, Started: t0, Trigger: fleetroll.Trigger{Source: "cli"},
		Units: []IntentUnit{{Unit: "cli@1.service", Phase: fleetroll.PhaseStop, Since: t0}}}); err != nil {
		t.Fatal(err)
	}
	// bare: a pause alone (a CLI's canary pause with the lock off).
	if err := (Pauses{KAPI: kapi}).Open(ctx, Pause{Rollout: "0000000000d1", Service: "bare", Canaries: []string{"bare@1.service"}, Since: t0}); err != nil {
		t.Fatal(err)
	}

	all, err := Active(ctx, kapi, "")
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		id, service string
		status      fleetroll.Status
		runner      string
		done, units int
		canaries    int
	}
	var got []row
	for _, a := range all {
		got = append(got, row{a.ID, a.Service, a.Status, a.Runner, a.Done, a.Units, len(a.Canaries)})
	}
	want := []row{
		{"0000000000c1", "cli", fleetroll.StatusRunning, cliOwner, 0, 0, 0},
		{"0000000000a1", "web", fleetroll.StatusRunning, "receiver A", 1, 2, 0},
		{"0000000000b1", "api", fleetroll.StatusPaused, "receiver B", 1, 2, 1},
		{"0000000000d1", "bare", fleetroll.StatusPaused, "", 0, 0, 1},
		{"0000000000a2", "web", fleetroll.StatusQueued, "", 0, 0, 0},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d rollouts, want %d:\n%+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	if all[0].Trigger != "cli" || !all[0].Started.Equal(t0) {
		t.Errorf("the CLI's rollout: trigger %q, started %s", all[0].Trigger, all[0].Started)
	}

	web, err := Active(ctx, kapi, "web")
	if err != nil || len(web) != 2 || web[0].ID != "0000000000a1" || web[1].ID != "0000000000a2" {
		t.Fatalf("web: %+v %v", web, err)
	}
	if none, err := Active(ctx, kapi, "quiet"); err != nil || len(none) != 0 {
		t.Fatalf("a service with nothing in progress: %+v %v", none, err)
	}
	if _, err := Active(ctx, kapi, "../locks"); err == nil {
		t.Fatal("a bad service name reached etcd")
	}
}

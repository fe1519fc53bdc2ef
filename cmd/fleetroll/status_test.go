package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	client "go.etcd.io/etcd/client/v2"
)

// status lists the rollouts in progress before the history: a receiver's
// running and queued ones, one paused after its canaries with what it
// waits for, a CLI's that holds the lock; status SERVICE only its own,
// and -o json carries them as "active"; status ID finds one in progress.
func TestStatusListsRolloutsInProgress(t *testing.T) {
	etcd, _ := etcdtest.Start(t)
	c, err := client.New(client.Config{Endpoints: []string{etcd}})
	if err != nil {
		t.Fatal(err)
	}
	kapi := client.NewKeysAPI(c)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	put := func(key string, v any) {
		t.Helper()
		b, _ := json.Marshal(v)
		if _, err := kapi.Set(ctx, key, string(b), nil); err != nil {
			t.Fatal(err)
		}
	}
	started := time.Now().Add(-time.Minute)
	running := fleetroll.Report{ID: "0000000000a1", Service: "web", Started: started, Trigger: fleetroll.Trigger{Source: "dockerhub", Repository: "demo/web", Tag: "latest"},
		Units: []fleetroll.UnitReport{{Unit: "web@1.service", Outcome: fleetroll.OutcomeRestarted}, {Unit: "web@2.service", Outcome: fleetroll.OutcomePending}}}
	put(coord.QueuePrefix+"/entries/web/a", coord.QueuedTrigger{Record: running, Runner: "fleetroll serve on host1"})
	put(coord.QueuePrefix+"/entries/web/b", coord.QueuedTrigger{Record: fleetroll.Report{ID: "0000000000a2", Service: "web"}})
	put(coord.QueuePrefix+"/entries/api/a", coord.QueuedTrigger{Record: fleetroll.Report{ID: "0000000000b1", Service: "api", Started: started}, Runner: "fleetroll serve on host2"})
	if err := (coord.Pauses{KAPI: kapi}).Open(ctx, coord.Pause{Rollout: "0000000000b1", Service: "api", Canaries: []string{"api@1.service"}, Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := kapi.Set(ctx, coord.LockKey("cli"), "fleetroll restart cli on host3 (pid 7)", nil); err != nil {
		t.Fatal(err)
	}

	code, out, errs := runCLI(t, "status", "--etcd-endpoints", etcd)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"in progress:", "0000000000a1  web", "running", "1/2", "fleetroll serve on host1",
		"0000000000b1  api", "paused", "canaries api@1.service since", "fleetroll promote|abort 0000000000b1",
		"0000000000a2  web", "queued", "fleetroll restart cli on host3 (pid 7)", "no rollouts recorded"} {
		if !strings.Contains(out, want) {
			t.Errorf("status does not say %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "0000000000a1") > strings.Index(out, "0000000000b1") || strings.Index(out, "0000000000b1") > strings.Index(out, "0000000000a2") {
		t.Errorf("not running, paused, queued in that order:\n%s", out)
	}

	code, out, errs = runCLI(t, "status", "web", "-o", "json", "--etcd-endpoints", etcd)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var doc struct {
		Active []coord.ActiveRollout `json:"active"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(doc.Active) != 2 || doc.Active[0].ID != "0000000000a1" || doc.Active[0].Status != fleetroll.StatusRunning ||
		doc.Active[1].ID != "0000000000a2" || doc.Active[1].Status != fleetroll.StatusQueued {
		t.Fatalf("status web -o json: %+v", doc.Active)
	}

	code, out, errs = runCLI(t, "status", "0000000000B1", "--etcd-endpoints", etcd)
	var one coord.ActiveRollout
	if code != 0 || json.Unmarshal([]byte(out), &one) != nil || one.Status != fleetroll.StatusPaused || one.Service != "api" {
		t.Fatalf("status ID of a paused rollout: exit %d %s %s", code, out, errs)
	}
}

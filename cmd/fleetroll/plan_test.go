package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
)

// A blue-green dry run prints the blue-green plan: the new units on the
// other set of ports (with their sidekicks) and the live set that goes
// after the switch, not a one-at-a-time restart of the live set (issue 25).
// With etcd, the live set is the one recorded there: after a swap the new
// units go on the ports.
func TestDryRunBlueGreenPrintsTheBlueGreenPlan(t *testing.T) {
	_, url := fakeCluster(t, append(units3, "my-sidekick@8901.service", "my-sidekick@8902.service", "my-sidekick@8903.service")...)
	args := []string{"restart", "my-service", "--endpoint", url, "--dry-run", "--strategy", "blue-green", "--ports", "8901-8903",
		"--spare-ports", "8911-8913", "--sidekick", "my-sidekick"}
	code, out, errs := runCLI(t, append(args, "--etcd-endpoints", "")...)
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, errs)
	}
	for _, want := range []string{"blue-green", "my-service@8911.service  with my-sidekick@8911.service", "my-service@8913.service",
		"live (drained, stopped and destroyed after the switch)", "my-service@8901.service"} {
		if !strings.Contains(out, want) {
			t.Errorf("the plan has no %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "at a time") || strings.Index(out, "8911") > strings.Index(out, "8901") {
		t.Errorf("not a blue-green plan, new units first:\n%s", out)
	}

	etcd, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{etcd}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := (coord.Lives{KAPI: kapi}).Put(ctx, "my-service", coord.LiveSets{Live: []string{"8911", "8912", "8913"}, Spare: []string{"8901", "8902", "8903"}}); err != nil {
		t.Fatal(err)
	}
	_, url = fakeCluster(t, "my-service@8911.service", "my-service@8912.service", "my-service@8913.service")
	args[3] = url
	code, out, errs = runCLI(t, append(args, "--etcd-endpoints", etcd, "-o", "json", "--sidekick", "")...)
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, errs)
	}
	var plan blueGreenPlan
	if err := json.Unmarshal([]byte(out), &plan); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if plan.Strategy != "blue-green" || len(plan.Units) != 3 || plan.Units[0].Name != "my-service@8911.service" ||
		len(plan.New) != 3 || plan.New[0].Name != "my-service@8901.service" || plan.New[2].Name != "my-service@8903.service" {
		t.Fatalf("after a swap: %s", out)
	}
}

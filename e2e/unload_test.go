package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coreos/fleet/schema"
)

// fleet v1.0.0's agent unloads a destroyed unit in a reconcile of its own
// (its unload fails "not loaded" once systemd has let the stopped unit
// go) and starts or stops nothing else in it. A restart made just after
// ten units were destroyed on its machine waits for those unloads, and
// the stall's diagnosis says so (fleet still publishes the states of the
// units it no longer lists) instead of "it missed it".
func TestStallAfterDestroysSaysWhy(t *testing.T) {
	c := needCluster(t)
	const service, filler = "e2e-unload", "e2e-filler"
	launchDemo(t, service, "19621")
	claimUnits(t, filler)
	var instances []string
	for i := range 10 {
		instances = append(instances, fmt.Sprint(i))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	opts := []*schema.UnitOption{{Section: "Service", Name: "ExecStart", Value: "/bin/sleep 100000"}}
	done := waiting(t, waitFleet, "filler units launched and running")
	fillers, err := c.Launch(ctx, filler, opts, instances...)
	done()
	t.Cleanup(func() { destroyUnits(t, c, fillers...) })
	if err != nil {
		t.Fatal(err)
	}
	c.Destroy(fillers...)
	code, out := fleetroll(t, "restart", service, "--grace", "0s", "--min-healthy-time", "0s")
	if code != 0 {
		t.Fatalf("restart: exit %d\n%s", code, out)
	}
	var stalls []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "phase stalled") {
			stalls = append(stalls, l)
		}
	}
	// Some may be unloaded by the time of the diagnosis (3 s in), and a
	// neighbour's destroyed units count too.
	if len(stalls) == 0 || !busy.MatchString(stalls[0]) {
		t.Fatalf("the first stall's diagnosis does not name the destroyed units: %q\n%s", stalls, out)
	}
	t.Log(stalls[0])
}

var busy = regexp.MustCompile(`it is busy: [1-9][0-9]* unit\(s\) destroyed on its machine are not unloaded yet`)

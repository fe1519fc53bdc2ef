package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/fleet/schema"
	fr "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/fleetroll/fleetroll/internal/loadtest"
)

// fleetUnits lists the names of the units fleet knows on cluster c.
func fleetUnits(t *testing.T, c *cluster.Cluster) []string {
	t.Helper()
	f, err := fr.Connect(c.Endpoint, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	units, err := f.Units(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range units {
		names = append(names, u.Name)
	}
	return names
}

// Blue-green under load through nginx, three instances on three machines
// (sharing them): the new instances on the spare ports serve before the
// old ones are drained and destroyed; no request fails and the proxy never
// runs out of upstreams. A second rollout swaps the port sets back.
func TestBlueGreenUnderLoad(t *testing.T) {
	c := need3(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ports, spare := []string{"8931", "8932", "8933"}, []string{"8941", "8942", "8943"}
	setupDone := waiting(t, waitCluster, "load setup: units, sidekicks, proxy")
	setup, err := loadtest.Start(ctx, c, ports, loadtest.LaunchOptions{Shared: true,
		DemoArgs: "-warmup 2s -shutdown-timeout 0", SidekickInterval: time.Second, SidekickTTL: 5 * time.Second}, t.TempDir())
	setupDone()
	t.Cleanup(setup.Close)
	if err != nil {
		t.Fatal(err)
	}
	var news []string
	for _, p := range spare {
		news = append(news, "my-service@"+p+".service", "my-service-sidekick@"+p+".service")
	}
	setup.Also(news...)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{c.EtcdURL}, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = kapi.Delete(context.Background(), coord.LivePrefix+"/my-service", nil) })

	bg := []string{"--strategy", "blue-green", "--spare-ports", strings.Join(spare, ","), "--sidekick", "my-service-sidekick", "--placement-timeout", "1m"}
	lo := loadtest.LoadOptions{Rate: 100, SlowEvery: 8, Slow: 600 * time.Millisecond}
	rolled := waiting(t, waitFleetroll, "fleetroll restart under load")
	res, took, rep, err := setup.Fleetroll(ctx, binary, lo, 2000, bg...)
	rolled()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("blue-green: rollout %s, %d requests (%d slow), %d failed (%s), fewest upstreams %d, p50 %s p99 %s",
		took.Round(time.Second), res.Requests, res.Slow, res.Failed, res.FailureSummary(), res.MinUpstreams, res.P50, res.P99)
	if rep.Status != fr.StatusSucceeded || rep.Strategy != fr.StrategyBlueGreen {
		t.Fatalf("report: %+v", rep)
	}
	if res.Failed != 0 || res.MinUpstreams == 0 || res.Requests < 2000 {
		t.Fatalf("blue-green under load: %d of %d requests failed (%s), fewest upstreams %d", res.Failed, res.Requests, res.FailureSummary(), res.MinUpstreams)
	}
	units := fleetUnits(t, c)
	for _, p := range ports {
		if slices.Contains(units, "my-service@"+p+".service") || slices.Contains(units, "my-service-sidekick@"+p+".service") {
			t.Fatalf("old instance %s left in fleet: %v", p, units)
		}
	}
	newUnits := []string{"my-service@8941.service", "my-service@8942.service", "my-service@8943.service"}
	states, err := c.Systemd(ctx, newUnits...)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range states {
		if !s.Up() {
			t.Fatalf("%s not running: %+v", newUnits[i], s)
		}
	}
	live, err := coord.Lives{KAPI: kapi}.Get(ctx, "my-service")
	if err != nil || live == nil || !slices.Equal(live.Live, spare) || !slices.Equal(live.Spare, ports) {
		t.Fatalf("live record: %+v %v", live, err)
	}

	// The next rollout goes back to the first ports.
	setup.Also("my-service@8931.service", "my-service-sidekick@8931.service", "my-service@8932.service",
		"my-service-sidekick@8932.service", "my-service@8933.service", "my-service-sidekick@8933.service")
	cmd := c.Hub(ctx, binary, append([]string{"restart", "my-service", "--ports", strings.Join(ports, ","), "--endpoint", c.Endpoint,
		"--etcd-endpoints", c.EtcdURL, "--health-path", "/healthz", "--health-interval", "250ms", "--drain", "--drain-delay", "1s", "-o", "json"}, bg...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	back := waiting(t, waitFleetroll, "fleetroll restart to its end")
	out, err := cmd.Output()
	back()
	var rep2 fr.Report
	if err != nil || json.Unmarshal(out, &rep2) != nil || rep2.Status != fr.StatusSucceeded {
		t.Fatalf("second blue-green: %v\n%s%s", err, out, stderr.String())
	}
	var launched []string
	for _, u := range rep2.Units {
		if u.Outcome == fr.OutcomeLaunched {
			launched = append(launched, u.Unit)
		}
	}
	if !slices.Equal(launched, []string{"my-service@8931.service", "my-service@8932.service", "my-service@8933.service"}) {
		t.Fatalf("the second rollout launched %v", launched)
	}
}

// When a new instance cannot be placed (Conflicts= on a one-machine
// cluster), the new ones are destroyed, the old one never stops, and the
// exit code says the rollout failed.
func TestBlueGreenUnplacedKeepsTheOldOnes(t *testing.T) {
	c := needCluster(t)
	claimUnits(t, "e2e-bgx", "19161", "19171")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opts, err := cluster.LoadTemplate(filepath.Join(repo, "contrib", "demo", "my-service@.service"), "STATE="+c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, &schema.UnitOption{Section: "X-Fleet", Name: "Conflicts", Value: "e2e-bgx@*.service"})
	t.Cleanup(func() { c.Destroy("e2e-bgx@19161.service", "e2e-bgx@19171.service") })
	launched := waiting(t, waitFleet, "demo units launched and running")
	units, err := c.Launch(ctx, "e2e-bgx", opts, "19161")
	launched()
	if err != nil {
		t.Fatal(err)
	}
	before := systemd(t, units...)
	code, out := fleetroll(t, "restart", "e2e-bgx", "--ports", "19161", "--endpoint", c.Endpoint, "--etcd-endpoints", c.EtcdURL,
		"--strategy", "blue-green", "--spare-ports", "19171", "--placement-timeout", "5s")
	if code != 1 || !strings.Contains(out, "not placed on any machine within 5s") || !strings.Contains(out, "the new instances were destroyed, the old ones kept serving") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if slices.Contains(fleetUnits(t, c), "e2e-bgx@19171.service") {
		t.Fatal("the new unit was left in fleet")
	}
	if after := systemd(t, units...); !after[0].Up() || after[0].MainPID != before[0].MainPID {
		t.Fatalf("the old instance was touched: %+v -> %+v", before[0], after[0])
	}
	kapi := etcdKAPI(t)
	if live, err := (coord.Lives{KAPI: kapi}).Get(ctx, "e2e-bgx"); err != nil || live != nil {
		t.Fatalf("a live record after a failed blue-green: %+v %v", live, err)
	}
}

// A blue-green rollout killed with SIGKILL once its new units were
// launched (before the switch), and again once the switch was made: each
// time fleetroll recover leaves one full set running and the live record
// naming it, no unit of the other set in fleet, no intent, and the killed
// rollout recorded as interrupted (issue 21).
func TestBlueGreenKilledIsRecovered(t *testing.T) {
	c := needCluster(t)
	ports, spare := []string{"19351", "19352"}, []string{"19361", "19362"}
	claimUnits(t, "bgkill", spare...)
	units := launchDemo(t, "bgkill", ports...)
	var spareUnits []string
	for _, p := range spare {
		spareUnits = append(spareUnits, "bgkill@"+p+".service")
	}
	t.Cleanup(func() { destroyUnits(t, c, spareUnits...) })
	kapi := etcdKAPI(t)
	t.Cleanup(func() { _, _ = kapi.Delete(context.Background(), coord.LivePrefix+"/bgkill", nil) })
	args := []string{"restart", "bgkill", "--ports", strings.Join(ports, ","), "--strategy", "blue-green", "--spare-ports", strings.Join(spare, ","),
		"--grace", "0s", "--min-healthy-time", "0s", "--health-path", "/healthz", "--health-interval", "200ms", "--health-successes", "10"}

	for _, kill := range []struct {
		name       string
		at         func(line string) bool
		keep, gone []string
	}{
		{"after the new units launched", func(l string) bool { return strings.Contains(l, spareUnits[0]+": running in") }, units, spareUnits},
		{"after the switch", func(l string) bool {
			return strings.Contains(l, units[0]+": stopping") || strings.Contains(l, units[0]+": draining")
		}, spareUnits, units},
	} {
		cmd, lines, _ := startFleetrollOut(t, args...)
		var log strings.Builder
		id := ""
		deadline := time.After(2 * time.Minute)
	watch:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("%s: fleetroll ended first:\n%s", kill.name, log.String())
				}
				log.WriteString(l + "\n")
				if rest, ok := strings.CutPrefix(l, "rollout "); ok && id == "" {
					id, _, _ = strings.Cut(rest, ":")
				}
				if kill.at(l) {
					break watch
				}
			case <-deadline:
				t.Fatalf("%s: not reached:\n%s", kill.name, log.String())
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()

		code, out := fleetroll(t, "recover", "bgkill", "--health-path", "/healthz", "--health-interval", "200ms")
		if code != 0 || !strings.Contains(out, "recovering blue-green rollout "+id) {
			t.Fatalf("%s: recover: exit %d\n%s\nkilled run:\n%s", kill.name, code, out, log.String())
		}
		t.Logf("%s: %s", kill.name, strings.TrimSpace(out))
		for i, st := range systemd(t, kill.keep...) {
			if !st.Up() {
				t.Errorf("%s: %s is %s/%s", kill.name, kill.keep[i], st.Active, st.Sub)
			}
		}
		inFleet := fleetUnits(t, c)
		for _, u := range kill.gone {
			if slices.Contains(inFleet, u) {
				t.Errorf("%s: %s left in fleet", kill.name, u)
			}
		}
		var keepPorts []string
		for _, u := range kill.keep {
			keepPorts = append(keepPorts, strings.TrimSuffix(strings.TrimPrefix(u, "bgkill@"), ".service"))
		}
		live, err := coord.Lives{KAPI: kapi}.Get(t.Context(), "bgkill")
		if err != nil || live == nil || !slices.Equal(live.Live, keepPorts) {
			t.Fatalf("%s: live record %+v %v, want %v", kill.name, live, err, keepPorts)
		}
		if in, err := (coord.Intents{KAPI: kapi}).Get(t.Context(), "bgkill"); err != nil || in != nil {
			t.Fatalf("%s: intent left: %+v %v", kill.name, in, err)
		}
		code, st := fleetroll(t, "status", id)
		var rec fr.Report
		if code != 0 || json.Unmarshal([]byte(st), &rec) != nil || rec.Status != fr.StatusInterrupted || rec.Strategy != fr.StrategyBlueGreen {
			t.Fatalf("%s: history of the killed rollout %s: %d\n%s", kill.name, id, code, st)
		}
	}
}

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coreos/fleet/schema"
	roll "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/fleetroll/fleetroll/internal/loadtest"
	client "go.etcd.io/etcd/client/v2"
)

// need3 runs the test in the three-machine cluster's lane (needCluster).
func need3(t *testing.T) *cluster.Cluster {
	t.Helper()
	return laneCluster(t, true)
}

// The smaller version of bench/load: through nginx (confd upstreams) to
// my-service on three machines, every instance on port 890x of its own
// machine, fleetroll with drain and health gate loses no request; the naive
// loop's count is logged beside it.
func TestLoadRolloutThroughProxyLosesNoRequest(t *testing.T) {
	c := need3(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ports := []string{"8901", "8902", "8903"}
	setupDone := waiting(t, waitCluster, "load setup: units, sidekicks, proxy")
	setup, err := loadtest.Start(ctx, c, ports, loadtest.LaunchOptions{
		DemoArgs: "-warmup 2s -shutdown-timeout 0", SidekickInterval: time.Second, SidekickTTL: 5 * time.Second}, t.TempDir())
	setupDone()
	t.Cleanup(setup.Close)
	if err != nil {
		t.Fatal(err)
	}
	units := setup.Service.Units
	before, err := c.Systemd(ctx, units...)
	if err != nil {
		t.Fatal(err)
	}
	machines := map[int]bool{}
	for i, s := range before {
		if !s.Up() || s.Machine == 0 {
			t.Fatalf("%s: %+v", units[i], s)
		}
		machines[s.Machine] = true
	}
	if len(machines) != 3 {
		t.Fatalf("instances on machines %v, want one on each of 3", machines)
	}
	proxy := setup.Proxy
	if err := proxy.WaitUpstreams(ctx, 3); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if !strings.Contains(proxy.Upstreams(), c.MachineIP(i)+":890") {
			t.Fatalf("machine %d (%s) is not among the upstreams:\n%s", i, c.MachineIP(i), proxy.Upstreams())
		}
	}

	lo := loadtest.LoadOptions{Rate: 100, SlowEvery: 8, Slow: 600 * time.Millisecond}
	rolled := waiting(t, waitFleetroll, "fleetroll restart under load")
	res, took, rep, err := setup.Fleetroll(ctx, binary, lo, 2000)
	rolled()
	if err != nil {
		t.Fatal(err)
	}
	after, err := c.Systemd(ctx, units...)
	if err != nil {
		t.Fatal(err)
	}
	for i := range after {
		if !after[i].Up() || after[i].MainPID == before[i].MainPID {
			t.Fatalf("%s not restarted: before %+v, after %+v", units[i], before[i], after[i])
		}
	}
	if rep.Restarted() != 3 {
		t.Fatalf("fleetroll restarted %d of 3: %+v", rep.Restarted(), rep)
	}
	t.Logf("fleetroll: rollout %s, %d requests (%d slow), %d failed (%s), p50 %s p99 %s",
		took.Round(time.Second), res.Requests, res.Slow, res.Failed, res.FailureSummary(), res.P50, res.P99)
	if res.Requests < 2000 || res.Slow*10 < res.Requests {
		t.Fatalf("load too small: %d requests, %d slow", res.Requests, res.Slow)
	}
	if res.Failed != 0 {
		t.Fatalf("fleetroll with drain and health gate: %d of %d requests failed (%s)", res.Failed, res.Requests, res.FailureSummary())
	}

	// The naive loop, same load, for comparison (logged, not judged: what
	// it loses depends on timing).
	naiveDone := waiting(t, waitFleetroll, "the naive loop under load")
	naive, took, err := setup.Naive(ctx, lo, 2000)
	naiveDone()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("naive loop: rollout %s, %d requests (%d slow), %d failed (%s), p50 %s p99 %s",
		took.Round(time.Second), naive.Requests, naive.Slow, naive.Failed, naive.FailureSummary(), naive.P50, naive.P99)
}

// launchSpread launches the demo as service@PORT for each port, never two
// on one machine (Conflicts=), and returns the units with their states.
func launchSpread(t *testing.T, c *cluster.Cluster, service string, ports ...string) ([]string, []cluster.SystemdState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts, err := cluster.LoadTemplate(filepath.Join(repo, "contrib", "demo", "my-service@.service"), "STATE="+c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, &schema.UnitOption{Section: "X-Fleet", Name: "Conflicts", Value: service + "@*.service"})
	var units []string
	for _, p := range ports {
		units = append(units, service+"@"+p+".service")
	}
	t.Cleanup(func() { destroyUnits(t, c, units...) })
	defer waiting(t, waitFleet, "demo units launched and running")()
	if _, err := c.Launch(ctx, service, opts, ports...); err != nil {
		t.Fatal(err)
	}
	st, err := c.Systemd(ctx, units...)
	if err != nil {
		t.Fatal(err)
	}
	return units, st
}

// rollLosingMachine rolls the units with fleetroll (on the host, against
// machine 1's API) and kills the victim's machine as soon as fleetroll has
// seen the victim stop. It returns the exit code, the report and the
// progress lines.
func rollLosingMachine(t *testing.T, c *cluster.Cluster, victim string, machine int, args ...string) (int, roll.Report, string) {
	t.Helper()
	t.Cleanup(func() {
		defer waiting(t, waitCluster, "the lost machine restored")()
		if err := c.Restore(context.Background()); err != nil {
			t.Errorf("restore machine %d: %v", machine, err)
		}
	})
	cmd, lines, stdout := startFleetrollOn(t, c, args...)
	var log strings.Builder
	waitLine(t, lines, victim+": stopped", &log)
	lose := waiting(t, waitCluster, "a machine lost")
	if err := c.LoseMachine(context.Background(), machine); err != nil {
		t.Fatal(err)
	}
	lose()
	rest := waiting(t, waitFleetroll, "fleetroll restart to its end, after the loss")
	for l := range lines {
		log.WriteString(l + "\n")
	}
	rest()
	code := exitCode(t, cmd)
	var rep roll.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("report: %v\n%s%s", err, &log, stdout)
	}
	return code, rep, log.String()
}

// notOnMachine1 picks a unit that is not on machine 1, whose fleet API the
// tests talk to: its index and its machine.
func notOnMachine1(t *testing.T, st []cluster.SystemdState) (int, int) {
	t.Helper()
	for i, s := range st {
		if s.Machine > 1 {
			return i, s.Machine
		}
	}
	t.Fatalf("every unit on machine 1: %+v", st)
	return -1, 0
}

// A machine lost while its instance is being restarted, with a spare
// machine: fleet starts the instance there once the lost machine's TTL has
// run out, fleetroll waits for that and goes on, and the report says where
// the unit went. No instance is left stopped.
func TestMachineLostMidRoll(t *testing.T) {
	c := need3(t)
	// Two instances that may not share a machine, on three machines: the
	// third machine is the spare.
	units, before := launchSpread(t, c, "lost-demo", "18971", "18972")
	victim, lost := notOnMachine1(t, before)
	spare := 6 - before[0].Machine - before[1].Machine
	lostID, spareID := machineID(t, c, lost), machineID(t, c, spare)

	code, rep, log := rollLosingMachine(t, c, units[victim], lost,
		"restart", "lost-demo", "--ports", "18971,18972", "--grace", "0s", "--min-healthy-time", "0s", "--start-timeout", "3m", "-o", "json")
	if code != 0 || rep.Restarted() != 2 {
		t.Fatalf("fleetroll exited %d, restarted %d of 2:\n%s", code, rep.Restarted(), log)
	}
	u := rep.Units[victim] // the report lists the units in the order of the ports
	if u.MovedFrom != lostID[:8] || u.Machine != spareID[:8] {
		t.Fatalf("the report of %s says it moved from %q to %q; want from %s (lost) to %s (the spare)\n%s",
			units[victim], u.MovedFrom, u.Machine, lostID, spareID, log)
	}
	if !strings.Contains(log, "moved from "+lostID[:8]) {
		t.Fatalf("the progress does not say the unit moved:\n%s", log)
	}
	after, err := c.Systemd(context.Background(), units...)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range after {
		if !s.Up() || s.Machine == lost || s.MainPID == before[i].MainPID {
			t.Fatalf("%s after the roll: %+v (before %+v, machine %d lost)", units[i], s, before[i], lost)
		}
	}
	if after[victim].Machine != spare {
		t.Fatalf("%s runs on machine %d, want the spare %d", units[victim], after[victim].Machine, spare)
	}
	t.Logf("%s moved from machine %d to %d:\n%s", units[victim], lost, spare, log)
}

// A machine lost while its instance is being restarted, and no machine may
// take the instance: the roll halts at the start timeout and says why, the
// units after it are untouched, and the instance stays launched, so that
// fleet starts it again as soon as its machine is back.
func TestMachineLostWithNowhereToGo(t *testing.T) {
	c := need3(t)
	ports := []string{"18981", "18982", "18983"}
	units, before := launchSpread(t, c, "stuck-demo", ports...)
	victim, lost := notOnMachine1(t, before)
	lostID := machineID(t, c, lost)

	code, rep, log := rollLosingMachine(t, c, units[victim], lost,
		"restart", "stuck-demo", "--ports", strings.Join(ports, ","), "--grace", "0s", "--min-healthy-time", "0s", "--start-timeout", "50s", "-o", "json")
	if code != 1 || rep.Status != roll.StatusFailed {
		t.Fatalf("fleetroll exited %d (%s), want 1 (failed):\n%s", code, rep.Status, log)
	}
	u := rep.Units[victim]
	if u.Outcome != roll.OutcomeFailed || u.Phase != roll.PhaseStart ||
		!strings.Contains(u.Error, "its machine "+lostID[:8]+" left the cluster") {
		t.Fatalf("the report of %s: %+v\n%s", units[victim], u, log)
	}
	now, err := c.Systemd(context.Background(), units...)
	if err != nil {
		t.Fatal(err)
	}
	for i := range units {
		switch {
		case i < victim:
			if rep.Units[i].Outcome != roll.OutcomeRestarted || now[i].MainPID == before[i].MainPID || !now[i].Up() {
				t.Fatalf("%s before the victim: %+v, now %+v", units[i], rep.Units[i], now[i])
			}
		case i > victim:
			if rep.Units[i].Outcome != roll.OutcomeUntouched || now[i].MainPID != before[i].MainPID || !now[i].Up() {
				t.Fatalf("%s after the victim: %+v, now %+v (before %+v)", units[i], rep.Units[i], now[i], before[i])
			}
		}
	}
	// The unit is still launched in fleet: its machine back, it runs again
	// with nobody's help.
	api, err := c.API()
	if err != nil {
		t.Fatal(err)
	}
	fu, err := api.Unit(units[victim])
	if err != nil || fu == nil || fu.DesiredState != "launched" {
		t.Fatalf("%s in fleet: %+v, %v; want desired state launched", units[victim], fu, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	restored := waiting(t, waitCluster, "the lost machine restored")
	if err := c.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	restored()
	defer waiting(t, waitFleet, "the halted unit running again")()
	if err := c.WaitRunning(ctx, units[victim]); err != nil {
		t.Fatalf("%s did not run again once its machine was back: %v", units[victim], err)
	}
	t.Logf("%s halted, then back on machine %d:\n%s", units[victim], lost, log)
}

// machineID is fleet's ID of machine i, found by its public IP.
func machineID(t *testing.T, c *cluster.Cluster, i int) string {
	t.Helper()
	api, err := c.API()
	if err != nil {
		t.Fatal(err)
	}
	ms, err := api.Machines()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.PublicIP == c.MachineIP(i) {
			return m.ID
		}
	}
	t.Fatalf("fleet lists no machine %s", c.MachineIP(i))
	return ""
}

// Instances launched and a deploy started at once, on three machines (one
// instance each): fleet has not published yet where they run when the
// deploy begins. The pre-pull waits for their placement (or pulls on every
// machine) and so runs on every machine that ends up running an instance,
// before any stop (issue 21). The engine is a script that records where it
// pulled: this judges where and when, not the registry.
func TestDeployPrePullsWhereInstancesLand(t *testing.T) {
	c := need3(t)
	ports := []string{"18991", "18992", "18993"}
	claimUnits(t, "pp-demo", ports...)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pulls := filepath.Join(dir, "pulls")
	engine := filepath.Join(dir, "engine")
	writeFile(t, engine, "#!/bin/sh\ncase \"$1\" in\n  image) exit 1 ;;\n  pull) echo \"$(cat /etc/machine-id) $(date +%s.%N)\" >>"+pulls+"; exit 0 ;;\nesac\nexit 2\n", 0o755)
	for m := 1; m <= c.Machines; m++ {
		file := filepath.Join(c.Dir, fmt.Sprintf("m%d", m), "run", "systemd", "user", "fleetroll-pull@.service.d", "10-e2e.conf")
		writeFile(t, file, "[Service]\nEnvironment=\"DOCKER="+engine+"\"\n", 0o644)
		t.Cleanup(func() { _ = os.Remove(file) })
	}
	opts, err := cluster.LoadTemplate(filepath.Join(repo, "contrib", "demo", "my-service@.service"), "STATE="+c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, &schema.UnitOption{Section: "X-Fleet", Name: "Conflicts", Value: "pp-demo@*.service"})
	var units []string
	for _, p := range ports {
		units = append(units, "pp-demo@"+p+".service")
	}
	t.Cleanup(func() {
		destroyUnits(t, c, units...)
		_, _ = etcdKAPI(t).Delete(context.Background(), "/fleetroll/releases/pp-demo", &client.DeleteOptions{Recursive: true})
	})
	api, err := c.API()
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range units {
		if err := api.CreateUnit(&schema.Unit{Name: u, Options: opts, DesiredState: "launched"}); err != nil {
			t.Fatal(err)
		}
	}
	// At once: fleet has the units, but has not placed them yet.
	image := "127.0.0.1:5000/demo/pp@sha256:" + strings.Repeat("ab", 32)
	cmd, lines, stdout := startFleetrollOn(t, c, "deploy", "pp-demo", "--ports", strings.Join(ports, ","), "--image", image,
		"--grace", "0s", "--min-healthy-time", "0s", "--start-timeout", "2m", "-o", "json")
	var log strings.Builder
	for l := range lines {
		log.WriteString(l + "\n")
	}
	if code := exitCode(t, cmd); code != 0 {
		t.Fatalf("deploy: exit %d\n%s%s", code, log.String(), stdout)
	}
	var rep roll.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil || rep.Pull == nil {
		t.Fatalf("report: %v\n%s%s", err, log.String(), stdout)
	}
	pulled := map[string]bool{}
	for _, m := range rep.Pull.Machines {
		pulled[m.Machine] = true
		t.Logf("pulled on %s: %s", m.Machine, m.Why)
	}
	b, err := os.ReadFile(pulls)
	if err != nil {
		t.Fatalf("the engine never pulled: %v\n%s", err, log.String())
	}
	engineOn := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		id, _, _ := strings.Cut(l, " ")
		engineOn[id[:8]] = true
	}
	// The pull began after the rollout's start: its end is no earlier
	// than this.
	pullEnd := rep.Started.Add(time.Duration(rep.Pull.Seconds))
	if rep.Pull.Seconds <= 0 || pullEnd.After(rep.Finished) {
		t.Fatalf("the pre-pull took %s, of a rollout from %s to %s", time.Duration(rep.Pull.Seconds), rep.Started, rep.Finished)
	}
	for _, u := range rep.Units {
		if !pulled[u.Machine] || !engineOn[u.Machine] {
			t.Errorf("%s runs on %s, where the release was not pulled (record %v, engine %v)", u.Unit, u.Machine, pulled, engineOn)
		}
		if len(u.Phases) == 0 || u.Phases[0].Started.Before(pullEnd) {
			t.Errorf("%s was touched before the pre-pull ended (%s): %+v", u.Unit, pullEnd, u.Phases)
		}
		if u.Outcome != roll.OutcomeRestarted {
			t.Errorf("%s: %s", u.Unit, u.Outcome)
		}
	}
	if len(rep.Units) != 3 || len(engineOn) != 3 {
		t.Fatalf("%d units, pulled on %d machines:\n%s", len(rep.Units), len(engineOn), log.String())
	}
}

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	roll "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/fleetroll/fleetroll/internal/loadtest"
)

// The three-machine cluster, started by the first test that needs it and
// removed by TestMain.
var (
	cl3Once sync.Once
	cl3     *cluster.Cluster
	cl3Err  error
)

func need3(t *testing.T) *cluster.Cluster {
	t.Helper()
	cl3Once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cl3, cl3Err = cluster.Up(ctx, cluster.Config{Repo: repo, Dir: "/tmp/fleetroll-e2e3", EtcdPort: 23379, FleetPort: 49173, Machines: 3})
	})
	if cl3Err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the three-machine cluster is required under CI=true: %v", cl3Err)
		}
		t.Skipf("no three-machine cluster: %v", cl3Err)
	}
	return cl3
}

func down3() {
	if cl3 != nil && os.Getenv("FLEETROLL_KEEP_CLUSTER") == "" {
		if err := cl3.Down(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
}

// The smaller version of bench/load: through nginx (confd upstreams) to
// my-service on three machines, every instance on port 890x of its own
// machine, fleetroll with drain and health gate loses no request; the naive
// loop's count is logged beside it.
func TestLoadRolloutThroughProxyLosesNoRequest(t *testing.T) {
	c := need3(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	confd, err := loadtest.BuildConfd(ctx, repo, filepath.Join(c.Dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	ports := []string{"8901", "8902", "8903"}
	svc, err := loadtest.Launch(ctx, c, ports, loadtest.LaunchOptions{
		DemoArgs: "-warmup 2s -shutdown-timeout 0", SidekickInterval: time.Second, SidekickTTL: 5 * time.Second})
	t.Cleanup(func() { svc.Destroy(c) })
	if err != nil {
		t.Fatal(err)
	}
	before, err := c.Systemd(ctx, svc.Units...)
	if err != nil {
		t.Fatal(err)
	}
	machines := map[int]bool{}
	for i, s := range before {
		if !s.Up() || s.Machine == 0 {
			t.Fatalf("%s: %+v", svc.Units[i], s)
		}
		machines[s.Machine] = true
	}
	if len(machines) != 3 {
		t.Fatalf("instances on machines %v, want one on each of 3", machines)
	}
	proxy, err := loadtest.StartProxy(ctx, c, t.TempDir(), confd)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	if err := proxy.WaitUpstreams(ctx, 3); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if !strings.Contains(proxy.Upstreams(), c.MachineIP(i)+":890") {
			t.Fatalf("machine %d (%s) is not among the upstreams:\n%s", i, c.MachineIP(i), proxy.Upstreams())
		}
	}

	lo := loadtest.LoadOptions{Rate: 100, SlowEvery: 8, Slow: 600 * time.Millisecond}
	var out string
	res, took, err := loadtest.Measure(ctx, proxy.Socket, lo, 2000, loadtest.Fleetroll(c, binary, loadtest.FleetrollArgs(c, ports), &out))
	if err != nil {
		t.Fatal(err)
	}
	var rep roll.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	after, err := c.Systemd(ctx, svc.Units...)
	if err != nil {
		t.Fatal(err)
	}
	for i := range after {
		if !after[i].Up() || after[i].MainPID == before[i].MainPID {
			t.Fatalf("%s not restarted: before %+v, after %+v", svc.Units[i], before[i], after[i])
		}
	}
	if rep.Restarted() != 3 {
		t.Fatalf("fleetroll restarted %d of 3:\n%s", rep.Restarted(), out)
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
	if err := proxy.WaitUpstreams(ctx, 3); err != nil {
		t.Fatal(err)
	}
	fleet, err := roll.Connect(c.Endpoint, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	naive, took, err := loadtest.Measure(ctx, proxy.Socket, lo, 2000, func(ctx context.Context) error {
		return loadtest.Naive(ctx, fleet, svc.Units, time.Second)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("naive loop: rollout %s, %d requests (%d slow), %d failed (%s), p50 %s p99 %s",
		took.Round(time.Second), naive.Requests, naive.Slow, naive.Failed, naive.FailureSummary(), naive.P50, naive.P99)
}

// A machine lost while its instance is being restarted: fleet starts the
// instance on another machine once the machine's TTL has run out, fleetroll
// waits for that and goes on, and the report says where the unit went. No
// instance is left stopped.
func TestMachineLostMidRoll(t *testing.T) {
	c := need3(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	opts, err := cluster.LoadTemplate(filepath.Join(repo, "contrib", "demo", "my-service@.service"), "STATE="+c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	ports := []string{"18971", "18972", "18973"}
	var units []string
	for _, p := range ports {
		units = append(units, "lost-demo@"+p+".service")
	}
	t.Cleanup(func() { c.Destroy(units...) })
	if _, err := c.Launch(ctx, "lost-demo", opts, ports...); err != nil {
		t.Fatal(err)
	}
	before, err := c.Systemd(ctx, units...)
	if err != nil {
		t.Fatal(err)
	}
	// The victim: an instance not on machine 1 (whose fleet API the test
	// talks to), alone on its machine.
	victim, lost := -1, 0
	for i, s := range before {
		alone := true
		for j, o := range before {
			if j != i && o.Machine == s.Machine {
				alone = false
			}
		}
		if s.Machine > 1 && alone {
			victim, lost = i, s.Machine
			break
		}
	}
	if victim < 0 {
		t.Fatalf("no instance alone on a machine other than 1: %+v", before)
	}
	t.Cleanup(func() {
		if err := c.Restore(context.Background()); err != nil {
			t.Errorf("restore machine %d: %v", lost, err)
		}
	})
	lostID := machineID(t, c, lost)

	cmd := exec3(c, "restart", "lost-demo", "--ports", strings.Join(ports, ","), "--grace", "0s",
		"--start-timeout", "3m", "-o", "json")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := scanLines(stderr)
	var log strings.Builder
	waitLine(t, lines, units[victim]+": stopped", &log)
	if err := c.LoseMachine(ctx, lost); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		log.WriteString(l + "\n")
	}
	if code := exitCode(t, cmd); code != 0 {
		t.Fatalf("fleetroll exited %d:\n%s%s", code, &log, &stdout)
	}
	var rep roll.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, &stdout)
	}
	if rep.Restarted() != 3 {
		t.Fatalf("restarted %d of 3:\n%s", rep.Restarted(), &stdout)
	}
	u := rep.Units[slicesIndex(rep, units[victim])]
	if u.MovedFrom != lostID[:8] || u.Machine == "" || u.Machine == u.MovedFrom {
		t.Fatalf("the report of %s says machine %q moved from %q; it ran on %s:\n%s", units[victim], u.Machine, u.MovedFrom, lostID, &stdout)
	}
	if !strings.Contains(log.String(), "moved from "+lostID[:8]) {
		t.Fatalf("the progress does not say the unit moved:\n%s", &log)
	}
	after, err := c.Systemd(ctx, units...)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range after {
		if !s.Up() || s.Machine == lost || s.MainPID == before[i].MainPID {
			t.Fatalf("%s after the roll: %+v (before %+v, machine %d lost)", units[i], s, before[i], lost)
		}
	}
	t.Logf("%s moved from machine %d: %s", units[victim], lost, log.String())
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

func slicesIndex(rep roll.Report, unit string) int {
	for i, u := range rep.Units {
		if u.Unit == unit {
			return i
		}
	}
	return -1
}

// exec3 is the fleetroll binary set up for the three-machine cluster, run
// on the host (no health gate: it needs no machine's address).
func exec3(c *cluster.Cluster, args ...string) *exec.Cmd {
	cmd := exec.Command(binary, args...)
	cmd.Env = c.Env()
	return cmd
}

// scanLines sends r's lines on the channel, closed at EOF.
func scanLines(r io.Reader) <-chan string {
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return lines
}

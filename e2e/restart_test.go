package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/fleet/schema"
	fr "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/cluster"
)

// A roll of three instances: every MainPID and start time changes, exit 0,
// and an observer sampling every 50 ms never sees two instances down.
func TestRestartRollsEveryInstanceOneAtATime(t *testing.T) {
	c := needCluster(t)
	ports := []string{"18901", "18902", "18903"}
	units := launchDemo(t, "e2e-roll", ports...)
	before := systemd(t, units...)

	obs := observe(c, units, ports, 50*time.Millisecond)
	code, out := fleetroll(t, "restart", "e2e-roll", "--ports", "18901,18902,18903", "--endpoint", c.Endpoint, "--grace", "0s", "--min-healthy-time", "0s")
	obs.Stop()
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	after := systemd(t, units...)
	for i, u := range units {
		if !after[i].Up() || after[i].MainPID == before[i].MainPID || after[i].Started <= before[i].Started {
			t.Errorf("%s not restarted: before %+v, after %+v", u, before[i], after[i])
		}
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	t.Logf("observer: %d samples, max down %d (systemd), %d (HTTP), %d sample errors", obs.samples, obs.maxDown, obs.maxHTTPDown, len(obs.errs))
	if obs.samples < 20 || len(obs.errs) > obs.samples/10 {
		t.Fatalf("observer too weak: %d samples, errors %v", obs.samples, obs.errs)
	}
	if obs.maxDown != 1 || obs.maxHTTPDown > 1 {
		t.Fatalf("at most one instance may be down at once: saw %d (systemd), %d (HTTP)\n%s", obs.maxDown, obs.maxHTTPDown, out)
	}
	for _, u := range units {
		if !obs.seenDown[u] {
			t.Errorf("the observer never saw %s down: its restart was not observed", u)
		}
	}
	if !strings.Contains(out, "succeeded: 3/3 restarted") {
		t.Fatalf("summary:\n%s", out)
	}
}

// The second instance cannot start: exit 1, the first restarted, the third
// untouched.
func TestRestartHaltsWhenAnInstanceCannotStart(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-halt", "18911", "18912", "18913")
	before := systemd(t, units...)
	marker := filepath.Join(c.Dir, "fail-start-18912")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(marker)

	code, out := fleetroll(t, "restart", "e2e-halt", "--endpoint", c.Endpoint, "--grace", "0s", "--min-healthy-time", "0s", "--start-timeout", "1m")
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	after := systemd(t, units...)
	if !after[0].Up() || after[0].MainPID == before[0].MainPID {
		t.Errorf("first instance not restarted: %+v -> %+v", before[0], after[0])
	}
	if after[1].Up() {
		t.Errorf("second instance runs though it cannot start: %+v", after[1])
	}
	if after[2].MainPID != before[2].MainPID || after[2].Started != before[2].Started || !after[2].Up() {
		t.Errorf("third instance touched: %+v -> %+v", before[2], after[2])
	}
	for _, want := range []string{"start e2e-halt@18912.service", "IS DOWN", "e2e-halt@18913.service  untouched"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// SIGINT while the first instance is stopped: fleetroll brings it back up,
// exits 130, and leaves the others untouched.
func TestRestartSIGINTDuringStopBringsTheUnitBack(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-sigint", "18921", "18922", "18923")
	before := systemd(t, units...)

	cmd, lines := startFleetroll(t, "restart", "e2e-sigint", "--endpoint", c.Endpoint, "--grace", "0s", "--min-healthy-time", "0s")
	var log strings.Builder
	waitLine(t, lines, units[0]+": stopping", &log)
	// Wait until systemd has really stopped it: fleet reports that only
	// seconds later, so fleetroll is still in the stop phase.
	deadline := time.Now().Add(time.Minute)
	for systemd(t, units[0])[0].Up() {
		if time.Now().After(deadline) {
			t.Fatalf("%s never stopped", units[0])
		}
		time.Sleep(20 * time.Millisecond) // polling systemd; there is no event to wait on
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		log.WriteString(l + "\n")
	}
	err := cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Fatalf("exit %d (%v), want 130:\n%s", code, err, log.String())
	}
	after := systemd(t, units...)
	if !after[0].Up() {
		t.Fatalf("%s left down after SIGINT: %+v\n%s", units[0], after[0], log.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitRunning(ctx, units[0]); err != nil {
		t.Fatalf("fleet does not report %s running: %v", units[0], err)
	}
	for i := 1; i < 3; i++ {
		if after[i].MainPID != before[i].MainPID {
			t.Errorf("%s touched: %+v -> %+v", units[i], before[i], after[i])
		}
	}
	if after[0].MainPID == before[0].MainPID {
		t.Errorf("%s was stopped, so it must run with a new PID: %+v", units[0], after[0])
	}
}

// An unknown unit: exit 2, one line, nothing touched.
func TestRestartUnknownUnitTouchesNothing(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-unknown", "19211")
	before := systemd(t, units...)
	code, out := fleetroll(t, "restart", "e2e-unknown", "--ports", "19211,19219", "--endpoint", c.Endpoint)
	if code != 2 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "e2e-unknown@19219.service") {
		t.Fatalf("exit %d, output %q", code, out)
	}
	if after := systemd(t, units...); after[0].MainPID != before[0].MainPID {
		t.Fatalf("unit touched: %+v -> %+v", before[0], after[0])
	}
}

// --max-unavailable 2: two instances restart at once, never three, as
// systemd sees them; each restarts once.
func TestBatchesOfTwoInstances(t *testing.T) {
	c := needCluster(t)
	ports := []string{"19111", "19112", "19113", "19114"}
	units := launchDemo(t, "e2e-batch", ports...)
	before := systemd(t, units...)
	obs := observe(c, units, ports, 100*time.Millisecond)
	code, out := fleetroll(t, "restart", "e2e-batch", "--endpoint", c.Endpoint, "--max-unavailable", "2", "--grace", "0s", "--min-healthy-time", "0s")
	obs.Stop()
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	after := systemd(t, units...)
	for i, u := range units {
		if !after[i].Up() || after[i].MainPID == before[i].MainPID {
			t.Errorf("%s not restarted: %+v -> %+v", u, before[i], after[i])
		}
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.maxDown != 2 {
		t.Fatalf("at most %d instances down at once (%d samples), want 2", obs.maxDown, obs.samples)
	}
	t.Logf("4 instances, 2 at a time: at most %d down at once in %d samples", obs.maxDown, obs.samples)
}

// An instance that failed outside any roll (its process killed) is brought
// back by a restart, though fleet's agent still holds it launched: the roll
// waits for the agent to act on the stop before it writes the start. The
// cluster's own launcher (the demo's, after a cluster came back up) gets a
// failed unit it is asked to launch running the same way.
func TestRestartBringsBackAFailedInstance(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-failed", "19201", "19202")
	f, err := fr.Connect(c.Endpoint, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fail := func() cluster.SystemdState {
		t.Helper()
		st := systemd(t, units[0])[0]
		if err := syscall.Kill(st.MainPID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitUnit(t, f, units[0], func(st *schema.UnitState) (string, bool, error) {
			return "", st != nil && st.SystemdActiveState == "failed", nil
		})
		return st
	}

	killed := fail()
	other := systemd(t, units[1])[0]
	code, out := fleetroll(t, "restart", "e2e-failed", "--endpoint", c.Endpoint, "--grace", "0s", "--min-healthy-time", "0s", "--start-timeout", "1m")
	if code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, out)
	}
	after := systemd(t, units...)
	if !after[0].Up() || after[0].MainPID == killed.MainPID {
		t.Fatalf("%s not brought back: %+v\n%s", units[0], after[0], out)
	}
	if !after[1].Up() || after[1].MainPID == other.MainPID {
		t.Fatalf("%s not restarted: %+v -> %+v", units[1], other, after[1])
	}

	killed = fail()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.LaunchDemo(ctx, "e2e-failed", "19201"); err != nil {
		t.Fatalf("launch of a failed unit: %v", err)
	}
	if st := systemd(t, units[0])[0]; !st.Up() || st.MainPID == killed.MainPID {
		t.Fatalf("%s not running again after a launch: %+v", units[0], st)
	}
}

package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coreos/fleet/schema"
	fr "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	client "go.etcd.io/etcd/client/v2"
)

// starts counts the start attempts of the demo instance on port (its unit
// appends a line to STATE/starts-PORT on each).
func starts(t *testing.T, port string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(clusterOf(t).Dir, "starts-"+port))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// setTarget sets a unit's target state through the fleet API, as an
// operator's fleetctl does.
func setTarget(t *testing.T, f fr.Fleet, unit, target string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.SetUnitTargetState(ctx, unit, target); err != nil {
		t.Fatal(err)
	}
}

// waitUnit waits until fleet reports the unit in a state judge accepts.
func waitUnit(t *testing.T, f fr.Fleet, unit string, judge func(*schema.UnitState) (string, bool, error)) {
	t.Helper()
	var last *schema.UnitState
	pollFleet(t, "a unit to reach a state", func(ctx context.Context) bool {
		st, err := f.UnitState(ctx, unit)
		last = st
		_, done, _ := judge(st)
		return (err == nil || errors.Is(err, fr.ErrNotFound)) && done
	}, func() string { return fr.DescribeState(last) })
}

// pollFleet asks cond every 200 ms (as fleetroll polls fleet) until it
// holds, for a minute at most; last describes what was seen, for a failure.
func pollFleet(t *testing.T, what string, cond func(context.Context) bool, last func() string) {
	t.Helper()
	defer waiting(t, waitFleet, what)()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for !cond(ctx) {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last: %s)", what, ctx.Err(), last())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitCurrent waits until fleet's agent has brought the unit to state
// (fleet's currentState).
func waitCurrent(t *testing.T, f fr.Fleet, unit, state string) {
	t.Helper()
	cur := ""
	pollFleet(t, "a unit's currentState "+state, func(ctx context.Context) bool {
		_, got, err := f.TargetState(ctx, unit)
		cur = got
		return err == nil && got == state
	}, func() string { return "currentState " + cur })
}

// Nudging, on the real cluster, with a fast rate: it restarts each instance
// exactly once, never starts a stopped unit the roll does not own, never
// overrides a target someone else set during the roll, and leaves a unit
// that cannot start failed exactly as a roll without nudging does.
func TestNudgingHasNoSideEffects(t *testing.T) {
	c := needCluster(t)
	ports := []string{"18931", "18932", "18933", "18934"}
	units := launchDemo(t, "e2e-nudge", ports...)
	f, err := fr.Connect(c.Endpoint, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	nudge := []string{"--endpoint", c.Endpoint, "--grace", "0s", "--min-healthy-time", "0s", "--nudge-interval", "250ms"}

	// Not owned: 18933, stopped by an operator before the roll.
	setTarget(t, f, units[2], "loaded")
	waitUnit(t, f, units[2], fr.StoppedStatus)
	before := map[string]int{}
	for _, p := range ports {
		before[p] = starts(t, p)
	}
	if code, out := fleetroll(t, append([]string{"restart", "e2e-nudge", "--ports", "18931,18932"}, nudge...)...); code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	for i, p := range ports[:2] {
		if got := starts(t, p) - before[p]; got != 1 {
			t.Errorf("%s started %d times by one roll, want 1", units[i], got)
		}
	}
	if got := starts(t, "18933") - before["18933"]; got != 0 {
		t.Errorf("the stopped unit %s, not in the roll, was started %d times", units[2], got)
	}
	if st := systemd(t, units[2]); st[0].Up() {
		t.Errorf("the stopped unit %s runs: %+v", units[2], st[0])
	}

	// Someone else stops 18932 while fleetroll starts it: after their
	// write, fleetroll writes nothing more to it, and it stays stopped.
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{c.EtcdURL}})
	if err != nil {
		t.Fatal(err)
	}
	key := "/_coreos.com/fleet/job/" + units[1] + "/target-state"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cur, err := kapi.Get(ctx, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	type write struct {
		value string
		index uint64
	}
	writes := make(chan write, 100)
	go func() {
		w := kapi.Watcher(key, &client.WatcherOptions{AfterIndex: cur.Index})
		for {
			resp, err := w.Next(ctx)
			if err != nil {
				return
			}
			writes <- write{resp.Node.Value, resp.Node.ModifiedIndex}
		}
	}()
	cmd, lines := startFleetroll(t, append([]string{"restart", "e2e-nudge", "--ports", "18931,18932"}, nudge...)...)
	var log strings.Builder
	waitLine(t, lines, units[1]+": starting", &log)
	// fleetroll prints "starting" just before it writes launched: the
	// operator's stop comes once that write is in etcd, while fleetroll
	// waits for the start (else theirs could come first, and be the one
	// overwritten).
	var seq []string
	for len(seq) == 0 || seq[len(seq)-1] != "launched" {
		select {
		case w := <-writes:
			seq = append(seq, w.value)
		case <-ctx.Done():
			t.Fatalf("fleetroll's start was never written; so far %v", seq)
		}
	}
	setTarget(t, f, units[1], "loaded")
	for l := range lines {
		log.WriteString(l + "\n")
	}
	code := exitCode(t, cmd)
	if code != 0 && !strings.Contains(log.String(), "target state changed by someone else") {
		t.Fatalf("exit %d, and not for the changed target:\n%s", code, log.String())
	}
	// Every write, up to the key's last one.
	last, err := kapi.Get(ctx, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	for done := false; !done; {
		select {
		case w := <-writes:
			seq = append(seq, w.value)
			done = w.index >= last.Node.ModifiedIndex
		case <-ctx.Done():
			t.Fatalf("the watch did not deliver the last write; so far %v", seq)
		}
	}
	// fleetroll: loaded, launched (and nudges: launched); the operator:
	// loaded. Nothing after the operator's loaded.
	op := -1
	for i, v := range seq {
		if v == "loaded" && i > 0 && seq[i-1] == "launched" {
			op = i
		}
	}
	if op < 0 || op != len(seq)-1 {
		t.Fatalf("target-state writes of %s: %v; want the operator's loaded last", units[1], seq)
	}
	waitUnit(t, f, units[1], fr.StoppedStatus)
	t.Logf("exit %d; writes of %s's target state: %v", code, units[1], seq)

	// A unit that cannot start: the same outcome with and without nudging.
	marker := filepath.Join(c.Dir, "fail-start-18934")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(marker)
	type outcome struct {
		code     int
		active   string
		attempts int
	}
	var got []outcome
	for _, args := range [][]string{{"--nudge-interval", "0"}, {"--nudge-interval", "250ms"}} {
		n0 := starts(t, "18934")
		code, out := fleetroll(t, append([]string{"restart", "e2e-nudge", "--ports", "18934", "--endpoint", c.Endpoint, "--grace", "0s", "--min-healthy-time", "0s",
			"--start-timeout", "30s"}, args...)...)
		if !strings.Contains(out, "start "+units[3]) {
			t.Fatalf("%v: exit %d:\n%s", args, code, out)
		}
		got = append(got, outcome{code, systemd(t, units[3])[0].Active, starts(t, "18934") - n0})
		// Let it start again for the next round. A failed unit counts as
		// stopped at once, so wait for fleet's agent to have acted on
		// "loaded" (its currentState) before "launched": two writes in a
		// row coalesce in the agent and start nothing.
		if err := os.Remove(marker); err != nil {
			t.Fatal(err)
		}
		setTarget(t, f, units[3], "loaded")
		waitCurrent(t, f, units[3], "loaded")
		setTarget(t, f, units[3], "launched")
		waitUnit(t, f, units[3], fr.RunningStatus)
		if err := os.WriteFile(marker, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got[0] != got[1] || got[0].code != 1 || got[0].active != "failed" || got[0].attempts != 1 {
		t.Fatalf("a unit that cannot start: without nudging %+v, with %+v; want the same: exit 1, failed, one attempt", got[0], got[1])
	}
}

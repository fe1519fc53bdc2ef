package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	fr "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	client "go.etcd.io/etcd/client/v2"
)

// A fleetroll killed with SIGKILL at each step of the second unit leaves
// an intent record; the next fleetroll recover restores the unit within
// the lock's TTL plus 10 s: every instance active, announced again,
// started the expected number of times, and the killed rollout in the
// history as interrupted (issue 12). It judges a time, so it runs on a
// fleet of its own.
func TestKilledFleetrollIsRecovered(t *testing.T) {
	killAndRecover(t, "recover", "19071", "19072", "19073")
}

// The same kills, and the next fleetroll restart recovers the killed
// rollout first, then restarts every instance.
func TestKilledFleetrollIsRecoveredByARestart(t *testing.T) {
	killAndRecover(t, "restart", "19301", "19302", "19303")
}

// killAndRecover kills a restart of my-service@PORT, for three ports, at
// each step of the second unit, and recovers with fleetroll by ("recover"
// or "restart").
func killAndRecover(t *testing.T, by string, ports ...string) {
	c := needCluster(t)
	dropIn(t, "my-service@.service", map[string]string{"ARGS": "-warmup 2s"})
	units := launchDemo(t, "my-service", ports...)
	launchSidekicks(t, ports...)
	kapi := etcdKAPI(t)
	ctx := context.Background()
	announced := func() int {
		resp, err := kapi.Get(ctx, "/services/my-service", nil)
		if err != nil {
			return 0
		}
		n := 0
		for _, node := range resp.Node.Nodes {
			for _, p := range ports {
				if strings.HasSuffix(node.Key, "/"+p) {
					n++
				}
			}
		}
		return n
	}
	api, err := c.API()
	if err != nil {
		t.Fatal(err)
	}
	desired := func(unit string) string {
		u, err := api.Unit(unit)
		if err != nil || u == nil {
			return ""
		}
		return u.DesiredState
	}
	const ttl = 5 * time.Second
	flags := []string{"--ports", strings.Join(ports, ","), "--etcd-endpoints", c.EtcdURL, "--lock", "wait", "--lock-ttl", ttl.String(),
		"--drain", "--drain-delay", "1s", "--health-path", "/healthz", "--health-interval", "200ms", "--grace", "0s", "--min-healthy-time", "0s"}
	second := units[1]

	type point struct {
		name string
		// reached watches the roll (its output so far) and reports when it
		// is at this step.
		reached func(out string) bool
		// started: how many times the second unit starts, kill and
		// recovery together.
		started int
	}
	points := []point{
		{"drained", func(string) bool {
			_, err := kapi.Get(ctx, "/fleetroll/drain/my-service/"+ports[1], nil)
			return err == nil
		}, 0},
		{"stop requested", func(string) bool { return desired(second) == "loaded" }, 1},
		{"stopped", func(l string) bool { return strings.Contains(l, second+": stopped in") }, 1},
		{"start requested", func(l string) bool {
			return strings.Contains(l, second+": starting") && desired(second) == "launched"
		}, 1},
		{"running, not yet healthy", func(l string) bool { return strings.Contains(l, second+": running in") }, 1},
	}
	for _, p := range points {
		t.Run(by+" after a kill at "+p.name, func(t *testing.T) {
			eventually(t, time.Minute, "all announced", func() error {
				if n := announced(); n != 3 {
					return fmt.Errorf("%d announced", n)
				}
				return nil
			})
			before := make([]int, 3)
			for i, port := range ports {
				before[i] = starts(t, port)
			}
			cmd, lines, _ := startFleetrollOut(t, append([]string{"restart", "my-service"}, flags...)...)
			var log strings.Builder
			id := ""
			deadline := time.After(2 * time.Minute)
			tick := time.NewTicker(20 * time.Millisecond)
		watch:
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("fleetroll ended before %s:\n%s", p.name, log.String())
					}
					log.WriteString(l + "\n")
					if rest, ok := strings.CutPrefix(l, "rollout "); ok && id == "" {
						id, _, _ = strings.Cut(rest, ":")
					}
					if strings.Contains(log.String(), units[0]+": healthy") && p.reached(log.String()) {
						break watch
					}
				case <-tick.C:
					if strings.Contains(log.String(), units[0]+": healthy") && p.reached(log.String()) {
						break watch
					}
				case <-deadline:
					t.Fatalf("%s not reached:\n%s", p.name, log.String())
				}
			}
			tick.Stop()
			_ = cmd.Process.Signal(syscall.SIGKILL)
			_ = cmd.Wait()
			killed := time.Now()

			args := []string{"recover", "my-service", "--etcd-endpoints", c.EtcdURL, "--drain", "--drain-delay", "1s", "--health-path", "/healthz", "--health-interval", "200ms"}
			extra := 0
			if by == "restart" {
				args = append([]string{"restart", "my-service"}, flags...)
				extra = 1
			}
			code, out := fleetroll(t, args...)
			if code != 0 || !strings.Contains(out, "recovering rollout "+id) {
				t.Fatalf("fleetroll %s after the kill: exit %d\n%s\nkilled run:\n%s", by, code, out, log.String())
			}
			took := time.Since(killed)
			for i, st := range systemd(t, units...) {
				if !st.Up() {
					t.Errorf("%s is %s/%s after %s", units[i], st.Active, st.Sub, by)
				}
			}
			eventually(t, 15*time.Second, "all announced again", func() error {
				if n := announced(); n != 3 {
					return fmt.Errorf("%d announced", n)
				}
				return nil
			})
			want := []int{1 + extra, p.started + extra, extra}
			for i, port := range ports {
				if got := starts(t, port) - before[i]; got != want[i] {
					t.Errorf("%s started %d times, want %d", units[i], got, want[i])
				}
			}
			if by == "recover" && took > ttl+10*time.Second {
				t.Errorf("restored %s after the kill, more than the lock TTL (%s) + 10 s", took.Round(time.Millisecond), ttl)
			}
			if by == "recover" {
				t.Logf("kill at %s: every instance running again %s after the kill", p.name, took.Round(time.Millisecond))
			} else {
				t.Logf("kill at %s: recovered, then every instance restarted, %s after the kill", p.name, took.Round(time.Millisecond))
			}
			code, st := fleetroll(t, "status", id, "--etcd-endpoints", c.EtcdURL)
			var rec fr.Report
			if code != 0 || json.Unmarshal([]byte(st), &rec) != nil || rec.Status != fr.StatusInterrupted || len(rec.Units) != 1 ||
				rec.Units[0].Unit != second {
				t.Fatalf("history of the killed rollout %s: %d\n%s", id, code, st)
			}
			if _, err := kapi.Get(ctx, "/fleetroll/intents/my-service", nil); !client.IsKeyNotFound(err) {
				t.Fatalf("intent left: %v", err)
			}
		})
	}
}

// Safe by default (issue 21): a fleetroll restart given no lock flag,
// killed with SIGKILL right after the second unit stopped, left an intent
// record (the lock is on whenever etcd is there); the next plain fleetroll
// restart waits for the dead one's lock, brings the stopped instance back
// within the lock's TTL plus 10 s, records the killed rollout as
// interrupted, then restarts every instance. It judges a time, so it runs
// on a fleet of its own.
func TestPlainRestartRecoversAKilledOne(t *testing.T) {
	needCluster(t)
	ports := []string{"19331", "19332", "19333"}
	units := launchDemo(t, "plain-service", ports...)
	kapi := etcdKAPI(t)
	args := []string{"restart", "plain-service", "--grace", "1s", "--min-healthy-time", "0s"} // no lock, no etcd flag: the cluster's environment names its etcd
	cmd, lines, _ := startFleetrollOut(t, args...)
	var log strings.Builder
	id := ""
	deadline := time.After(2 * time.Minute)
	for !strings.Contains(log.String(), units[1]+": stopped in") {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("fleetroll ended before %s stopped:\n%s", units[1], log.String())
			}
			log.WriteString(l + "\n")
			if rest, ok := strings.CutPrefix(l, "rollout "); ok && id == "" {
				id, _, _ = strings.Cut(rest, ":")
			}
		case <-deadline:
			t.Fatalf("%s never stopped:\n%s", units[1], log.String())
		}
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	killed := time.Now()
	if st := systemd(t, units[1])[0]; st.Up() {
		t.Fatalf("%s runs after the kill: the test did not kill where it meant to", units[1])
	}
	if _, err := kapi.Get(context.Background(), "/fleetroll/intents/plain-service", nil); err != nil {
		t.Fatalf("no intent record after a kill of a restart without a lock flag: %v", err)
	}

	next, nextLines, nextOut := startFleetrollOut(t, args...)
	said := make(chan string, 1)
	go func() {
		var b strings.Builder
		for l := range nextLines {
			b.WriteString(l + "\n")
		}
		said <- b.String()
	}()
	var back time.Duration
	eventually(t, coord.DefaultLockTTL+20*time.Second, units[1]+" running again", func() error {
		if st := systemd(t, units[1])[0]; !st.Up() {
			return fmt.Errorf("%s is %s/%s", units[1], st.Active, st.Sub)
		}
		back = time.Since(killed)
		return nil
	})
	code := exitCode(t, next)
	out := <-said + nextOut.String()
	if code != 0 {
		t.Fatalf("the next plain restart: exit %d\n%s", code, out)
	}
	if ttl := coord.DefaultLockTTL; back > ttl+10*time.Second {
		t.Errorf("%s running again %s after the kill: more than the lock TTL (%s) + 10 s", units[1], back.Round(time.Millisecond), ttl)
	}
	t.Logf("%s running again %s after the kill (lock TTL %s)", units[1], back.Round(time.Millisecond), coord.DefaultLockTTL)
	if !strings.Contains(out, "recovering rollout "+id) || !strings.Contains(out, "recorded as interrupted") {
		t.Fatalf("the next restart did not recover rollout %s:\n%s", id, out)
	}
	for i, st := range systemd(t, units...) {
		if !st.Up() {
			t.Errorf("%s is %s/%s at the end", units[i], st.Active, st.Sub)
		}
	}
	code, st := fleetroll(t, "status", id)
	var rec fr.Report
	if code != 0 || json.Unmarshal([]byte(st), &rec) != nil || rec.Status != fr.StatusInterrupted || len(rec.Units) != 1 || rec.Units[0].Unit != units[1] {
		t.Fatalf("history of the killed rollout %s: %d\n%s", id, code, st)
	}
}

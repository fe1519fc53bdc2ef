package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	fr "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/cluster"
	client "go.etcd.io/etcd/client/v2"
)

func etcdKAPI(t *testing.T) client.KeysAPI {
	t.Helper()
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{clusterOf(t).EtcdURL}, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return kapi
}

func exitCode(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	defer waiting(t, waitFleetroll, "fleetroll to exit")()
	err := cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode()
}

// drain: the shipped sidekick announces each instance; fleetroll takes the
// instance out before stopping it and waits for it to be back. An observer
// sampling systemd and etcd every 50 ms never sees an announced instance that
// is down, and never fewer than two announced once the roll has started.
func TestDrainNeverAnnouncesADownInstance(t *testing.T) {
	c := needCluster(t)
	ports := []string{"18961", "18962", "18963"}
	units := launchDemo(t, "my-service", ports...)
	launchSidekicks(t, ports...)
	kapi := etcdKAPI(t)
	ctx := context.Background()
	announced := func() (map[string]bool, error) {
		resp, err := kapi.Get(ctx, "/services/my-service", nil)
		if err != nil {
			return nil, err
		}
		m := map[string]bool{}
		for _, n := range resp.Node.Nodes {
			m[filepath.Base(n.Key)] = true
		}
		return m, nil
	}
	eventually(t, time.Minute, "all three announced", func() error {
		m, err := announced()
		if err == nil && len(m) != 3 {
			err = errors.New("not yet")
		}
		return err
	})
	before := systemd(t, units...)

	var mu sync.Mutex
	violations, minAnnounced, samples := 0, 3, 0
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			states, err1 := c.Systemd(ctx, units...)
			keys, err2 := announced()
			if err1 == nil && err2 == nil {
				mu.Lock()
				samples++
				for i, p := range ports {
					if keys[p] && !states[i].Up() {
						violations++
					}
				}
				minAnnounced = min(minAnnounced, len(keys))
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	code, out := fleetroll(t, "restart", "my-service", "--ports", strings.Join(ports, ","), "--endpoint", c.Endpoint,
		"--grace", "0s", "--min-healthy-time", "0s", "--drain", "--drain-delay", "3s", "--lock", "fail", "--health-path", "/healthz",
		"--etcd-endpoints", c.EtcdURL)
	close(stop)
	<-done
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("observer: %d samples, %d violations, at least %d announced", samples, violations, minAnnounced)
	if samples < 50 || violations != 0 || minAnnounced < 2 {
		t.Fatalf("%d samples: %d with a down instance announced; min announced %d\n%s", samples, violations, minAnnounced, out)
	}
	after := systemd(t, units...)
	for i := range units {
		if !after[i].Up() || after[i].MainPID == before[i].MainPID {
			t.Errorf("%s not restarted", units[i])
		}
	}
	if _, err := kapi.Get(ctx, coord.LockKey("my-service"), nil); err == nil {
		t.Error("the lock was not released")
	}
	// The rollout is in the shared history.
	id := strings.Fields(strings.TrimPrefix(out[strings.Index(out, "rollout "):], "rollout "))[0]
	id = strings.TrimSuffix(id, ":")
	code, st := fleetroll(t, "status", "my-service", "--etcd-endpoints", c.EtcdURL)
	if code != 0 {
		t.Fatalf("status: exit %d:\n%s", code, st)
	}
	var line string
	for _, l := range strings.Split(st, "\n") {
		if strings.HasPrefix(l, id+" ") {
			line = l
		}
	}
	if !strings.Contains(line, "succeeded") || !strings.Contains(line, "3/3") || !strings.Contains(line, "cli") {
		t.Fatalf("status does not show rollout %s:\n%s", id, st)
	}
}

func TestHealthGateHaltsOnAnUnhealthyInstance(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-health", "18971", "18972", "18973")
	before := systemd(t, units...)
	code, out := fleetroll(t, "restart", "e2e-health", "--endpoint", c.Endpoint, "--grace", "0s", "--min-healthy-time", "0s",
		"--health-path", "/no-such-page", "--health-timeout", "5s", "--health-interval", "200ms")
	if code != 1 || !strings.Contains(out, "health e2e-health@18971.service") || !strings.Contains(out, "instance not healthy") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	after := systemd(t, units...)
	if !after[0].Up() || after[0].MainPID == before[0].MainPID {
		t.Errorf("the first instance must be restarted and left running: %+v", after[0])
	}
	for i := 1; i < 3; i++ {
		if after[i].MainPID != before[i].MainPID {
			t.Errorf("%s touched", units[i])
		}
	}
}

// A second fleetroll during a roll: with --lock fail it refuses and names the
// holder; with --lock wait it rolls only after the first one is done.
func TestSecondFleetrollRefusesOrWaits(t *testing.T) {
	c := needCluster(t)
	launchDemo(t, "e2e-lock", "18981", "18982")
	args := []string{"restart", "e2e-lock", "--endpoint", c.Endpoint, "--etcd-endpoints", c.EtcdURL, "--grace", "6s", "--min-healthy-time", "0s", "-o", "json"}
	first, lines, firstOut := startFleetrollOut(t, append(args, "--lock", "fail")...)
	var log strings.Builder
	waitLine(t, lines, "e2e-lock@18981.service: running", &log)
	go func() {
		for l := range lines {
			log.WriteString(l + "\n")
		}
	}()

	code, out := fleetroll(t, append(args, "--lock", "fail")...)
	if code != 1 || !strings.Contains(out, "locked: /fleetroll/locks/e2e-lock is held by fleetroll restart e2e-lock on") {
		t.Fatalf("second fleetroll: exit %d:\n%s", code, out)
	}

	waiter, wlines, waiterOut := startFleetrollOut(t, append(args, "--lock", "wait", "--grace", "0s", "--min-healthy-time", "0s")...)
	var wlog strings.Builder
	// It finds the lock held and says it waits: the first one is still
	// rolling (its grace is 6 s).
	waitLine(t, wlines, "waiting for the lock of e2e-lock, held by fleetroll restart e2e-lock on", &wlog)
	for l := range wlines {
		wlog.WriteString(l + "\n")
	}
	if code := exitCode(t, first); code != 0 {
		t.Fatalf("first fleetroll: exit %d:\n%s", code, log.String())
	}
	if code := exitCode(t, waiter); code != 0 {
		t.Fatalf("waiting fleetroll exit %d:\n%s", code, wlog.String())
	}
	// The lock is released when the roll is over, just before the process
	// exits: the reports say when each roll ran, on the same clock.
	var a, b fr.Report
	if err := json.Unmarshal(firstOut.Bytes(), &a); err != nil {
		t.Fatalf("first report: %v\n%s", err, firstOut)
	}
	if err := json.Unmarshal(waiterOut.Bytes(), &b); err != nil {
		t.Fatalf("waiter report: %v\n%s", err, waiterOut)
	}
	if a.Status != fr.StatusSucceeded || b.Status != fr.StatusSucceeded || b.Started.Before(a.Finished) {
		t.Fatalf("the waiting roll started at %s, before the first one finished at %s (results %s, %s)",
			b.Started.Format(time.RFC3339Nano), a.Finished.Format(time.RFC3339Nano), a.Status, b.Status)
	}
}

// etcd lost in the middle of a roll: the lock cannot be kept, so the roll
// halts before the next unit; nothing is left stopped. Without etcd at the
// start, a roll that needs it touches nothing.
func TestEtcdLostMidRoll(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-etcd", "18991", "18992", "18993")
	before := systemd(t, units...)

	code, out := fleetroll(t, "restart", "e2e-etcd", "--endpoint", c.Endpoint, "--drain", "--etcd-endpoints", "http://127.0.0.1:1")
	if code != 1 || !strings.Contains(out, "etcd unreachable, nothing was touched") {
		t.Fatalf("exit %d:\n%s", code, out)
	}

	cmd, lines := startFleetroll(t, "restart", "e2e-etcd", "--endpoint", c.Endpoint, "--etcd-endpoints", c.EtcdURL,
		"--lock", "fail", "--lock-ttl", "2s", "--grace", "10s", "--min-healthy-time", "0s")
	var log strings.Builder
	waitLine(t, lines, units[0]+": running", &log)
	if err := c.Kill("etcd"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Restore(ctx); err != nil {
			t.Fatalf("bring etcd back: %v", err)
		}
	}()
	for l := range lines {
		log.WriteString(l + "\n")
	}
	if code := exitCode(t, cmd); code != 1 || !strings.Contains(log.String(), "halted before "+units[1]) || !strings.Contains(log.String(), "lost") {
		t.Fatalf("exit %d:\n%s", code, log.String())
	}
	after := systemd(t, units...)
	if !after[0].Up() || after[0].MainPID == before[0].MainPID {
		t.Errorf("first unit: %+v", after[0])
	}
	for i := 1; i < 3; i++ {
		if !after[i].Up() || after[i].MainPID != before[i].MainPID {
			t.Errorf("%s: %+v -> %+v", units[i], before[i], after[i])
		}
	}
}

// The fleet API killed while a unit is stopping, and started again by its
// supervisor: the roller retries through the outage and completes. fleetroll
// talks to fleet through a proxy that the test holds shut until fleetroll
// has logged a retry, so the outage cannot fall between two polls.
func TestFleetAPIRestartedMidRoll(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-fleet", "18995", "18996")
	before := systemd(t, units...)
	proxy := startProxy(t, strings.TrimPrefix(c.Endpoint, "http://"))
	cmd, lines := startFleetroll(t, "restart", "e2e-fleet", "--endpoint", "http://"+proxy.Addr(), "--grace", "0s", "--min-healthy-time", "0s",
		"--poll-interval", "200ms", "--log-level", "warn")
	var log strings.Builder
	waitLine(t, lines, units[0]+": stopping", &log)
	// The outage begins once fleet's agent has acted on the stop (a stop
	// request that reaches a fleetd only as it restarts, while its old
	// machine record expires, is not carried out by fleet v1.0.0: that
	// would test fleet, not fleetroll).
	direct, err := fr.Connect(c.Endpoint, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitCurrent(t, direct, units[0], "loaded")
	proxy.Pause()
	// A crash: the cluster's supervisor starts fleetd again, as systemd's
	// Restart=always does for fleet.service.
	if err := c.Kill("fleetd"); err != nil {
		t.Fatal(err)
	}
	waitContains(t, lines, "fleet API error, retrying", &log)
	proxy.Resume()
	rolled(t, cmd, lines, &log, units, before)
}

// rolled reads the rest of a restart's output, expects exit 0, and every
// unit up with a new main PID.
func rolled(t *testing.T, cmd *exec.Cmd, lines <-chan string, log *strings.Builder, units []string, before []cluster.SystemdState) {
	t.Helper()
	rest := waiting(t, waitFleetroll, "the rest of a fleetroll restart")
	for l := range lines {
		log.WriteString(l + "\n")
	}
	rest()
	if code := exitCode(t, cmd); code != 0 {
		t.Fatalf("exit %d:\n%s", code, log.String())
	}
	after := systemd(t, units...)
	for i := range units {
		if !after[i].Up() || after[i].MainPID == before[i].MainPID {
			t.Errorf("%s not restarted: %+v -> %+v", units[i], before[i], after[i])
		}
	}
}

// With --watch, waits wake on fleet's state writes; with etcd cut mid-roll
// (lock and drain off), the roll carries on by polling.
func TestWatchFallsBackToPolling(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-watch", "19101", "19102", "19103")
	before := systemd(t, units...)
	proxy := startProxy(t, strings.TrimPrefix(c.EtcdURL, "http://"))
	cmd, lines := startFleetroll(t, "restart", "e2e-watch", "--endpoint", c.Endpoint, "--watch", "--etcd-endpoints", "http://"+proxy.Addr(),
		"--etcd-timeout", "1s", "--grace", "0s", "--min-healthy-time", "0s", "--log-level", "debug", "--lock", "off")
	var log strings.Builder
	// Woken by a state fleet wrote (the watches work), and the first unit
	// done: then etcd goes.
	woken, first := false, false
	for !woken || !first {
		l, ok := <-lines
		if !ok {
			t.Fatalf("fleetroll ended before etcd was cut:\n%s", log.String())
		}
		log.WriteString(l + "\n")
		woken = woken || strings.Contains(l, "woken by fleet's state")
		first = first || strings.Contains(l, units[0]+": running in")
	}
	proxy.Pause()
	rolled(t, cmd, lines, &log, units, before)
}

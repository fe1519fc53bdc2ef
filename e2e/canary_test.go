package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pausedID reads fleetroll's lines until it says it paused, and returns the
// rollout's ID.
func pausedID(t *testing.T, lines <-chan string, log *strings.Builder) string {
	t.Helper()
	waitContains(t, lines, "paused after its canaries", log)
	all := strings.Split(strings.TrimSpace(log.String()), "\n")
	id, _, _ := strings.Cut(strings.TrimPrefix(all[len(all)-1], "rollout "), " ")
	return id
}

// A restart with --canary 1 pauses after the first instance, with the
// others untouched, until fleetroll promote; then it rolls the others.
func TestCanaryPausesUntilPromoted(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-canary", "19121", "19122", "19123")
	before := systemd(t, units...)
	cmd, lines := startFleetroll(t, "restart", "e2e-canary", "--endpoint", c.Endpoint, "--grace", "0s", "--min-healthy-time", "0s", "--canary", "1",
		"--health-path", "/healthz", "--health-interval", "200ms", "--health-successes", "1", "--etcd-endpoints", c.EtcdURL)
	var log strings.Builder
	id := pausedID(t, lines, &log)
	during := systemd(t, units...)
	if !during[0].Up() || during[0].MainPID == before[0].MainPID {
		t.Fatalf("the canary is not restarted at the pause: %+v -> %+v", before[0], during[0])
	}
	for i := 1; i < 3; i++ {
		if during[i].MainPID != before[i].MainPID {
			t.Fatalf("%s touched before the promotion", units[i])
		}
	}
	if code, out := fleetroll(t, "promote", id, "--etcd-endpoints", c.EtcdURL); code != 0 {
		t.Fatalf("promote: exit %d\n%s", code, out)
	}
	for l := range lines {
		log.WriteString(l + "\n")
	}
	if code := exitCode(t, cmd); code != 0 {
		t.Fatalf("restart: exit %d\n%s", code, log.String())
	}
	after := systemd(t, units...)
	for i, u := range units {
		if !after[i].Up() || after[i].MainPID == before[i].MainPID {
			t.Errorf("%s not restarted: %+v -> %+v", u, before[i], after[i])
		}
	}
	if after[0].MainPID != during[0].MainPID {
		t.Errorf("the canary was restarted twice")
	}
}

// With --canary-wait, a canary that falls ill during the wait aborts the
// rollout when the wait ends: exit code 4, the other instances untouched.
func TestCanaryWaitAbortsOnAnIllCanary(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-canwait", "19131", "19132", "19133")
	ill := filepath.Join(c.Dir, "fail-health-19131")
	t.Cleanup(func() { os.Remove(ill) })
	before := systemd(t, units...)
	cmd, lines := startFleetroll(t, "restart", "e2e-canwait", "--endpoint", c.Endpoint, "--grace", "0s", "--min-healthy-time", "0s", "--canary", "1", "--canary-wait", "3s",
		"--health-path", "/healthz", "--health-interval", "200ms", "--health-successes", "1", "--health-timeout", "2s", "--etcd-endpoints", c.EtcdURL)
	var log strings.Builder
	pausedID(t, lines, &log)
	if err := os.WriteFile(ill, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		log.WriteString(l + "\n")
	}
	out := log.String()
	if code := exitCode(t, cmd); code != 4 || !strings.Contains(out, "abort by canary wait") || !strings.Contains(out, "e2e-canwait@19131.service is not healthy") {
		t.Fatalf("restart: exit %d\n%s", code, out)
	}
	after := systemd(t, units...)
	for i := 1; i < 3; i++ {
		if after[i].MainPID != before[i].MainPID {
			t.Errorf("%s touched after the abort", units[i])
		}
	}
}

// serve with --canary 1: a manual trigger pauses after the first instance,
// POST /rollouts/{id}/promote rolls the others.
func TestCanaryPromotedThroughServesAPI(t *testing.T) {
	c := needCluster(t)
	ports := []string{"19141", "19142", "19143"}
	units := launchDemo(t, "e2e-canapi", ports...)
	before := systemd(t, units...)
	secrets := secretArgs(t)
	base := startServe(t, append(secrets, "--service", "e2e-canapi", "--ports", strings.Join(ports, ","), "--grace", "0s", "--min-healthy-time", "0s",
		"--canary", "1", "--etcd-endpoints", c.EtcdURL)...)
	auth := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + serveToken}
	code, ans := post(t, base+"/rollouts", []byte(`{"service":"e2e-canapi"}`), auth)
	if code != 202 {
		t.Fatalf("trigger: %d %v", code, ans)
	}
	id := ans["id"].(string)
	eventually(t, 2*time.Minute, "the rollout paused", func() error {
		var ro map[string]any
		if err := getJSON(base+"/rollouts/"+id, map[string]string{"Authorization": "Bearer " + serveToken}, &ro); err != nil {
			return err
		}
		if ro["status"] != "paused" {
			return fmt.Errorf("status %v", ro["status"])
		}
		return nil
	})
	during := systemd(t, units...)
	if during[0].MainPID == before[0].MainPID || during[1].MainPID != before[1].MainPID || during[2].MainPID != before[2].MainPID {
		t.Fatalf("at the pause: %+v -> %+v", before, during)
	}
	// fleetroll status --follow, attached during the pause, prints the
	// other units' steps as they happen and ends with the rollout.
	follow, followLines, followOut := startFleetrollOut(t, "status", "--follow", id, "--server", base, "--token-file", secrets[1])
	var followLog strings.Builder
	waitContains(t, followLines, "following rollout "+id+" of e2e-canapi: paused, 1/3 done", &followLog)
	if code, ans := post(t, base+"/rollouts/"+id+"/promote", nil, map[string]string{"Authorization": "Bearer " + serveHubToken}); code != 401 {
		t.Fatalf("promote with the Docker Hub token: %d %v", code, ans)
	}
	if code, ans := post(t, base+"/rollouts/"+id+"/promote", nil, auth); code != 200 || ans["decision"] != "promote" {
		t.Fatalf("promote: %d %v", code, ans)
	}
	for l := range followLines {
		followLog.WriteString(l + "\n")
	}
	if code := exitCode(t, follow); code != 0 || !strings.Contains(followLog.String(), "e2e-canapi@19142.service: stopping") ||
		!strings.Contains(followLog.String(), "e2e-canapi@19143.service: running in") || !strings.Contains(followOut.String(), "succeeded: 3/3 restarted") {
		t.Fatalf("status --follow: exit %d\n%s%s", code, followLog.String(), followOut.String())
	}
	ro := waitStatus(t, base, id)
	canary, _ := ro["canary"].(map[string]any)
	if ro["status"] != "succeeded" || canary == nil || !strings.HasPrefix(canary["by"].(string), "api, request ") {
		t.Fatalf("rollout: %v", ro)
	}
	after := systemd(t, units...)
	for i, u := range units {
		if !after[i].Up() || after[i].MainPID == before[i].MainPID {
			t.Errorf("%s not restarted: %+v -> %+v", u, before[i], after[i])
		}
	}
}

// A receiver killed while its rollout waits after the canary: the receiver
// that takes the rollout over pauses it again at once, for the same canary
// and touching nothing else, and a promotion through its API finishes it.
// Each instance starts once.
func TestCanaryPauseSurvivesATakeover(t *testing.T) {
	c := needCluster(t)
	ports := []string{"19191", "19192", "19193"}
	units := launchDemo(t, "e2e-cantake", ports...)
	args := append(secretArgs(t), "--service", "e2e-cantake", "--ports", strings.Join(ports, ","), "--grace", "0s", "--min-healthy-time", "0s",
		"--canary", "1", "--etcd-endpoints", c.EtcdURL, "--lock", "wait", "--lock-ttl", "6s")
	baseA, cmdA := startServeCmd(t, args...)
	auth := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + serveToken}
	before := make([]int, len(ports))
	for i, p := range ports {
		before[i] = starts(t, p)
	}
	pids := systemd(t, units...)
	code, ans := post(t, baseA+"/rollouts", []byte(`{"service":"e2e-cantake"}`), auth)
	if code != 202 {
		t.Fatalf("trigger: %d %v", code, ans)
	}
	id := ans["id"].(string)
	pausedBy := func(base string, pid int) func() error {
		return func() error {
			var ro map[string]any
			if err := getJSON(base+"/rollouts/"+id, map[string]string{"Authorization": "Bearer " + serveToken}, &ro); err != nil {
				return err
			}
			by, _ := ro["by"].(string)
			if ro["status"] != "paused" || !strings.Contains(by, "(pid "+strconv.Itoa(pid)+")") {
				return fmt.Errorf("status %v by %v", ro["status"], ro["by"])
			}
			return nil
		}
	}
	eventually(t, 2*time.Minute, "the rollout paused by A", pausedBy(baseA, cmdA.Process.Pid))
	_ = cmdA.Process.Kill()
	_ = cmdA.Wait()

	baseB, cmdB := startServeCmd(t, args...)
	eventually(t, 2*time.Minute, "the rollout paused again by B", pausedBy(baseB, cmdB.Process.Pid))
	during := systemd(t, units...)
	if during[0].MainPID == pids[0].MainPID || during[1].MainPID != pids[1].MainPID || during[2].MainPID != pids[2].MainPID {
		t.Fatalf("at the second pause: %+v -> %+v", pids, during)
	}
	if code, ans := post(t, baseB+"/rollouts/"+id+"/promote", nil, auth); code != 200 || ans["decision"] != "promote" {
		t.Fatalf("promote: %d %v", code, ans)
	}
	ro := waitStatus(t, baseB, id)
	canary, _ := ro["canary"].(map[string]any)
	if ro["status"] != "succeeded" || canary == nil || fmt.Sprint(canary["units"]) != "["+units[0]+"]" {
		t.Fatalf("rollout: %v", ro)
	}
	for i, p := range ports {
		if n := starts(t, p) - before[i]; n != 1 {
			t.Errorf("%s started %d times, want once", units[i], n)
		}
	}
	for i, st := range systemd(t, units...) {
		if !st.Up() {
			t.Errorf("%s is %s/%s", units[i], st.Active, st.Sub)
		}
	}
}

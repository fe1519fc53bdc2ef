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

	fr "github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// A release whose instances die 5 s after their start (issue 23), on the
// shipped instance unit with the engine stand-in (contrib/cluster/engine.sh:
// a release is a digest, run as the demo service with the flags the test
// gives that digest). Deployed through serve at the default watch after the
// start with on_failure rollback: only the first instance ever ran it, the
// others never stopped, it is back on the previous release, and the digest
// is quarantined; the same push again is refused (409) and starts nothing;
// once the operator clears it (the release fixed meanwhile), it deploys.
func TestCrashingReleaseIsRolledBackAndQuarantined(t *testing.T) {
	c := needCluster(t)
	const service = "e2e-crash"
	ports := []string{"19481", "19482", "19483"}
	claimUnits(t, service, ports...)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	engineDir := filepath.Join(dir, "engine")
	if err := os.MkdirAll(filepath.Join(engineDir, "args"), 0o755); err != nil {
		t.Fatal(err)
	}
	image := "127.0.0.1:5999/e2e/crash"
	good := strings.Repeat("a1", 32)
	bad := strings.Repeat("b2", 32)
	writeFile(t, filepath.Join(engineDir, "args", bad), "-exit-after 5s\n", 0o644)
	engine := map[string]string{"DOCKER": filepath.Join(repo, "contrib", "cluster", "engine.sh"), "ENGINE_DIR": engineDir, "STATE": c.Dir, "ETCD": c.EtcdURL}
	inst := map[string]string{"IMAGE": image + ":v0", "RUNDIR": filepath.Join(dir, "run"), "NAME": service,
		"RELEASE_KEY": "/fleetroll/releases/" + service + "/current"}
	for k, v := range engine {
		inst[k] = v
	}
	dropIn(t, service+"@.service", inst)
	dropIn(t, "fleetroll-pull@.service", engine)
	var units []string
	for _, p := range ports {
		units = append(units, service+"@"+p+".service")
	}
	t.Cleanup(func() {
		kapi := etcdKAPI(t)
		for _, k := range []string{"/fleetroll/releases/", "/fleetroll/quarantine/"} {
			_, _ = kapi.Delete(context.Background(), k+service, &client.DeleteOptions{Recursive: true})
		}
	})
	submit(t, filepath.Join(repo, "units", "my-service@.service"), units...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, u := range units {
		if err := c.WaitRunning(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	// runs lists, per port, the images the engine ran there.
	runs := func() map[string][]string {
		b, _ := os.ReadFile(filepath.Join(engineDir, "runs"))
		out := map[string][]string{}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if f := strings.Fields(l); len(f) == 3 {
				out[f[1]] = append(out[f[1]], f[2])
			}
		}
		return out
	}

	// The previous release, deployed quickly by the operator.
	code, out := fleetroll(t, "deploy", service, "--ports", strings.Join(ports, ","), "--image", image+"@sha256:"+good,
		"--grace", "0s", "--min-healthy-time", "0s")
	if code != 0 {
		t.Fatalf("the first deploy: exit %d\n%s", code, out)
	}
	before := systemd(t, units...)

	cfg := filepath.Join(dir, "config.yaml")
	writeFile(t, cfg, `services:
  - name: `+service+`
    ports: `+strings.Join(ports, ",")+`
    image: `+image+`
    on_failure: rollback
    grace: 0s
    poll_interval: 200ms
`, 0o644)
	base := startServe(t, append(secretArgs(t), "--config", cfg, "--etcd-endpoints", c.EtcdURL)...)
	auth := map[string]string{"Authorization": "Bearer " + serveToken, "Content-Type": "application/json"}
	push := []byte(`{"service":"` + service + `","image":"` + image + `@sha256:` + bad + `"}`)

	// 1. The crashing release: rolled back at its first instance.
	code, ans := post(t, base+"/rollouts", push, auth)
	if code != 202 {
		t.Fatalf("the push: %d %v", code, ans)
	}
	id := ans["id"].(string)
	ro := waitStatus(t, base, id)
	raw, _ := json.Marshal(ro)
	var rep fr.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Status != fr.StatusRolledBack || len(rep.Units) != 3 {
		t.Fatalf("the crashing release: %s", raw)
	}
	first := rep.Units[0]
	if first.Outcome != fr.OutcomeRolledBack || !strings.Contains(first.Error, "watch "+first.Unit) ||
		!strings.Contains(first.Error, "crashed") || !strings.Contains(first.Error, "after its start") {
		t.Fatalf("the first instance's record does not say how it failed: %+v", first)
	}
	for _, u := range rep.Units[1:] {
		if u.Outcome != fr.OutcomeUntouched {
			t.Errorf("%s: %s, want untouched", u.Unit, u.Outcome)
		}
	}
	// Seen within 5 s of the crash: the crash comes 5 s after the start
	// fleet reported (systemd started it a moment before that).
	var started, seen time.Time
	for _, sp := range first.Phases {
		switch {
		case sp.Phase == fr.PhaseStart && started.IsZero():
			started = sp.Finished
		case sp.Phase == fr.PhaseWatch && seen.IsZero():
			seen = sp.Finished
		}
	}
	if d := seen.Sub(started); d < 3*time.Second || d > 10*time.Second {
		t.Errorf("the crash 5 s after the start was seen %s after the start, want within 5 s of the crash", d)
	}
	ran := runs()
	for i, p := range ports {
		badRuns := 0
		for _, img := range ran[p] {
			if strings.HasSuffix(img, bad) {
				badRuns++
			}
		}
		if want := map[bool]int{true: 1, false: 0}[i == 0]; badRuns != want {
			t.Errorf("instance %s ran the crashing release %d times, want %d (runs: %v)", p, badRuns, want, ran[p])
		}
	}
	after := systemd(t, units...)
	for i := 1; i < len(units); i++ {
		if after[i].MainPID != before[i].MainPID {
			t.Errorf("%s was restarted (%+v -> %+v): only the first instance may be touched", units[i], before[i], after[i])
		}
	}
	if after[0].Active != "active" || !strings.HasSuffix(ran[ports[0]][len(ran[ports[0]])-1], good) {
		t.Errorf("the first instance is not back on the previous release: %+v, runs %v", after[0], ran[ports[0]])
	}

	// 2. Quarantined, with the reason and the rollout.
	code, out = fleetroll(t, "release", "list", service, "-o", "json")
	if code != 0 || !strings.Contains(out, bad) || !strings.Contains(out, id) || !strings.Contains(out, "crashed") {
		t.Fatalf("release list: exit %d\n%s", code, out)
	}

	// 3. The same push again: 409, nothing starts.
	nRuns := len(runs()[ports[0]])
	code, ans = post(t, base+"/rollouts", push, auth)
	if code != 409 || !strings.Contains(fmt.Sprint(ans["error"]), "fleetroll release clear") {
		t.Fatalf("the same push again: %d %v", code, ans)
	}
	now := systemd(t, units...)
	for i := range units {
		if now[i].MainPID != after[i].MainPID {
			t.Errorf("%s was restarted by a refused push", units[i])
		}
	}
	if n := len(runs()[ports[0]]); n != nRuns {
		t.Errorf("a refused push ran the engine (%d runs, was %d)", n, nRuns)
	}

	// 4. The release fixed (what it needed is back), the operator clears
	// it: the same push deploys, every instance runs it.
	if err := os.Remove(filepath.Join(engineDir, "args", bad)); err != nil {
		t.Fatal(err)
	}
	code, out = fleetroll(t, "release", "clear", service, "sha256:"+bad)
	if code != 0 {
		t.Fatalf("release clear: exit %d\n%s", code, out)
	}
	code, ans = post(t, base+"/rollouts", push, auth)
	if code != 202 {
		t.Fatalf("the push after the clear: %d %v", code, ans)
	}
	ro = waitStatus(t, base, ans["id"].(string))
	if ro["status"] != string(fr.StatusSucceeded) {
		t.Fatalf("the push after the clear: %v", ro)
	}
	ran = runs()
	for _, p := range ports {
		if l := ran[p]; len(l) == 0 || !strings.HasSuffix(l[len(l)-1], bad) {
			t.Errorf("instance %s does not run the release after the clear: %v", p, l)
		}
	}
}

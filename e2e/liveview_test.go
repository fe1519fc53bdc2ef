package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	fr "github.com/fleetroll/fleetroll/fleetroll"
)

// One live view whichever receiver one reaches (issue 24). Two receivers
// share one etcd; B runs what A accepts (A waits out a quiet period of 3 s,
// B none). A page logged in on B is used on A; it shows each unit's steps
// of the rollout B runs, live, and so does status --follow against A. B is
// killed in the middle of the roll: A takes it over, and the page and the
// follower say so and show the end. B comes back with a quiet period of a
// minute, so that A runs the next push, which a follower against B shows
// to its end.
func TestOneLiveViewOnEveryReceiver(t *testing.T) {
	c := needCluster(t)
	ports := []string{"19601", "19602", "19603"}
	units := launchDemo(t, "e2e-live", ports...)
	secrets := secretArgs(t)
	common := append(secrets, "--service", "e2e-live", "--ports", strings.Join(ports, ","), "--repository", "demo/my-service",
		"--tag", "latest", "--grace", "0s", "--min-healthy-time", "0s", "--etcd-endpoints", c.EtcdURL,
		"--lock", "wait", "--lock-ttl", "3s", "--poll-interval", "200ms")
	baseA, cmdA := startServeCmd(t, append(common, "--quiet-period", "3s")...)
	baseB, cmdB := startServeCmd(t, append(common, "--quiet-period", "0s")...)
	auth := map[string]string{"Authorization": "Bearer " + serveToken}
	byOf := func(cmd *exec.Cmd) string { return "(pid " + strconv.Itoa(cmd.Process.Pid) + ")" }

	// The page: logged in on B, then opened on A with the same session.
	ctx, console := browserContext(t)
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	step := func(what string, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, timeout)
		defer scancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v; the browser's console: %q", what, err, console.all())
		}
	}
	step("log in on B", time.Minute,
		chromedp.Navigate(baseB+"/"),
		chromedp.WaitVisible(chromedp.CSS("form#login input[name=token]")),
		chromedp.SendKeys(chromedp.ID("token"), serveToken),
		chromedp.Submit(chromedp.ID("token")),
		chromedp.WaitVisible(chromedp.ID("svc-e2e-live")))
	step("the page on A with B's session (no login)", 30*time.Second,
		chromedp.Navigate(baseA+"/"),
		chromedp.WaitVisible(chromedp.ID("svc-e2e-live")))

	push := func(base string, at int64) string {
		t.Helper()
		var payload map[string]any
		if err := json.Unmarshal(fixture(t, "dockerhub-push.json"), &payload); err != nil {
			t.Fatal(err)
		}
		delete(payload, "callback_url")
		payload["push_data"].(map[string]any)["pushed_at"] = at // a push of its own
		b, _ := json.Marshal(payload)
		code, ans := post(t, base+"/webhooks/dockerhub/"+serveHubToken, b, map[string]string{"Content-Type": "application/json"})
		if code != 202 {
			t.Fatalf("push to %s: %d %v", base, code, ans)
		}
		return ans["id"].(string)
	}

	// 1. Accepted by A, run by B; followed on A; B killed mid-roll.
	id := push(baseA, time.Now().UnixNano())
	follow, followLines, followOut := startFleetrollOut(t, "status", "--follow", id, "--server", baseA, "--token-file", secrets[1])
	api, err := c.API()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "the second unit being stopped, by B", func() error {
		var ro fr.Report
		if err := getJSON(baseA+"/rollouts/"+id, auth, &ro); err != nil {
			return err
		}
		if ro.Status.Final() {
			t.Fatalf("the rollout ended before the kill: %+v", ro)
		}
		if ro.By != "" && !strings.Contains(ro.By, byOf(cmdB)) {
			t.Fatalf("run by %q, not B %s: A's quiet period should have left it to B", ro.By, byOf(cmdB))
		}
		u, err := api.Unit(units[1])
		if err != nil || u == nil || u.DesiredState != "loaded" || len(ro.Units) != 3 || ro.Units[0].Outcome != fr.OutcomeRestarted {
			return fmt.Errorf("not yet: %+v", ro.Units)
		}
		return nil
	})
	// The page on A has shown B's steps of the first unit as they came.
	step("B's steps of the first unit on A's page", 30*time.Second,
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#activity li[data-rollout="%s"][data-unit="%s"][data-kind="running"]`, id, units[0]))))
	_ = cmdB.Process.Signal(syscall.SIGKILL)
	_ = cmdB.Wait()

	var log strings.Builder
	for l := range followLines {
		log.WriteString(l + "\n")
	}
	if err := follow.Wait(); err != nil {
		t.Fatalf("status --follow against A: %v\n%s%s", err, log.String(), followOut.String())
	}
	for _, want := range append([]string{"rollout " + id + ": resumed by ", byOf(cmdA)}, units[0]+": running", units[2]+": running") {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the follower on A did not print %q:\n%s", want, log.String())
		}
	}
	if !strings.Contains(followOut.String(), "rollout "+id+" of e2e-live succeeded: 3/3 restarted") {
		t.Fatalf("the follower's summary:\n%s", followOut.String())
	}
	step("the takeover and the end on A's page", time.Minute,
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#activity li[data-rollout="%s"][data-kind="resumed"]`, id))),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#activity li[data-rollout="%s"][data-kind="succeeded"]`, id))))
	// Every unit's steps, B's and A's, as A's page listed them live.
	seen, err := chromedp.Run(ctx, chromedp.Evaluate[[][]string](fmt.Sprintf(
		`[...document.querySelectorAll('#activity li[data-rollout="%s"]')].map(li => [li.dataset.unit, li.dataset.kind])`, id)))
	if err != nil {
		t.Fatal(err)
	}
	for i, u := range units {
		kinds := []string{"stopping", "stopped", "starting", "running"}
		if i == 1 {
			kinds = []string{"stopping", "starting"} // B died in its stop; A brought it back
		}
		for _, kind := range kinds {
			if !slices.ContainsFunc(seen, func(s []string) bool { return len(s) == 2 && s[0] == u && s[1] == kind }) {
				t.Errorf("A's page did not list %s: %s (it listed %v)", u, kind, seen)
			}
		}
	}
	var ro fr.Report
	if err := getJSON(baseA+"/rollouts/"+id, auth, &ro); err != nil {
		t.Fatal(err)
	}
	if ro.Status != fr.StatusSucceeded || ro.Queue == nil || len(ro.Queue.Resumed) != 1 || !strings.Contains(ro.By, byOf(cmdA)) {
		t.Fatalf("the record after the takeover: %+v", ro)
	}

	// 2. B back, leaving the next push to A: accepted and run by A,
	// followed on B.
	baseB, cmdB = startServeCmd(t, append(common, "--quiet-period", "1m")...)
	id = push(baseA, time.Now().UnixNano())
	follow, followLines, followOut = startFleetrollOut(t, "status", "--follow", id, "--server", baseB, "--token-file", secrets[1])
	log.Reset()
	for l := range followLines {
		log.WriteString(l + "\n")
	}
	if err := follow.Wait(); err != nil {
		t.Fatalf("status --follow against B: %v\n%s%s", err, log.String(), followOut.String())
	}
	for _, u := range units {
		if !strings.Contains(log.String(), u+": running") {
			t.Errorf("the follower on B did not print %s's steps:\n%s", u, log.String())
		}
	}
	if err := getJSON(baseB+"/rollouts/"+id, auth, &ro); err != nil {
		t.Fatal(err)
	}
	if ro.Status != fr.StatusSucceeded || !strings.Contains(ro.By, byOf(cmdA)) {
		t.Fatalf("the second rollout, read on B: %+v", ro)
	}
	step("A's rollout on B's page", time.Minute,
		chromedp.Navigate(baseB+"/"),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#svc-e2e-live .history tr[data-id="%s"][data-status="succeeded"]`, id))))
	if errs := console.all(); len(errs) > 0 {
		t.Fatalf("the page logged errors:\n%s", strings.Join(errs, "\n"))
	}
}

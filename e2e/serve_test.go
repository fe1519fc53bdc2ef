package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	fr "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
)

const (
	serveToken    = "e2e-serve-token-0123456789abcdef"
	serveHubToken = "e2e-dockerhub-token-0123456789"
	serveRegToken = "e2e-registry-token-0123456789"
)

// secretArgs writes the API token and the Docker Hub and registry secrets
// to files and returns serve's flags for them.
func secretArgs(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	var args []string
	for _, s := range []struct{ flag, file, v string }{
		{"--token-file", "token", serveToken}, {"--dockerhub-token-file", "dockerhub-token", serveHubToken},
		{"--registry-token-file", "registry-token", serveRegToken}} {
		f := filepath.Join(dir, s.file)
		if err := os.WriteFile(f, []byte(s.v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, s.flag, f)
	}
	return args
}

// fixture reads a sample payload of the hook package's testdata.
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "hook", "testdata", name))
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	return b
}

// startServe runs fleetroll serve and returns its base URL once it listens.
func startServe(t *testing.T, args ...string) string {
	t.Helper()
	base, _ := startServeCmd(t, args...)
	return base
}

// startServeCmd runs fleetroll serve and returns its base URL once it
// listens, and its process. At the end of the test it is stopped with
// SIGINT and must exit 0, unless the test ended it.
func startServeCmd(t *testing.T, args ...string) (string, *exec.Cmd) {
	t.Helper()
	cmd, lines := startFleetroll(t, append([]string{"serve", "--listen", "127.0.0.1:0", "--endpoint", clusterOf(t).Endpoint}, args...)...)
	t.Cleanup(func() {
		if cmd.ProcessState != nil {
			return // the test ended it
		}
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if code := cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("fleetroll serve exited %d on SIGINT: %v", code, err)
			}
		case <-time.After(2 * time.Minute):
			_ = cmd.Process.Kill()
			t.Error("fleetroll serve did not stop on SIGINT")
		}
	})
	listening := waiting(t, waitServe, "fleetroll serve listening")
	defer listening()
	timeout := time.After(time.Minute)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("fleetroll serve ended before listening")
			}
			for _, secret := range []string{serveToken, serveHubToken, serveRegToken} {
				if strings.Contains(l, secret) {
					t.Errorf("a secret was logged: %s", l)
				}
			}
			if _, addr, found := strings.Cut(l, "msg=listening addr="); found {
				addr, _, _ = strings.Cut(addr, " ")
				go func() { // keep draining, checking for the token
					for l := range lines {
						for _, secret := range []string{serveToken, serveHubToken, serveRegToken} {
							if strings.Contains(l, secret) {
								t.Errorf("a secret was logged: %s", l)
							}
						}
					}
				}()
				return "http://" + addr, cmd
			}
		case <-timeout:
			t.Fatal("fleetroll serve did not listen within 1m")
		}
	}
}

func post(t *testing.T, url string, body []byte, headers map[string]string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, m
}

// waitStatus polls the status API until the rollout is final.
func waitStatus(t *testing.T, base, id string) map[string]any {
	t.Helper()
	defer waiting(t, waitServe, "a rollout of serve to its end")()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		req, _ := http.NewRequest("GET", base+"/rollouts/"+id, nil)
		req.Header.Set("Authorization", "Bearer "+serveToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var ro map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&ro)
		resp.Body.Close()
		switch ro["status"] {
		case "succeeded", "failed", "interrupted", "cancelled", "superseded", "aborted", "rolled_back":
			return ro
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout %s not finished: %v", id, ro)
		}
		time.Sleep(500 * time.Millisecond) // polling the status API, as a CI job would
	}
}

func TestServeRollsOnWebhooks(t *testing.T) {
	needCluster(t)
	testStart := time.Now()
	ports := []string{"18941", "18942", "18943"}
	units := launchDemo(t, "e2e-hook", ports...)
	callbacks := make(chan map[string]any, 4)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		callbacks <- m
	}))
	defer receiver.Close()

	base := startServe(t, append(secretArgs(t), "--service", "e2e-hook", "--ports", strings.Join(ports, ","), "--repository", "demo/my-service",
		"--tag", "latest", "--tag", "v1", "--grace", "0s", "--min-healthy-time", "0s", "--callback-allow", receiver.URL)...)

	// A wrong token changes nothing.
	before := systemd(t, units...)
	hub := fixture(t, "dockerhub-push.json")
	var payload map[string]any
	if err := json.Unmarshal(hub, &payload); err != nil {
		t.Fatal(err)
	}
	payload["callback_url"] = receiver.URL + "/u/demo/my-service/hook/e2e/"
	// A push of its own: the receivers of the other tests share the
	// cluster's etcd, where deliveries seen are kept.
	payload["push_data"].(map[string]any)["pushed_at"] = time.Now().UnixNano()
	hub, _ = json.Marshal(payload)
	if code, ans := post(t, base+"/webhooks/dockerhub/wrong-token-0123456789abcd", hub, map[string]string{"Content-Type": "application/json"}); code != 403 {
		t.Fatalf("wrong token: %d %v", code, ans)
	}
	if code, _ := post(t, base+"/webhooks/registry", fixture(t, "registry-push-oci.json"),
		map[string]string{"Content-Type": "application/vnd.docker.distribution.events.v1+json", "Authorization": "Bearer " + serveToken}); code != 401 {
		t.Fatalf("the API token as the registry's: %d", code)
	}

	req, _ := http.NewRequest("GET", base+"/rollouts", nil)
	req.Header.Set("Authorization", "Bearer "+serveToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Rollouts []any `json:"rollouts"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list.Rollouts) != 0 {
		t.Fatalf("wrong tokens queued rollouts: %v", list.Rollouts)
	}
	for i, s := range systemd(t, units...) {
		if s.MainPID != before[i].MainPID {
			t.Fatalf("%s changed after a wrong token: %+v -> %+v", units[i], before[i], s)
		}
	}

	// Docker Hub: 202, every instance restarted, the callback says success.
	code, ans := post(t, base+"/webhooks/dockerhub/"+serveHubToken, hub, map[string]string{"Content-Type": "application/json"})
	if code != 202 {
		t.Fatalf("Docker Hub webhook: %d %v", code, ans)
	}
	if ro := waitStatus(t, base, ans["id"].(string)); ro["status"] != "succeeded" {
		t.Fatalf("rollout: %v", ro)
	}
	select {
	case cb := <-callbacks:
		if cb["state"] != "success" || cb["context"] != "fleetroll" {
			t.Fatalf("callback = %v", cb)
		}
	case <-time.After(time.Minute):
		t.Fatal("no callback")
	}
	mid := systemd(t, units...)
	for i, u := range units {
		if !mid[i].Up() || mid[i].MainPID == before[i].MainPID {
			t.Errorf("%s not restarted by the Docker Hub webhook: %+v -> %+v", u, before[i], mid[i])
		}
	}
	if len(callbacks) != 0 {
		t.Fatal("more than one callback")
	}

	// The registry notification (tag v1) rolls them again.
	code, ans = post(t, base+"/webhooks/registry", fixture(t, "registry-push-oci.json"),
		map[string]string{"Content-Type": "application/vnd.docker.distribution.events.v1+json", "Authorization": "Bearer " + serveRegToken})
	if code != 202 {
		t.Fatalf("registry webhook: %d %v", code, ans)
	}
	ro := waitStatus(t, base, ans["id"].(string))
	if ro["status"] != "succeeded" {
		t.Fatalf("rollout: %v", ro)
	}
	after := systemd(t, units...)
	for i, u := range units {
		if !after[i].Up() || after[i].MainPID == mid[i].MainPID {
			t.Errorf("%s not restarted by the registry webhook: %+v -> %+v", u, mid[i], after[i])
		}
	}
	for _, u := range ro["units"].([]any) {
		if m := u.(map[string]any); m["outcome"] != "restarted" || m["stop_seconds"].(float64) <= 0 {
			t.Errorf("unit progress %v", m)
		}
	}

	// /metrics after the two rollouts: what one alerts on, with values.
	metrics := scrapeMetrics(t, base)
	for sample, ok := range map[string]func(float64) bool{
		`fleetroll_rollout_duration_seconds_count{service="e2e-hook",status="succeeded"}`: func(v float64) bool { return v == 2 },
		`fleetroll_rollout_duration_seconds_sum{service="e2e-hook",status="succeeded"}`:   func(v float64) bool { return v > 0 },
		`fleetroll_last_success_timestamp_seconds{service="e2e-hook"}`:                    func(v float64) bool { return v >= float64(testStart.Unix()) && v <= float64(time.Now().Unix()+1) },
		`fleetroll_rollouts_paused{service="e2e-hook"}`:                                   func(v float64) bool { return v == 0 },
		`fleetroll_rollout_running_seconds{service="e2e-hook"}`:                           func(v float64) bool { return v == 0 },
		`fleetroll_callbacks_failed_total{kind="failed"}`:                                 func(v float64) bool { return v == 0 },
		`fleetroll_callbacks_failed_total{kind="not_allowed"}`:                            func(v float64) bool { return v == 0 },
	} {
		if v, found := metrics[sample]; !found || !ok(v) {
			t.Errorf("/metrics: %s = %v (found %v)", sample, v, found)
		}
	}
	info := false
	for sample, v := range metrics {
		if strings.HasPrefix(sample, "fleetroll_build_info{") && strings.Contains(sample, `goversion="go`) && strings.Contains(sample, `revision="`) && v == 1 {
			info = true
		}
	}
	if !info {
		t.Errorf("/metrics: no fleetroll_build_info{version,revision,goversion} 1")
	}
}

// scrapeMetrics reads serve's /metrics on --listen (with the API token):
// each sample's value by its name and labels.
func scrapeMetrics(t *testing.T, base string) map[string]float64 {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+serveToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, raw)
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(raw), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			out[l[:i]] = v
		}
	}
	return out
}

// One service's settings in serve's configuration, used by fleetroll
// restart --config and by serve's POST /rollouts, give the same rollout:
// the records differ only where they must (ID, times, trigger, who ran
// it): the same units in the same order, outcomes, phases, release and
// strategy (issue 21).
func TestConfigGivesTheCLIAndServeTheSameRollout(t *testing.T) {
	needCluster(t)
	ports := []string{"19341", "19342"}
	launchDemo(t, "same-service", ports...)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte(`services:
  - name: same-service
    ports: 19341-19342
    grace: 1s
    min_healthy_time: 0s
    health: {path: /healthz, interval: 200ms, successes: 2}
    dockerhub:
      - repository: demo/same-service
`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := fleetroll(t, "restart", "same-service", "--config", cfg, "-o", "json")
	if code != 0 {
		t.Fatalf("restart --config: exit %d\n%s", code, out)
	}
	var cli fr.Report
	// The record begins a line of its own: log lines before it may hold
	// a brace (fleet's error bodies).
	i := strings.Index(out, "{\n")
	if i < 0 {
		t.Fatalf("restart -o json: no record\n%s", out)
	}
	if err := json.Unmarshal([]byte(out[i:]), &cli); err != nil {
		t.Fatalf("restart -o json: %v\n%s", err, out)
	}

	base := startServe(t, append(secretArgs(t), "--config", cfg)...)
	code, ans := post(t, base+"/rollouts", []byte(`{"service":"same-service"}`),
		map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + serveToken})
	if code != 202 {
		t.Fatalf("POST /rollouts: %d %v", code, ans)
	}
	waitStatus(t, base, ans["id"].(string))
	var served fr.Report
	if err := getJSON(base+"/rollouts/"+ans["id"].(string), map[string]string{"Authorization": "Bearer " + serveToken}, &served); err != nil {
		t.Fatal(err)
	}
	if a, b := rolloutShape(cli), rolloutShape(served); a != b {
		t.Fatalf("the same settings gave two rollouts:\nrestart --config:\n%s\nserve:\n%s", a, b)
	}
	if cli.Trigger.Source != "cli" || served.Trigger.Source != "manual" || cli.ID == served.ID {
		t.Fatalf("triggers %+v and %+v, IDs %s and %s", cli.Trigger, served.Trigger, cli.ID, served.ID)
	}
	t.Logf("both:\n%s", rolloutShape(cli))
}

// rolloutShape is what two rollouts of the same settings share: status,
// strategy, release and pre-pull, units not launched, and each unit in
// order with its outcome and phases.
func rolloutShape(r fr.Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "status %s, strategy %q, release %v, pull %v, not launched %v\n", r.Status, r.Strategy, r.Release != nil, r.Pull != nil, r.NotLaunched)
	for _, u := range r.Units {
		var phases []string
		for _, p := range u.Phases {
			phases = append(phases, string(p.Phase))
		}
		fmt.Fprintf(&b, "  %s %s [%s]\n", u.Unit, u.Outcome, strings.Join(phases, " "))
	}
	return b.String()
}

// A burst of distinct pushes, 8 at a time, to serve with its queue in etcd
// and the lock (the burst that killed the receiver once: a record put twice
// in its store, then pruned past --history): it stays up, answers every push
// 202 and GET /rollouts 200, keeps one waiting entry in etcd for the
// service, and the last push's rollout runs to its end.
func TestServeSurvivesABurstOfPushes(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-burst", "19371")
	base, cmd := startServeCmd(t, append(secretArgs(t), "--service", "e2e-burst", "--ports", "19371", "--repository", "demo/e2e-burst",
		"--grace", "0s", "--min-healthy-time", "0s", "--quiet-period", "0s", "--history", "5", "--lock", "wait")...)
	var payload map[string]any
	if err := json.Unmarshal(fixture(t, "dockerhub-push.json"), &payload); err != nil {
		t.Fatal(err)
	}
	delete(payload, "callback_url")
	payload["repository"].(map[string]any)["repo_name"] = "demo/e2e-burst"
	const pushes, conns = 250, 8
	stamp := time.Now().UnixNano() // pushes of its own: the receivers share the cluster's etcd
	bodies := make(chan []byte, pushes)
	for i := range pushes {
		payload["push_data"].(map[string]any)["pushed_at"] = stamp + int64(i)
		b, _ := json.Marshal(payload)
		bodies <- b
	}
	close(bodies)
	answers := make(chan string, pushes)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range bodies {
				resp, err := http.Post(base+"/webhooks/dockerhub/"+serveHubToken, "application/json", bytes.NewReader(b))
				if err != nil {
					answers <- "error: " + err.Error()
					continue
				}
				var a struct {
					ID string `json:"id"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&a)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					answers <- fmt.Sprintf("answer %d", resp.StatusCode)
					continue
				}
				answers <- a.ID
			}
		}()
	}
	wg.Wait()
	close(answers)
	ids := map[string]bool{}
	for a := range answers {
		if len(a) != 12 {
			t.Errorf("a push of the burst: %s", a)
			continue
		}
		ids[a] = true
	}
	if t.Failed() {
		t.FailNow()
	}
	_, kapi, err := c.Clients()
	if err != nil {
		t.Fatal(err)
	}
	entries, err := coord.Triggers{KAPI: kapi}.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n := len(entries["e2e-burst"]); n > 2 {
		t.Fatalf("%d queue entries in etcd for the service after the burst, want at most 2 (one running, one waiting)", n)
	}
	// The waiting entry (or the running one) carries the newest push: wait
	// for every rollout of the burst to end.
	for {
		entries, err := coord.Triggers{KAPI: kapi}.List(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(entries["e2e-burst"]) == 0 {
			break
		}
		waitStatus(t, base, entries["e2e-burst"][len(entries["e2e-burst"])-1].Record.ID)
	}
	if cmd.ProcessState != nil {
		t.Fatalf("fleetroll serve exited during the burst: %v", cmd.ProcessState)
	}
	req, _ := http.NewRequest("GET", base+"/rollouts", nil)
	req.Header.Set("Authorization", "Bearer "+serveToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Rollouts []fr.Report `json:"rollouts"`
	}
	err = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || len(list.Rollouts) == 0 {
		t.Fatalf("GET /rollouts after the burst: %d, %d records, %v", resp.StatusCode, len(list.Rollouts), err)
	}
	ran := 0
	for _, r := range list.Rollouts {
		if !ids[r.ID] {
			t.Errorf("GET /rollouts lists %s, which no push of the burst got", r.ID)
		}
		if r.Status == fr.StatusSucceeded {
			ran++
		}
	}
	if ran == 0 {
		t.Fatalf("no rollout of the burst succeeded: %+v", list.Rollouts)
	}
	if s := systemd(t, units...); !s[0].Up() {
		t.Fatalf("%s after the burst: %+v", units[0], s[0])
	}
}

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	fr "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	client "go.etcd.io/etcd/client/v2"
)

// upgradeEngine stands in for the container engine of the shipped
// units/fleetroll@.service: "run ... IMAGE serve ..." runs the binary
// $ENGINE_DIR/bin/TAG (the image's tag names the build), with each path
// under a mount (-v HOST:CONTAINER) turned into the host's, its log
// appended to $ENGINE_DIR/NAME.log. The rest (pull, rm, stop) succeeds at
// once: systemd's SIGTERM after ExecStop is the receiver's graceful
// shutdown, as docker stop's would be.
const upgradeEngine = `#!/bin/sh
set -eu
dir=${ENGINE_DIR:?names the engine directory}
case "${1:-}" in
  pull | rm | stop | kill) exit 0 ;;
  run) shift ;;
  *) echo "upgrade engine: $* is not one of pull, rm, stop, kill, run" >&2; exit 2 ;;
esac
name=receiver
mounts=""
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    -v) mounts="$mounts $2"; shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
image=$1
shift
for a do
  shift
  for m in $mounts; do
    host=${m%%:*}; rest=${m#*:}; ctr=${rest%%:*}
    case "$a" in
      "$ctr" | "$ctr"/*) a="$host${a#"$ctr"}" ;;
      "unix://$ctr") a="unix://$host" ;;
    esac
  done
  set -- "$@" "$a"
done
exec "$dir/bin/${image##*:}" "$@" 2>>"$dir/$name.log"
`

// Two receivers on version A, the shipped units/fleetroll@.service run as
// fleet units, share one etcd queue; they are upgraded to version B with
// fleetroll's own CLI as docs/upgrading.md says (the drop-in's image set to
// B, daemon-reload, fleetroll restart of the receivers' service), while a
// push arrives every second, to each receiver in turn. Every push answered
// 202 is in exactly one rollout that ran (its own record, or the supersedes
// of one), none is lost or run twice, and both receivers end on B.
//
// Versions A and B are two builds of this tree stamped with different
// versions (-ldflags -X main.version=...). The receivers are not run in
// containers (two images would cost minutes): the unit runs them through
// an engine stand-in (upgradeEngine), the image's tag naming the binary,
// so the unit's own ExecStart, stop and restart are what is tested.
// The receivers' units are the shipped file under the name e2e-uprecv,
// one per port (e2e-uprecv@19565, @19566), both on the test's one machine.
func TestUpgradeReceiversLosesNoPush(t *testing.T) {
	c := needCluster(t)
	const service, receivers = "e2e-upgrade", "e2e-uprecv"
	ports := []string{"19561", "19562", "19563"}
	recvPorts := []string{"19565", "19566"}
	claimUnits(t, receivers, recvPorts...)
	launchDemo(t, service, ports...)
	// Records of this test's service from an earlier run (-count) go first.
	kapi := etcdKAPI(t)
	if _, err := kapi.Delete(t.Context(), coord.HistoryPrefix+"/"+service, &client.DeleteOptions{Recursive: true}); err != nil && !client.IsKeyNotFound(err) {
		t.Fatal(err)
	}
	dir := t.TempDir()
	engineDir := filepath.Join(dir, "engine")
	const verA, verB = "e2e-upgrade-A", "e2e-upgrade-B"
	for _, v := range []string{verA, verB} {
		if _, err := runIn(os.Environ(), repo, 5*time.Minute, "go", "build", "-ldflags", "-X main.version="+v,
			"-o", filepath.Join(engineDir, "bin", v), "./cmd/fleetroll"); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(engineDir, "docker"), upgradeEngine, 0o755)

	// The host's /etc/fleetroll: the configuration and the secrets.
	etc := filepath.Join(dir, "etc-fleetroll")
	writeFile(t, filepath.Join(etc, "config.yaml"), `services:
  - name: `+service+`
    ports: `+strings.Join(ports, ",")+`
    grace: 0s
    min_healthy_time: 0s
    dockerhub:
      - repository: demo/`+service+`
        tags: [latest]
`, 0o644)
	writeFile(t, filepath.Join(etc, "token"), serveToken+"\n", 0o600)
	writeFile(t, filepath.Join(etc, "dockerhub-token"), serveHubToken+"\n", 0o600)
	secrets := "--dockerhub-token-file /etc/fleetroll/dockerhub-token"

	// Before: the new build's version, and its check of the configuration
	// and the secrets as the unit gives them.
	binB := filepath.Join(engineDir, "bin", verB)
	if out, err := runIn(os.Environ(), repo, time.Minute, binB, "version"); err != nil || !strings.HasPrefix(out, "fleetroll "+verB+" ") {
		t.Fatalf("version B: %q %v", out, err)
	}
	if _, err := runIn(os.Environ(), repo, time.Minute, binB, "serve", "--check-config", filepath.Join(etc, "config.yaml"),
		"--token-file", filepath.Join(etc, "token"), "--dockerhub-token-file", filepath.Join(etc, "dockerhub-token")); err != nil {
		t.Fatalf("serve --check-config of B: %v", err)
	}

	// The site's drop-in, on version A; the receivers' units submitted.
	site := func(version string) map[string]string {
		return map[string]string{"DOCKER": filepath.Join(engineDir, "docker"), "ENGINE_DIR": engineDir, "IMAGE": "e2e/fleetroll:" + version,
			"ETC": etc, "ETCD_ENDPOINTS": c.EtcdURL, "FLEET_SOCKET": filepath.Join(c.Dir, "fleet.sock"), "LISTEN": "127.0.0.1:%i",
			"STOP_TIMEOUT": "30", "SECRET_ARGS": secrets,
			"SERVE_ARGS": "--quiet-period 200ms --poll-interval 200ms --lock-ttl 6s --callback-shutdown-timeout 1s"}
	}
	dropIn(t, receivers+"@.service", site(verA))
	var recvUnits, bases []string
	for _, p := range recvPorts {
		recvUnits = append(recvUnits, receivers+"@"+p+".service")
		bases = append(bases, "http://127.0.0.1:"+p)
	}
	submit(t, filepath.Join(repo, "units", "fleetroll@.service"), recvUnits...)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range recvPorts {
				b, _ := os.ReadFile(filepath.Join(engineDir, "fleetroll-"+p+".log"))
				t.Logf("receiver %s's log:\n%s", p, b)
			}
		}
	})
	onVersion := func(want string) func() error {
		return func() error {
			for _, base := range bases {
				var h map[string]any
				if err := getJSON(base+"/healthz", nil, &h); err != nil {
					return fmt.Errorf("%s/healthz: %w", base, err)
				}
				v, err := buildVersion(base)
				if err != nil {
					return err
				}
				if v != want {
					return fmt.Errorf("%s serves version %q", base, v)
				}
			}
			return nil
		}
	}
	eventually(t, time.Minute, "both receivers ready on A", onVersion(verA))

	// A push every second, to each receiver in turn, each with its own
	// pushed_at (the marker of its trigger).
	var hub map[string]any
	if err := json.Unmarshal(fixture(t, "dockerhub-push.json"), &hub); err != nil {
		t.Fatal(err)
	}
	delete(hub, "callback_url")
	hub["repository"].(map[string]any)["repo_name"] = "demo/" + service
	stamp := time.Now().UnixNano()
	p := &pusher{stop: make(chan struct{}), accepted: map[string]int64{}}
	p.wg.Go(func() { p.run(bases, serveHubToken, hub, stamp) })
	defer p.halt()

	// The upgrade, as docs/upgrading.md says: B in the drop-in of every
	// machine, daemon-reload, then fleetroll restart of the receivers (one
	// at a time; each drains into etcd as it stops). Grace and watch 0 s,
	// and a stop timeout above the unit's STOP_TIMEOUT, for the test.
	eventually(t, 30*time.Second, "two pushes accepted on A", func() error {
		if n := p.acceptedCount(); n < 2 {
			return fmt.Errorf("%d accepted", n)
		}
		return nil
	})
	dropIn(t, receivers+"@.service", site(verB))
	if _, err := runIn(c.Env(), repo, time.Minute, "systemctl", "--user", "daemon-reload"); err != nil {
		t.Fatal(err)
	}
	upgradeStart := time.Now()
	code, out := fleetroll(t, "restart", receivers, "--stop-timeout", "1m", "--grace", "0s", "--min-healthy-time", "0s")
	if code != 0 {
		t.Fatalf("fleetroll restart %s: exit %d\n%s", receivers, code, out)
	}
	t.Logf("the receivers restarted on B in %s", time.Since(upgradeStart).Round(time.Millisecond))
	eventually(t, time.Minute, "both receivers ready on B", onVersion(verB))
	// Pushes to B, then the pusher stops.
	upgraded := p.acceptedCount()
	eventually(t, 30*time.Second, "two pushes accepted on B", func() error {
		if n := p.acceptedCount(); n < upgraded+2 {
			return fmt.Errorf("%d accepted after the upgrade", n-upgraded)
		}
		return nil
	})
	p.halt()

	// Every accepted push is in exactly one rollout that ran.
	eventually(t, 2*time.Minute, "the queue in etcd empty", func() error {
		entries, err := coord.Triggers{KAPI: kapi}.List(t.Context())
		if err != nil {
			return err
		}
		if n := len(entries[service]); n > 0 {
			return fmt.Errorf("%d entries", n)
		}
		return nil
	})
	recs, err := coord.History{KAPI: kapi}.List(t.Context(), service)
	if err != nil {
		t.Fatal(err)
	}
	in := map[string][]string{} // push's rollout: the records that ran it
	ran, resumed, handedOn, dropped := 0, 0, 0, 0
	for _, r := range recs {
		if r.Queue != nil && r.Queue.SupersededBy != "" && (r.Status == fr.StatusSuperseded || r.Status == fr.StatusInterrupted) {
			if r.Status == fr.StatusInterrupted {
				handedOn++ // stopped by its receiver's shutdown, then superseded
			}
			continue // in its superseder's record
		}
		if r.Status != fr.StatusSucceeded || r.Started.IsZero() {
			t.Errorf("rollout %s: %s (%s)", r.ID, r.Status, r.Error)
			continue
		}
		ran++
		in[r.ID] = append(in[r.ID], r.ID)
		t.Logf("rollout %s ran %s to %s, by %s; %s", r.ID, r.Started.Format(time.TimeOnly), r.Finished.Format(time.TimeOnly), r.By, queueSummary(r.Queue))
		if r.Queue != nil {
			// A record names the newest MaxSupersedes rollouts it took the
			// place of and counts the older ones (a bound a sender cannot
			// grow): those are in it too, unnamed.
			dropped += r.Queue.SupersedesDropped
			for _, s := range r.Queue.Supersedes {
				in[s] = append(in[s], r.ID)
			}
			resumed += len(r.Queue.Resumed)
		}
		if want, ok := p.marker(r.ID); ok && r.Trigger.PushedAt != fmt.Sprint(want) {
			t.Errorf("rollout %s carries pushed_at %s, its push had %d", r.ID, r.Trigger.PushedAt, want)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var unnamed []string
	for id, marker := range p.accepted {
		switch n := len(in[id]); {
		case n == 0:
			unnamed = append(unnamed, fmt.Sprintf("push %d (rollout %s)", marker, id))
		case n > 1:
			t.Errorf("push %d (rollout %s) in %d rollouts that ran: %v", marker, id, n, in[id])
		}
	}
	if len(unnamed) != dropped {
		t.Errorf("%d accepted pushes named by no rollout that ran, and %d counted unnamed by them: lost %v", len(unnamed), dropped, unnamed)
	}
	if t.Failed() {
		for _, r := range recs {
			q := fr.QueueInfo{}
			if r.Queue != nil {
				q = *r.Queue
			}
			t.Logf("record %s: %s by %s; superseded by %q; supersedes %v (+%d unnamed); resumed %d time(s)",
				r.ID, r.Status, r.By, q.SupersededBy, q.Supersedes, q.SupersedesDropped, len(q.Resumed))
		}
	}
	t.Logf("%d pushes sent, %d accepted (%d refused or unanswered while a receiver stopped), %d rollouts ran, %d takeovers, %d stopped by a shutdown and superseded, %d superseded past the names a record keeps",
		p.sent, len(p.accepted), p.sent-len(p.accepted), ran, resumed, handedOn, dropped)
}

// queueSummary says what a record's queue holds: the rollouts it
// superseded and the takeovers.
func queueSummary(q *fr.QueueInfo) string {
	if q == nil {
		return "no queue"
	}
	return fmt.Sprintf("superseded %d, taken over %d time(s)", len(q.Supersedes), len(q.Resumed))
}

// buildVersion is the version in a receiver's fleetroll_build_info.
func buildVersion(base string) (string, error) {
	req, _ := http.NewRequest("GET", base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+serveToken)
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s/metrics: %s", base, resp.Status)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(l, "fleetroll_build_info{"); ok {
			for _, label := range strings.Split(rest, ",") {
				if v, ok := strings.CutPrefix(label, `version="`); ok {
					v, _, _ = strings.Cut(v, `"`)
					return v, nil
				}
			}
		}
	}
	return "", fmt.Errorf("%s/metrics: no fleetroll_build_info", base)
}

// pusher sends a Docker Hub push every second to each receiver in turn
// and keeps the rollout ID of each accepted one with its marker.
type pusher struct {
	stop     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
	mu       sync.Mutex
	sent     int
	accepted map[string]int64 // rollout ID: pushed_at
}

func (p *pusher) run(bases []string, token string, payload map[string]any, stamp int64) {
	hc := &http.Client{Timeout: 5 * time.Second}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		marker := stamp + int64(i)
		payload["push_data"].(map[string]any)["pushed_at"] = marker
		body, _ := json.Marshal(payload)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "POST", bases[i%len(bases)]+"/webhooks/dockerhub/"+token, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		var a struct {
			ID string `json:"id"`
		}
		resp, err := hc.Do(req)
		if err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&a)
			resp.Body.Close()
		}
		cancel()
		p.mu.Lock()
		p.sent++
		if err == nil && resp.StatusCode == http.StatusAccepted {
			p.accepted[a.ID] = marker
		}
		p.mu.Unlock()
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
	}
}

func (p *pusher) acceptedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.accepted)
}

func (p *pusher) marker(id string) (int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m, ok := p.accepted[id]
	return m, ok
}

// halt stops the pusher and waits for its last push to be answered.
func (p *pusher) halt() {
	p.once.Do(func() { close(p.stop) })
	p.wg.Wait()
}

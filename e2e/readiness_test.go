package e2e

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// readyListen is the --metrics-listen of TestHealthzFollowsFleetAndEtcd.
const readyListen = "127.0.0.1:19491"

// probe asks a probe path once, as a load balancer would: its status and
// the names /healthz says are down.
func probe(url string) (int, []string, error) {
	resp, err := (&http.Client{Timeout: time.Second}).Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Down []string `json:"down"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Down, nil
}

// awaitProbe polls /healthz every 100 ms until it answers code with down
// naming want (when set), and returns how long that took; past limit the
// test fails.
func awaitProbe(t *testing.T, limit time.Duration, code int, want string) time.Duration {
	t.Helper()
	defer waiting(t, waitPoll, "/healthz "+http.StatusText(code))()
	t0 := time.Now()
	for {
		got, down, err := probe("http://" + readyListen + "/healthz")
		if err == nil && got == code && (want == "" || slices.Contains(down, want)) {
			return time.Since(t0)
		}
		if time.Since(t0) > limit {
			t.Fatalf("/healthz not %d (down %q) within %s: %d %v %v", code, want, limit, got, down, err)
		}
		if lc, _, err := probe("http://" + readyListen + "/livez"); err != nil || lc != http.StatusOK {
			t.Fatalf("/livez: %d %v", lc, err)
		}
		time.Sleep(100 * time.Millisecond) // a probe's period: /healthz has no change notification
	}
}

// /healthz is readiness: it turns 503, naming fleet, within 5 s of fleet's
// API going away for the receiver (a proxy in between that refuses), and
// 200 again once it is back; the same for etcd. /livez answers 200
// throughout: the process is alive.
func TestHealthzFollowsFleetAndEtcd(t *testing.T) {
	c := needCluster(t)
	claim(t, "port 19491")
	fleetProxy := startProxy(t, strings.TrimPrefix(c.Endpoint, "http://"))
	etcdProxy := startProxy(t, strings.TrimPrefix(c.EtcdURL, "http://"))
	startServe(t, append(secretArgs(t), "--service", "e2e-ready", "--ports", "19492", "--endpoint", "http://"+fleetProxy.Addr(),
		"--etcd-endpoints", "http://"+etcdProxy.Addr(), "--etcd-timeout", "1s", "--metrics-listen", readyListen)...)
	awaitProbe(t, 10*time.Second, http.StatusOK, "")

	fleetProxy.Pause()
	took := awaitProbe(t, 5*time.Second, http.StatusServiceUnavailable, "fleet")
	t.Logf("not ready %s after fleet's API went away", took.Round(time.Millisecond))
	fleetProxy.Resume()
	took = awaitProbe(t, 5*time.Second, http.StatusOK, "")
	t.Logf("ready %s after it came back", took.Round(time.Millisecond))

	etcdProxy.Pause()
	took = awaitProbe(t, 5*time.Second, http.StatusServiceUnavailable, "etcd")
	t.Logf("not ready %s after etcd went away", took.Round(time.Millisecond))
	etcdProxy.Resume()
	awaitProbe(t, 5*time.Second, http.StatusOK, "")
}

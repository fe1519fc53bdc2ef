package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	fr "github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// Two fleetroll serve processes share one etcd (issue 12):
//   - the same delivery sent to both starts one rollout;
//   - the receiver running a push is killed with SIGKILL while the second
//     unit is stopped; the other restores that unit and finishes the push:
//     every instance restarted after the push exactly once, one callback.
func TestReceiverFailover(t *testing.T) {
	c := needCluster(t)
	ports := []string{"19081", "19082", "19083"}
	units := launchDemo(t, "e2e-failover", ports...)
	var mu sync.Mutex
	callbacks := map[string]int{}
	arrived := make(chan string, 10)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		callbacks[r.URL.Path]++
		mu.Unlock()
		arrived <- r.URL.Path
	}))
	defer receiver.Close()
	const ttl = 5 * time.Second
	args := append(secretArgs(t), "--service", "e2e-failover", "--ports", strings.Join(ports, ","), "--repository", "demo/my-service",
		"--tag", "latest", "--grace", "0s", "--min-healthy-time", "0s", "--callback-allow", receiver.URL, "--etcd-endpoints", c.EtcdURL,
		"--lock", "wait", "--lock-ttl", ttl.String(), "--poll-interval", "200ms")
	baseA, cmdA := startServeCmd(t, args...)
	baseB, cmdB := startServeCmd(t, args...)
	procs := map[string]*exec.Cmd{baseA: cmdA, baseB: cmdB}

	hub := fixture(t, "dockerhub-push.json")
	payload := func(pushedAt int, hook string) []byte {
		var p map[string]any
		if err := json.Unmarshal(hub, &p); err != nil {
			t.Fatal(err)
		}
		p["callback_url"] = receiver.URL + "/u/demo/my-service/hook/" + hook + "/"
		p["push_data"].(map[string]any)["pushed_at"] = pushedAt
		b, _ := json.Marshal(p)
		return b
	}
	startsNow := func() []int {
		out := make([]int, len(ports))
		for i, p := range ports {
			out[i] = starts(t, p)
		}
		return out
	}
	checkStarts := func(before []int, what string) {
		t.Helper()
		for i, n := range startsNow() {
			if n-before[i] != 1 {
				t.Errorf("%s: %s started %d times, want once", what, units[i], n-before[i])
			}
		}
		for i, st := range systemd(t, units...) {
			if !st.Up() {
				t.Errorf("%s: %s is %s/%s", what, units[i], st.Active, st.Sub)
			}
		}
	}
	hubHeaders := map[string]string{"Content-Type": "application/json"}
	now := int(time.Now().Unix())

	// 1. One push, two receivers: one rollout.
	before := startsNow()
	body := payload(now, "one")
	type answer struct {
		code int
		ans  map[string]any
	}
	answers := make(chan answer, 2)
	for _, base := range []string{baseA, baseB} {
		go func() { // both at once, as a retrying sender behind a load balancer
			resp, err := http.Post(base+"/webhooks/dockerhub/"+serveHubToken, "application/json", bytes.NewReader(body))
			if err != nil {
				answers <- answer{0, map[string]any{"error": err.Error()}}
				return
			}
			defer resp.Body.Close()
			var m map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&m)
			answers <- answer{resp.StatusCode, m}
		}()
	}
	var id string
	var dup int
	for range 2 {
		a := <-answers
		switch {
		case a.code == 202 && id == "":
			id = a.ans["id"].(string)
		case a.code == 200 && a.ans["status"] == "duplicate":
			dup++
		default:
			t.Fatalf("the same delivery to two receivers: %d %v", a.code, a.ans)
		}
	}
	if id == "" || dup != 1 {
		t.Fatalf("one 202 and one duplicate expected (id %q, %d duplicates)", id, dup)
	}
	for _, base := range []string{baseA, baseB} {
		if ro := waitStatus(t, base, id); ro["status"] != "succeeded" {
			t.Fatalf("rollout at %s: %v", base, ro)
		}
	}
	checkStarts(before, "one push, two receivers")
	if p := <-arrived; p != "/u/demo/my-service/hook/one/" {
		t.Fatalf("callback to %s", p)
	}

	// 2. The receiver running a push dies with the second unit stopped.
	api, err := c.API()
	if err != nil {
		t.Fatal(err)
	}
	before = startsNow()
	code, ans := post(t, baseA+"/webhooks/dockerhub/"+serveHubToken, payload(now+1, "two"), hubHeaders)
	if code != 202 {
		t.Fatalf("push to A: %d %v", code, ans)
	}
	id = ans["id"].(string)
	var runner, other string
	eventually(t, 2*time.Minute, "the second unit being stopped", func() error {
		var ro fr.Report
		if err := getJSON(baseB+"/rollouts/"+id, map[string]string{"Authorization": "Bearer " + serveToken}, &ro); err != nil {
			return err
		}
		if ro.Status.Final() {
			t.Fatalf("the rollout ended before the kill: %+v", ro)
		}
		u, err := api.Unit(units[1])
		if err != nil || u == nil || u.DesiredState != "loaded" || len(ro.Units) != 3 || ro.Units[0].Outcome != fr.OutcomeRestarted {
			return fmt.Errorf("not yet: %+v", ro.Units)
		}
		// Its stop requested (fleet's target loaded): it goes down, and
		// nobody alive will start it. Waiting for systemd to report it
		// inactive as well left a window of one poll, which the test could
		// miss.
		for base, cmd := range procs {
			if strings.Contains(ro.By, "(pid "+strconv.Itoa(cmd.Process.Pid)+")") {
				runner = base
			} else {
				other = base
			}
		}
		if runner == "" {
			return fmt.Errorf("no receiver runs it (by %q)", ro.By)
		}
		return nil
	})
	_ = procs[runner].Process.Signal(syscall.SIGKILL)
	_ = procs[runner].Wait()
	killed := time.Now()
	ro := waitStatus(t, other, id)
	if ro["status"] != "succeeded" {
		t.Fatalf("after the kill: %v", ro)
	}
	t.Logf("receiver %s killed with %s being stopped; the other finished the push %s later", runner, units[1], time.Since(killed).Round(time.Millisecond))
	checkStarts(before, "failover")
	var rec fr.Report
	raw, _ := json.Marshal(ro)
	if err := json.Unmarshal(raw, &rec); err != nil || rec.Queue == nil || len(rec.Queue.Resumed) != 1 || len(rec.Units) != 3 {
		t.Fatalf("record of the resumed rollout: %s", raw)
	}
	for _, u := range rec.Units {
		if u.Outcome != fr.OutcomeRestarted {
			t.Errorf("unit %+v", u)
		}
	}
	if p := <-arrived; p != "/u/demo/my-service/hook/two/" {
		t.Fatalf("callback to %s", p)
	}
	// The survivor stops (its outbox drained): still one callback per push.
	_ = procs[other].Process.Signal(syscall.SIGINT)
	_ = procs[other].Wait()
	mu.Lock()
	defer mu.Unlock()
	if callbacks["/u/demo/my-service/hook/one/"] != 1 || callbacks["/u/demo/my-service/hook/two/"] != 1 || len(callbacks) != 2 {
		t.Fatalf("callbacks: %v", callbacks)
	}
}

// A receiver cut off from etcd mid-roll (a TCP proxy between them, paused)
// stops acting on fleet before its lease could have expired; the other
// receiver takes over only after that, and finishes the push. No two
// instances are ever down together, as systemd sees them.
func TestReceiverPartition(t *testing.T) {
	c := needCluster(t)
	ports := []string{"19091", "19092", "19093"}
	units := launchDemo(t, "e2e-partition", ports...)
	// Nothing left of an earlier run on a kept cluster.
	kapi := etcdKAPI(t)
	for _, k := range []string{"/fleetroll/queue/entries/e2e-partition", "/fleetroll/intents/e2e-partition"} {
		_, _ = kapi.Delete(context.Background(), k, &client.DeleteOptions{Recursive: true})
	}
	const ttl = 6 * time.Second
	etcdAddr := strings.TrimPrefix(c.EtcdURL, "http://")
	proxy := startProxy(t, etcdAddr)
	args := append(secretArgs(t), "--service", "e2e-partition", "--ports", strings.Join(ports, ","), "--repository", "demo/my-service",
		"--tag", "latest", "--grace", "0s", "--min-healthy-time", "0s", "--lock", "wait", "--lock-ttl", ttl.String(), "--poll-interval", "200ms", "--etcd-timeout", "1s")
	// Both log at debug level: each write to fleet, as it is sent.
	cmdA, linesA := startFleetroll(t, append([]string{"serve", "--log-level", "debug", "--listen", "127.0.0.1:18095", "--endpoint", c.Endpoint,
		"--etcd-endpoints", "http://" + proxy.Addr()}, args...)...)
	var logA, logB syncLog
	go logA.collect(linesA)
	t.Cleanup(func() {
		_ = cmdA.Process.Kill()
		_ = cmdA.Wait()
		if t.Failed() {
			t.Logf("A's log:\n%s", logA.String())
			t.Logf("B's log:\n%s", logB.String())
		}
	})
	baseA := "http://127.0.0.1:18095"
	eventually(t, time.Minute, "A answering", func() error {
		var h map[string]any
		return getJSON(baseA+"/healthz", nil, &h)
	})
	before := make([]int, len(ports))
	for i, p := range ports {
		before[i] = starts(t, p)
	}
	obs := observe(c, units, ports, 100*time.Millisecond)
	hub := fixture(t, "dockerhub-push.json")
	var p map[string]any
	_ = json.Unmarshal(hub, &p)
	delete(p, "callback_url")
	p["push_data"].(map[string]any)["pushed_at"] = time.Now().Unix()
	body, _ := json.Marshal(p)
	code, ans := post(t, baseA+"/webhooks/dockerhub/"+serveHubToken, body, map[string]string{"Content-Type": "application/json"})
	if code != 202 {
		t.Fatalf("push to A: %d %v", code, ans)
	}
	id := ans["id"].(string)
	api, err := c.API()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "A stopping the second unit", func() error {
		u, err := api.Unit(units[1])
		if err != nil || u == nil || u.DesiredState != "loaded" {
			return fmt.Errorf("%s not being stopped", units[1])
		}
		return nil
	})
	proxy.Pause()
	cut := time.Now()
	// B, with etcd, once A is cut off.
	cmdB, linesB := startFleetroll(t, append([]string{"serve", "--log-level", "debug", "--listen", "127.0.0.1:18096", "--endpoint", c.Endpoint,
		"--etcd-endpoints", c.EtcdURL}, args...)...)
	go logB.collect(linesB)
	t.Cleanup(func() {
		_ = cmdB.Process.Signal(syscall.SIGINT)
		_ = cmdB.Wait()
	})
	eventually(t, time.Minute, "B answering", func() error {
		var h map[string]any
		return getJSON("http://127.0.0.1:18096/healthz", nil, &h)
	})
	ro := waitStatus(t, "http://127.0.0.1:18096", id)
	obs.Stop()
	if ro["status"] != "succeeded" {
		t.Fatalf("after the partition: %v", ro)
	}
	t.Logf("A cut off from etcd mid-roll; B finished the push %s later", time.Since(cut).Round(time.Millisecond))
	// A stops its roll, and its last write to fleet comes within its
	// lease, before B's first. A may still watch the unit it started come
	// up (fleet's agent can miss a write, which only B may then repeat):
	// reading is not acting.
	logA.when(t, "rollout_id="+id, "msg=\"rollout stopped before its end", "msg=\"rollout failed")
	const write = "msg=\"setting target state\""
	lastA, firstB := logA.last(t, write), logB.when(t, write)
	t.Logf("A's last write to fleet %s after the cut; B's first %s after it", lastA.Sub(cut).Round(time.Millisecond), firstB.Sub(cut).Round(time.Millisecond))
	// A's fence closes a third of the lease before it could expire; B
	// writes only once it has expired (a quarter: slack for the logs).
	if gap := firstB.Sub(lastA); gap < ttl/4 {
		t.Errorf("B wrote to fleet at %s, %s after A's last write at %s (want at least %s)", firstB.Format(time.StampMilli), gap, lastA.Format(time.StampMilli), ttl/4)
	}
	if lastA.Sub(cut) >= ttl {
		t.Errorf("A wrote to fleet %s after the cut, past its lease (%s)", lastA.Sub(cut), ttl)
	}
	if len(logA.times(t, "unit="+units[2], []string{write})) > 0 {
		t.Errorf("A wrote %s's target state", units[2])
	}
	obs.mu.Lock()
	maxDown := obs.maxDown
	obs.mu.Unlock()
	if maxDown > 1 {
		t.Errorf("%d instances were down at once", maxDown)
	}
	// The second unit may start twice: A may have started it again after
	// the cut, which it could no longer record, and B restarts what it
	// cannot tell was restarted.
	for i, p := range ports {
		n := starts(t, p) - before[i]
		if n != 1 && (i != 1 || n != 2) {
			t.Errorf("%s started %d times", units[i], n)
		}
		t.Logf("%s started %d time(s)", units[i], n)
	}
	for i, st := range systemd(t, units...) {
		if !st.Up() {
			t.Errorf("%s is %s/%s", units[i], st.Active, st.Sub)
		}
	}
}

// syncLog collects a process's log lines.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) collect(lines <-chan string) {
	for s := range lines {
		l.mu.Lock()
		l.b.WriteString(s + "\n")
		l.mu.Unlock()
	}
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// when is the time of the first log line that contains s and one of
// alternatives (when given).
func (l *syncLog) when(t *testing.T, s string, alternatives ...string) time.Time {
	t.Helper()
	at := l.times(t, s, alternatives)
	if len(at) == 0 {
		t.Fatalf("no log line with %q", s)
	}
	return at[0]
}

// last is the time of the last log line that contains one of alternatives.
func (l *syncLog) last(t *testing.T, alternatives ...string) time.Time {
	t.Helper()
	at := l.times(t, "", alternatives)
	if len(at) == 0 {
		t.Fatalf("no log line with any of %q", alternatives)
	}
	return at[len(at)-1]
}

// times are the times of the log lines that contain s and one of
// alternatives (when given), in order.
func (l *syncLog) times(t *testing.T, s string, alternatives []string) []time.Time {
	t.Helper()
	var out []time.Time
	for _, line := range strings.Split(l.String(), "\n") {
		if !strings.Contains(line, s) {
			continue
		}
		if len(alternatives) > 0 && !slices.ContainsFunc(alternatives, func(a string) bool { return strings.Contains(line, a) }) {
			continue
		}
		v, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			t.Fatalf("no time in %q", line)
		}
		out = append(out, at)
	}
	return out
}

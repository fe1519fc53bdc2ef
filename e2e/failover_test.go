package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	fr "github.com/fleetroll/fleetroll/fleetroll"
)

// Two fleetroll serve processes share one etcd (issue 12):
//   - the same delivery sent to both starts one rollout;
//   - the receiver running a push is killed with SIGKILL while the second
//     unit is stopped; the other restores that unit and finishes the push:
//     every instance restarted after the push exactly once, one callback.
func TestReceiverFailover(t *testing.T) {
	needCluster(t)
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
		"--tag", "latest", "--grace", "0s", "--callback-allow", receiver.URL, "--etcd-endpoints", cl.EtcdURL,
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
	api, err := cl.API()
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
	eventually(t, 2*time.Minute, "the second unit stopped", func() error {
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
		if st := systemd(t, units[1])[0]; st.Active == "active" {
			return fmt.Errorf("%s still %s", units[1], st.Active)
		}
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
	t.Logf("receiver %s killed with %s stopped; the other finished the push %s later", runner, units[1], time.Since(killed).Round(time.Millisecond))
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

package hook

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// waitStatus waits until the rollout's record has the status.
func waitStatus(t *testing.T, env *testEnv, id string, want fleetroll.Status) fleetroll.Report {
	t.Helper()
	auth := map[string]string{"Authorization": "Bearer " + testToken}
	deadline := time.Now().Add(20 * time.Second)
	for {
		changed := env.srv.Store().Changed()
		resp, err := http.DefaultClient.Do(mustRequest(t, "GET", env.http.URL+"/rollouts/"+id, auth))
		if err != nil {
			t.Fatal(err)
		}
		var r fleetroll.Report
		_ = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if r.Status == want {
			return r
		}
		if r.Status.Final() || time.Now().After(deadline) {
			t.Fatalf("rollout %s: %s, want %s: %+v", id, r.Status, want, r)
		}
		select {
		case <-changed:
		case <-time.After(time.Second): // the queue's entry in etcd
		}
	}
}

// A canary rollout of serve pauses after its first instance; the API
// promotes or aborts it, and a newer trigger supersedes it.
func TestCanaryPauseThroughTheAPI(t *testing.T) {
	url, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{url}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	env := newTestEnv(t, func(o *Options) {
		o.Etcd, o.Owner = kapi, "receiver"
		for i := range o.Config.Services {
			o.Config.Services[i].Settings.Canary = 1
		}
	})
	auth := withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken)
	trigger := func() string {
		t.Helper()
		resp, ans := env.do(t, "POST", "/rollouts", []byte(`{"service":"my-service"}`), auth)
		if resp.StatusCode != 202 {
			t.Fatalf("trigger: %d %v", resp.StatusCode, ans)
		}
		return ans["id"].(string)
	}

	id := trigger()
	paused := waitStatus(t, env, id, fleetroll.StatusPaused)
	if paused.Canary == nil || !slices.Equal(paused.Canary.Units, []string{"my-service@8901.service"}) || paused.Units[1].Outcome != fleetroll.OutcomePending {
		t.Fatalf("paused record: %+v", paused)
	}
	for _, c := range []struct {
		path    string
		headers map[string]string
		code    int
	}{
		{"/rollouts/" + id + "/promote", jsonHeaders(), 401},
		{"/rollouts/" + id + "/promote", withHeaders(jsonHeaders(), "Authorization", "Bearer "+testHubToken), 401},
		{"/rollouts/..%2flocks/promote", auth, 400},
		{"/rollouts/000000000000/promote", auth, 404},
	} {
		if resp, ans := env.do(t, "POST", c.path, nil, c.headers); resp.StatusCode != c.code {
			t.Errorf("%s: %d %v, want %d", c.path, resp.StatusCode, ans, c.code)
		}
	}
	// Upper-case hex names the same rollout.
	resp, ans := env.do(t, "POST", "/rollouts/"+strings.ToUpper(id)+"/promote", nil, auth)
	if resp.StatusCode != 200 || ans["decision"] != "promote" || ans["service"] != "my-service" || ans["id"] != id {
		t.Fatalf("promote: %d %v", resp.StatusCode, ans)
	}
	final := waitFinal(t, env, id)
	if final.Status != fleetroll.StatusSucceeded || final.Restarted() != 3 || !strings.HasPrefix(final.Canary.By, "api, request ") {
		t.Fatalf("promoted rollout: %+v %+v", final, final.Canary)
	}

	// A newer trigger during the pause supersedes the paused rollout; the
	// newer one pauses in its turn, and an abort ends it.
	older := trigger()
	waitStatus(t, env, older, fleetroll.StatusPaused)
	newer := trigger()
	if got := waitFinal(t, env, older); got.Status != fleetroll.StatusSuperseded || got.Canary.Kind != fleetroll.DecisionSupersede {
		t.Fatalf("paused rollout after a newer trigger: %+v %+v", got, got.Canary)
	}
	waitStatus(t, env, newer, fleetroll.StatusPaused)
	if resp, ans := env.do(t, "POST", "/rollouts/"+newer+"/abort", nil, auth); resp.StatusCode != 200 {
		t.Fatalf("abort: %d %v", resp.StatusCode, ans)
	}
	if got := waitFinal(t, env, newer); got.Status != fleetroll.StatusAborted || got.Restarted() != 1 || got.Units[2].Outcome != fleetroll.OutcomeUntouched {
		t.Fatalf("aborted rollout: %+v", got)
	}
	if resp, _ := env.do(t, "POST", "/rollouts/"+newer+"/promote", nil, auth); resp.StatusCode != 404 {
		t.Fatalf("a decision after the end: %d", resp.StatusCode)
	}
}

// A blue-green service of serve: the first rollout launches the spare
// ports and retires the configured ones, the next goes back.
func TestBlueGreenServiceSwapsItsPorts(t *testing.T) {
	url, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{url}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig([]byte(`
services:
  - name: my-service
    ports: 8901-8903
    strategy: blue-green
    spare_ports: 8911-8913
    placement_timeout: 10s
`), testBase())
	if err != nil {
		t.Fatal(err)
	}
	env := newTestEnv(t, func(o *Options) { o.Etcd, o.Owner, o.Config = kapi, "receiver", cfg })
	for _, u := range testUnits[:3] {
		env.fleet.Update(u, func(u *fakefleet.Unit) {
			u.Options = []fakefleet.Option{{Section: "Service", Name: "ExecStart", Value: "/bin/demo %i"}}
		})
	}
	auth := withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken)
	for _, want := range [][]string{{"8911", "8912", "8913"}, {"8901", "8902", "8903"}} {
		resp, ans := env.do(t, "POST", "/rollouts", []byte(`{"service":"my-service"}`), auth)
		if resp.StatusCode != 202 {
			t.Fatalf("trigger: %d %v", resp.StatusCode, ans)
		}
		rep := waitFinal(t, env, ans["id"].(string))
		if rep.Status != fleetroll.StatusSucceeded || rep.Strategy != fleetroll.StrategyBlueGreen {
			t.Fatalf("rollout: %+v", rep)
		}
		var launched []string
		for _, u := range rep.Units {
			if u.Outcome == fleetroll.OutcomeLaunched {
				launched = append(launched, u.Unit)
			}
		}
		if len(launched) != 3 || !strings.Contains(launched[0], want[0]) || !strings.Contains(launched[2], want[2]) {
			t.Fatalf("launched %v, want %v", launched, want)
		}
		live, err := coord.Lives{KAPI: kapi}.Get(t.Context(), "my-service")
		if err != nil || live == nil || !slices.Equal(live.Live, want) {
			t.Fatalf("live record %+v %v", live, err)
		}
	}
}

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
		o.Policy.Canary = 1
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
	resp, ans := env.do(t, "POST", "/rollouts/"+id+"/promote", nil, auth)
	if resp.StatusCode != 200 || ans["decision"] != "promote" || ans["service"] != "my-service" {
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

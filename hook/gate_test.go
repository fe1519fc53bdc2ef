package hook

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
)

// withPolicy is withImage with more keys for my-service (tag_policy…).
func withPolicy(t *testing.T, res fleetroll.Resolver, keys string) func(*Options) {
	t.Helper()
	cfg, err := ParseConfig([]byte(strings.Replace(testConfig, "    ports: 8901-8903\n", "    ports: 8901-8903\n    image: "+releaseImage+"\n"+keys, 1)), testBase())
	if err != nil {
		t.Fatal(err)
	}
	kapi := startEtcd(t)
	return func(o *Options) { o.Config, o.Etcd, o.Resolver = cfg, kapi, res }
}

// callbackSink is a Docker Hub callback endpoint that keeps what it got.
type callbackSink struct {
	mu   sync.Mutex
	got  []CallbackResult
	seen chan struct{}
}

func newCallbackSink(t *testing.T) (*callbackSink, string) {
	c := &callbackSink{seen: make(chan struct{}, 10)}
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var res CallbackResult
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &res)
		c.mu.Lock()
		c.got = append(c.got, res)
		c.mu.Unlock()
		c.seen <- struct{}{}
	}))
	return c, srv.URL
}

func (c *callbackSink) next(t *testing.T) CallbackResult {
	t.Helper()
	select {
	case <-c.seen:
	case <-time.After(10 * time.Second):
		t.Fatal("no callback")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got[len(c.got)-1]
}

// withCallbacks allows the callback sink's origin.
func withCallbacks(t *testing.T, origin string, then func(*Options)) func(*Options) {
	return func(o *Options) {
		then(o)
		c, err := NewCallbacker([]string{origin}, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		o.Callbacks = c
	}
}

// queueEmpty checks that nothing is queued or running.
func queueEmpty(t *testing.T, env *testEnv) {
	t.Helper()
	env.waitIdle(t)
	if env.srv.durable != nil {
		if live, err := env.srv.durable.live(t.Context()); err != nil || len(live) != 0 {
			t.Fatalf("the queue in etcd holds %v (%v), want nothing", live, err)
		}
	}
	for _, r := range env.srv.Store().List("") {
		if r.Status != fleetroll.StatusRefused {
			t.Fatalf("a rollout besides the refused ones: %+v", r)
		}
	}
}

// deploys waits until the rollout moved its first unit to the digest (or
// ended) and checks that it did.
func deploys(t *testing.T, env *testEnv, id, digest string) {
	t.Helper()
	rep := waitStore(t, env.srv.Store(), id, func(r fleetroll.Report) bool {
		return r.Status.Final() || len(r.Units) > 0 && r.Units[0].Outcome == fleetroll.OutcomeRestarted
	})
	if rep.Status.Final() && rep.Status != fleetroll.StatusSucceeded || len(rep.Units) == 0 || rep.Units[0].ImageDigest != digest {
		t.Fatalf("rollout %s did not deploy %s: %+v", id, digest, rep)
	}
}

// A push of a quarantined digest is answered 409, naming the reason and
// how to clear it, recorded as refused in the history, and queues nothing;
// after release clear, another push of it deploys.
func TestQuarantinedDigestIsRefused409(t *testing.T) {
	res := &tagResolver{answer: tags(map[string]string{"v1": ociDigest})}
	env := newTestEnv(t, withImage(t, res))
	kapi := env.srv.opt.Etcd
	q := coord.Quarantined{Service: "my-service", Digest: ociDigest, Tag: "v1", Reason: "start my-service@8902.service: unit failed; rolled back",
		Rollout: "0000000000a1", At: time.Now()}
	if err := (coord.Quarantine{KAPI: kapi}).Add(t.Context(), q); err != nil {
		t.Fatal(err)
	}
	resp, ans := env.do(t, "POST", "/webhooks/registry", fixture(t, "registry-push-oci.json"), registryHeaders(testRegToken))
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("%d %v, want 409", resp.StatusCode, ans)
	}
	msg, _ := ans["error"].(string)
	mustContain(t, msg, "is quarantined for my-service since rollout 0000000000a1")
	mustContain(t, msg, "unit failed; rolled back")
	mustContain(t, msg, "fleetroll release clear my-service "+ociDigest)
	if ans["clear"] != "fleetroll release clear my-service "+ociDigest || ans["status"] != "refused" || ans["digest"] != ociDigest {
		t.Fatalf("answer %v", ans)
	}
	id, _ := ans["id"].(string)
	rec, ok, err := coord.History{KAPI: kapi}.Get(t.Context(), id)
	if err != nil || !ok || rec.Status != fleetroll.StatusRefused || rec.Trigger.Source != "registry" || !strings.Contains(rec.Error, "fleetroll release clear") {
		t.Fatalf("history of %q: %+v %v %v", id, rec, ok, err)
	}
	if r, ok := env.srv.Store().Get(id); !ok || r.Status != fleetroll.StatusRefused {
		t.Fatalf("store: %+v", r)
	}
	queueEmpty(t, env)

	// The page's state lists it with the service.
	c := browser(t)
	login(t, c, env.http.URL, testToken)
	_, body := send(t, c, "GET", env.http.URL+"/ui/state", nil, nil)
	var st struct {
		Services []struct {
			Name        string              `json:"name"`
			Quarantined []coord.Quarantined `json:"quarantined"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil || len(st.Services) != 2 || st.Services[0].Name != "my-service" ||
		len(st.Services[0].Quarantined) != 1 || st.Services[0].Quarantined[0].Digest != ociDigest || st.Services[0].Quarantined[0].Rollout != "0000000000a1" ||
		st.Services[1].Quarantined == nil || len(st.Services[1].Quarantined) != 0 {
		t.Fatalf("page state: %v\n%s", err, body)
	}

	if _, err := (coord.Quarantine{KAPI: kapi}).Clear(t.Context(), "my-service", ociDigest); err != nil {
		t.Fatal(err)
	}
	resp, ans = env.do(t, "POST", "/webhooks/registry", fixture(t, "registry-push-no-id.json"), registryHeaders(testRegToken))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("after the clear: %d %v", resp.StatusCode, ans)
	}
	deploys(t, env, ans["id"].(string), ociDigest)
}

// Docker Hub names only a tag: the runner resolves it under the lock and
// refuses a quarantined digest there; the rollout is recorded refused and
// its callback told failure.
func TestQuarantinedTagOfDockerHubIsRefusedByTheRunner(t *testing.T) {
	sink, origin := newCallbackSink(t)
	res := &tagResolver{answer: tags(map[string]string{"latest": ociDigest})}
	env := newTestEnv(t, withCallbacks(t, origin, withImage(t, res)))
	kapi := env.srv.opt.Etcd
	if err := (coord.Quarantine{KAPI: kapi}).Add(t.Context(), coord.Quarantined{Service: "my-service", Digest: ociDigest, Reason: "canaries aborted", Rollout: "0000000000a1"}); err != nil {
		t.Fatal(err)
	}
	before := len(env.fleet.Sets())
	body := bytes.Replace(fixture(t, "dockerhub-push.json"), []byte("https://registry.hub.docker.com"), []byte(origin), 1)
	resp, ans := env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, body, jsonHeaders())
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
	rep := env.waitRollout(t, ans["id"].(string))
	if rep.Status != fleetroll.StatusRefused || !strings.Contains(rep.Error, "fleetroll release clear my-service "+ociDigest) {
		t.Fatalf("record %+v", rep)
	}
	if got := sink.next(t); got.State != "failure" || !strings.Contains(got.Description, "refused") {
		t.Fatalf("callback %+v", got)
	}
	if rec, ok, _ := (coord.History{KAPI: kapi}).Get(t.Context(), rep.ID); !ok || rec.Status != fleetroll.StatusRefused {
		t.Fatalf("history %+v", rec)
	}
	if sets := env.fleet.Sets(); len(sets) != before {
		t.Fatalf("a refused rollout touched fleet: %v", sets[before:])
	}
}

// Under tag_policy minor, a sender's tag older than the current release's
// (or not a version) is refused as it arrives: 409 naming both versions
// and the policy, the record, the Docker Hub callback failure. The
// operator's POST /rollouts of the same tag is not bound by the policy.
func TestTagPolicyRefusesOlderTags409(t *testing.T) {
	sink, origin := newCallbackSink(t)
	res := &tagResolver{answer: tags(map[string]string{"v1": ociDigest, "latest": newerDigest})}
	env := newTestEnv(t, withCallbacks(t, origin, withPolicy(t, res, "    tag_policy: minor\n")))
	kapi := env.srv.opt.Etcd
	cur := fleetroll.Release{Image: releaseImage + "@" + newestDigest, Tag: "v1.2.5", Rollout: "0000000000e0"}
	if err := (coord.ReleaseStore{KAPI: kapi}).Set(t.Context(), "my-service", cur, nil); err != nil {
		t.Fatal(err)
	}
	resp, ans := env.do(t, "POST", "/webhooks/registry", fixture(t, "registry-push-oci.json"), registryHeaders(testRegToken))
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("v1 over v1.2.5: %d %v", resp.StatusCode, ans)
	}
	mustContain(t, ans["error"].(string), "tag v1 is older than the current release's v1.2.5")
	if ans["tag_policy"] != "minor" || ans["current_tag"] != "v1.2.5" || ans["tag"] != "v1" {
		t.Fatalf("answer %v", ans)
	}
	if rec, ok, _ := (coord.History{KAPI: kapi}).Get(t.Context(), ans["id"].(string)); !ok || rec.Status != fleetroll.StatusRefused {
		t.Fatalf("history %+v", rec)
	}

	body := bytes.Replace(fixture(t, "dockerhub-push.json"), []byte("https://registry.hub.docker.com"), []byte(origin), 1)
	resp, ans = env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, body, jsonHeaders())
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("latest under minor: %d %v", resp.StatusCode, ans)
	}
	mustContain(t, ans["error"].(string), `tag "latest" is not a semantic version`)
	if got := sink.next(t); got.State != "failure" {
		t.Fatalf("callback %+v", got)
	}
	queueEmpty(t, env)

	resp, ans = env.do(t, "POST", "/rollouts", []byte(`{"service":"my-service","image":"`+releaseImage+`:v1"}`),
		withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("the operator's POST /rollouts: %d %v", resp.StatusCode, ans)
	}
	deploys(t, env, ans["id"].(string), ociDigest)
}

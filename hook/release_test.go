package hook

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
)

// fakeResolver answers a digest per tag and logs what it was asked.
type fakeResolver struct {
	mu    sync.Mutex
	asked []string
	// digests, when it names a tag, is that tag's digest.
	digests map[string]string
}

func (f *fakeResolver) Resolve(_ context.Context, image, ref string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, image+" "+ref)
	if ref == "missing" {
		return "", fmt.Errorf("resolve %s:%s: MANIFEST_UNKNOWN: manifest unknown", image, ref)
	}
	if d, ok := f.digests[ref]; ok {
		return d, nil
	}
	return fmt.Sprintf("sha256:%064x", len(ref)), nil
}

const releaseImage = "127.0.0.1:15000/demo/my-service"

// Each sender's trigger deploys a release of the configured image: the
// registry's digest as sent (once checked against its tag at ingestion),
// Docker Hub's tag resolved through the registry, a manual image only when
// it is the service's own.
func TestTriggersDeployReleases(t *testing.T) {
	url, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	res := &fakeResolver{digests: map[string]string{"v2s2": "sha256:e1a3355534968ebffb9949db5c0db47e1561b5614c070daffe6328366de36ba2"}}
	env := newTestEnv(t, func(o *Options) {
		cfg, err := ParseConfig([]byte(strings.Replace(testConfig, "    ports: 8901-8903\n", "    ports: 8901-8903\n    image: "+releaseImage+"\n    on_failure: rollback\n", 1)), testBase())
		if err != nil {
			t.Fatal(err)
		}
		o.Config, o.Etcd, o.Resolver = cfg, kapi, res
	})
	store := coord.ReleaseStore{KAPI: kapi}
	current := func() string {
		r, err := store.Current(context.Background(), "my-service")
		if err != nil || r == nil {
			return ""
		}
		return r.Image
	}
	deployed := func(resp202 map[string]any) fleetroll.Report {
		t.Helper()
		id, _ := resp202["id"].(string)
		if id == "" {
			t.Fatalf("no rollout: %v", resp202)
		}
		return env.waitRollout(t, id)
	}

	// The registry sends the digest: checked against its tag as it arrives,
	// then deployed as sent (the runner resolves nothing).
	resp, ans := env.do(t, "POST", "/webhooks/registry", fixture(t, "registry-push-docker-v2s2.json"),
		withHeaders(jsonHeaders(), "Authorization", "Bearer "+testRegToken))
	if resp.StatusCode != 202 {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
	rep := deployed(ans)
	want := releaseImage + "@sha256:e1a3355534968ebffb9949db5c0db47e1561b5614c070daffe6328366de36ba2"
	if rep.Status != fleetroll.StatusSucceeded || current() != want || rep.Release == nil || rep.Release.To.Image != want || rep.Release.To.Tag != "v2s2" {
		t.Fatalf("report %+v release %+v current %s", rep, rep.Release, current())
	}
	if rep.Pull == nil || len(rep.Pull.Machines) != 1 || rep.Units[0].ImageDigest != rep.Release.To.Digest() {
		t.Fatalf("pull %+v units %+v", rep.Pull, rep.Units)
	}
	if strings.Join(res.asked, ",") != releaseImage+" v2s2" {
		t.Fatalf("resolved %v for a push with a digest, want its tag once, at ingestion", res.asked)
	}
	res.mu.Lock()
	res.asked = nil
	res.mu.Unlock()
	// The history has the same record, release included.
	recs, err := coord.History{KAPI: kapi}.List(context.Background(), "my-service")
	if err != nil || len(recs) != 1 || recs[0].Release == nil || recs[0].Release.To.Image != want {
		t.Fatalf("history %+v, %v", recs, err)
	}

	// Docker Hub sends a tag: resolved against the configured image.
	resp, ans = env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, fixture(t, "dockerhub-push.json"), jsonHeaders())
	if resp.StatusCode != 202 {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
	rep = deployed(ans)
	if rep.Status != fleetroll.StatusSucceeded || rep.Release.From.Image != want || !strings.HasPrefix(current(), releaseImage+"@sha256:") || current() == want {
		t.Fatalf("report %+v, current %s", rep, current())
	}
	if strings.Join(res.asked, ",") != releaseImage+" latest" {
		t.Fatalf("resolved %v", res.asked)
	}

	// Manual: the service's own image only.
	auth := withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken)
	for body, code := range map[string]int{
		`{"service":"my-service","image":"127.0.0.1:15000/demo/other:v1"}`:     422,
		`{"service":"other","image":"` + releaseImage + `:v1"}`:                422,
		`{"service":"my-service","image":"` + releaseImage + `:v1;reboot"}`:    400,
		`{"service":"my-service","image":"` + releaseImage + `@sha256:12"}`:    400,
		`{"service":"my-service","image":"docker.io/../../etc/passwd:latest"}`: 400,
	} {
		if resp, ans := env.do(t, "POST", "/rollouts", []byte(body), auth); resp.StatusCode != code {
			t.Errorf("%s: %d %v, want %d", body, resp.StatusCode, ans, code)
		}
	}
	resp, ans = env.do(t, "POST", "/rollouts", []byte(`{"service":"my-service","image":"`+releaseImage+`:v10"}`), auth)
	if resp.StatusCode != 202 {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
	if rep = deployed(ans); rep.Status != fleetroll.StatusSucceeded || rep.Release.To.Tag != "v10" || rep.Trigger.Source != "manual" {
		t.Fatalf("manual deploy %+v", rep)
	}
	// A tag the registry does not have: failed, nothing touched, the
	// release unchanged.
	before, sets := current(), len(env.fleet.Sets())
	_, ans = env.do(t, "POST", "/rollouts", []byte(`{"service":"my-service","image":"`+releaseImage+`:missing"}`), auth)
	rep = deployed(ans)
	if rep.Status != fleetroll.StatusFailed || !strings.Contains(rep.Error, "MANIFEST_UNKNOWN") || current() != before || len(env.fleet.Sets()) != sets {
		t.Fatalf("missing tag: %+v, current %s", rep, current())
	}
	// Without an image, a manual trigger restarts on the current release.
	_, ans = env.do(t, "POST", "/rollouts", []byte(`{"service":"my-service"}`), auth)
	if rep = deployed(ans); rep.Status != fleetroll.StatusSucceeded || rep.Release != nil || current() != before {
		t.Fatalf("restart %+v", rep)
	}
}

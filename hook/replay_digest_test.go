package hook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	client "go.etcd.io/etcd/client/v2"
)

// Issue 22, item 6: a replay is known by what is authenticated (the signed
// body), never by an unsigned header; and a payload that names a digest is
// deployed only when the registry resolves its tag to that digest now.

const (
	ociDigest    = "sha256:5fcf2ba1a907fc22a773e97496c4d28db73138c88da3c1439a08c16ca479b5e5" // registry-push-oci.json, registry-push-no-id.json (tag v1)
	ghDigest     = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" // githubPackageBody
	ghPkgDigest  = "sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0" // github-registry-package.json (tag latest)
	newerDigest  = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	newestDigest = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
)

// tagResolver is a registry behind fleetroll.Resolver: answer decides what
// each question gets. It records the questions, and whether each came with
// a deadline no later than DigestCheckTimeout.
type tagResolver struct {
	mu       sync.Mutex
	asked    []string
	deadline []bool
	answer   func(ctx context.Context, image, tag string) (string, error)
}

func (f *tagResolver) Resolve(ctx context.Context, image, tag string) (string, error) {
	f.mu.Lock()
	f.asked = append(f.asked, image+" "+tag)
	d, ok := ctx.Deadline()
	f.deadline = append(f.deadline, ok && time.Until(d) <= DigestCheckTimeout)
	answer := f.answer
	f.mu.Unlock()
	return answer(ctx, image, tag)
}

func (f *tagResolver) set(answer func(ctx context.Context, image, tag string) (string, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer = answer
}

func (f *tagResolver) questions() ([]string, []bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.asked...), append([]bool(nil), f.deadline...)
}

// tags answers a digest per tag, as a registry would.
func tags(m map[string]string) func(context.Context, string, string) (string, error) {
	return func(_ context.Context, image, tag string) (string, error) {
		if d, ok := m[tag]; ok {
			return d, nil
		}
		return "", fmt.Errorf("resolve %s:%s: MANIFEST_UNKNOWN: manifest unknown", image, tag)
	}
}

// withImage sets the tests' configuration with my-service deploying
// releases of releaseImage (which needs etcd: one of its own, started here)
// and the resolver.
func withImage(t *testing.T, res fleetroll.Resolver) func(*Options) {
	t.Helper()
	cfg, err := ParseConfig([]byte(strings.Replace(testConfig, "    ports: 8901-8903\n", "    ports: 8901-8903\n    image: "+releaseImage+"\n", 1)), testBase())
	if err != nil {
		t.Fatal(err)
	}
	kapi := startEtcd(t)
	return func(o *Options) { o.Config, o.Etcd, o.Resolver = cfg, kapi, res }
}

func startEtcd(t *testing.T) client.KeysAPI {
	t.Helper()
	url, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	return kapi
}

func ghDelivery(body []byte, id string) map[string]string {
	h := githubHeaders(testGHSecret, body, "package")
	if id != "" {
		h["X-GitHub-Delivery"] = id
	}
	return h
}

// nothingQueued fails the test when any rollout was recorded or queued.
func nothingQueued(t *testing.T, env *testEnv) {
	t.Helper()
	env.waitIdle(t) // the durable queue's recovery pass at start-up
	if n := len(env.srv.Store().List("")); n != 0 {
		t.Fatalf("%d rollout(s) recorded, want none", n)
	}
	if env.srv.durable != nil {
		live, err := env.srv.durable.live(context.Background())
		if err != nil || len(live) != 0 {
			t.Fatalf("the queue in etcd holds %v (%v), want nothing", live, err)
		}
	}
}

// One captured signed body, sent again under a new X-GitHub-Delivery (or
// none), starts nothing: the replay key is the body the HMAC covers. With
// the replay window in memory and in etcd.
func TestSignedGitHubBodyUnderANewDeliveryIDStartsNothing(t *testing.T) {
	for _, store := range []string{"memory", "etcd"} {
		t.Run(store, func(t *testing.T) {
			env := newTestEnv(t, func(o *Options) {
				if store == "etcd" {
					o.Etcd = startEtcd(t)
				}
			})
			gh := githubPackageBody("latest")
			resp, ans := env.do(t, "POST", "/webhooks/github", gh, ghDelivery(gh, "72d3162e-cc78-11e3-81ab-4c9367dc0958"))
			if resp.StatusCode != 202 {
				t.Fatalf("first delivery: %d %v", resp.StatusCode, ans)
			}
			id := ans["id"].(string)
			env.waitRollout(t, id)
			for _, again := range []string{"8a4e0c2e-cc78-11e3-81ab-4c9367dc0958", "another", ""} {
				resp, ans := env.do(t, "POST", "/webhooks/github", gh, ghDelivery(gh, again))
				if resp.StatusCode != 200 || ans["status"] != "duplicate" {
					t.Fatalf("the same signed body, X-GitHub-Delivery %q: %d %v, want 200 duplicate", again, resp.StatusCode, ans)
				}
				if ids, _ := ans["rollouts"].([]any); len(ids) != 1 || ids[0] != id {
					t.Fatalf("the replay names %v, want [%s]", ans["rollouts"], id)
				}
			}
			env.waitIdle(t)
			if n := len(env.srv.Store().List("")); n != 1 {
				t.Fatalf("%d rollouts from one signed body, want 1", n)
			}
			// Another push (another body) is another delivery.
			other := bytes.ReplaceAll(gh, []byte(ghDigest), []byte(newerDigest))
			if resp, ans := env.do(t, "POST", "/webhooks/github", other, ghDelivery(other, "")); resp.StatusCode != 202 {
				t.Fatalf("another push: %d %v", resp.StatusCode, ans)
			}
		})
	}
}

// A GitHub delivery without X-GitHub-Delivery is replay-checked too.
func TestGitHubDeliveryWithoutDeliveryIDIsReplayChecked(t *testing.T) {
	env := newTestEnv(t, nil)
	gh := githubPackageBody("latest")
	resp, ans := env.do(t, "POST", "/webhooks/github", gh, ghDelivery(gh, ""))
	if resp.StatusCode != 202 {
		t.Fatalf("first delivery: %d %v", resp.StatusCode, ans)
	}
	id := ans["id"].(string)
	env.waitRollout(t, id)
	resp, ans = env.do(t, "POST", "/webhooks/github", gh, ghDelivery(gh, ""))
	if resp.StatusCode != 200 || ans["status"] != "duplicate" {
		t.Fatalf("the same body again, without X-GitHub-Delivery: %d %v, want 200 duplicate", resp.StatusCode, ans)
	}
	if n := len(env.srv.Store().List("")); n != 1 {
		t.Fatalf("%d rollouts, want 1", n)
	}
}

// A registry envelope whose event has no ID, and a Docker Hub push without
// a push time, are known by their body: sent again, they start nothing.
func TestAuthenticatedBodyWithoutAnIDIsReplayChecked(t *testing.T) {
	env := newTestEnv(t, nil)
	hub := bytes.Replace(fixture(t, "dockerhub-push.json"), []byte(`"pushed_at": 1795835368,`), nil, 1)
	if bytes.Contains(hub, []byte("pushed_at")) {
		t.Fatal("test setup: the Docker Hub body still has a push time")
	}
	for _, c := range []struct {
		name, path string
		body       []byte
		headers    map[string]string
	}{
		{"registry", "/webhooks/registry", fixture(t, "registry-push-no-id.json"), registryHeaders(testRegToken)},
		{"dockerhub", "/webhooks/dockerhub/" + testHubToken, hub, jsonHeaders()},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(env.srv.Store().List(""))
			resp, ans := env.do(t, "POST", c.path, c.body, c.headers)
			if resp.StatusCode != 202 {
				t.Fatalf("first delivery: %d %v", resp.StatusCode, ans)
			}
			env.waitRollout(t, ans["id"].(string))
			resp, ans = env.do(t, "POST", c.path, c.body, c.headers)
			if resp.StatusCode != 200 || ans["status"] != "duplicate" {
				t.Fatalf("the same body again: %d %v, want 200 duplicate", resp.StatusCode, ans)
			}
			if n := len(env.srv.Store().List("")) - before; n != 1 {
				t.Fatalf("%d rollouts, want 1", n)
			}
		})
	}
}

// For a service with an image, a payload naming a digest its tag no longer
// has (a captured push of an older release, sent again) is refused with
// 409 naming the tag and both digests, and nothing is queued. Its retry is
// a duplicate that starts nothing: a registry retries until it gets a 2xx.
func TestPayloadNamingAnOldDigestIsRefused(t *testing.T) {
	ghPkg, ghRegPkg := githubPackageBody("latest"), fixture(t, "github-registry-package.json")
	for _, c := range []struct {
		name, path, tag, old string
		body                 []byte
		headers              map[string]string
	}{
		{"registry", "/webhooks/registry", "v1", ociDigest, fixture(t, "registry-push-oci.json"), registryHeaders(testRegToken)},
		{"github package", "/webhooks/github", "latest", ghDigest, ghPkg, githubHeaders(testGHSecret, ghPkg, "package")},
		{"github registry_package", "/webhooks/github", "latest", ghPkgDigest, ghRegPkg, githubHeaders(testGHSecret, ghRegPkg, "registry_package")},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := &tagResolver{answer: tags(map[string]string{"v1": newerDigest, "latest": newerDigest})}
			env := newTestEnv(t, withImage(t, res))
			headers := c.headers
			resp, ans := env.do(t, "POST", c.path, c.body, headers)
			if resp.StatusCode != 409 {
				t.Fatalf("a payload naming %s for tag %s, which is %s now: %d %v, want 409", c.old, c.tag, newerDigest, resp.StatusCode, ans)
			}
			msg, _ := ans["error"].(string)
			for _, want := range []string{"tag " + c.tag, c.old, newerDigest, "nothing was queued"} {
				mustContain(t, msg, want)
			}
			if ans["tag"] != c.tag || ans["digest"] != c.old || ans["registry_digest"] != newerDigest || ans["service"] != "my-service" {
				t.Fatalf("answer %v", ans)
			}
			nothingQueued(t, env)
			asked, deadline := res.questions()
			if strings.Join(asked, ",") != releaseImage+" "+c.tag || !deadline[0] {
				t.Fatalf("resolver asked %v (deadline %v), want the service's image and the payload's tag once, with a deadline", asked, deadline)
			}
			mustContain(t, env.logs.String(), "trigger refused: the payload's digest is not the tag's digest in the registry")
			// The sender's retry of the refused body: 200, nothing starts.
			resp, ans = env.do(t, "POST", c.path, c.body, headers)
			if resp.StatusCode != 200 || ans["status"] != "duplicate" {
				t.Fatalf("the refused body again: %d %v, want 200 duplicate", resp.StatusCode, ans)
			}
			if ids, _ := ans["rollouts"].([]any); len(ids) != 0 {
				t.Fatalf("the refused body's retry names rollouts %v", ids)
			}
			nothingQueued(t, env)
		})
	}
}

// A registry that cannot be asked gives a clear 502 (it answered an error)
// or 503 (it did not answer in time), never its address; nothing is queued
// and the delivery is not remembered, so the sender's retry is checked anew.
func TestUnreachableRegistryRefusesWith5xx(t *testing.T) {
	res := &tagResolver{}
	env := newTestEnv(t, withImage(t, res))
	body, headers := fixture(t, "registry-push-oci.json"), registryHeaders(testRegToken)
	for _, c := range []struct {
		name string
		code int
		err  error
		want string
	}{
		{"refused", 502, &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 9, 8, 7), Port: 443}, Err: errors.New("connect: connection refused")},
			"the registry could not resolve tag v1 of service my-service"},
		{"timeout", 503, context.DeadlineExceeded, "the registry did not answer within 10s for tag v1 of service my-service"},
	} {
		t.Run(c.name, func(t *testing.T) {
			res.set(func(ctx context.Context, image, tag string) (string, error) {
				if _, ok := ctx.Deadline(); !ok {
					return "", errors.New("test: the resolution has no deadline")
				}
				return "", fmt.Errorf("resolve %s:%s: %w", image, tag, c.err)
			})
			resp, ans := env.do(t, "POST", "/webhooks/registry", body, headers)
			msg, _ := ans["error"].(string)
			if resp.StatusCode != c.code {
				t.Fatalf("%d %v, want %d", resp.StatusCode, ans, c.code)
			}
			mustContain(t, msg, c.want)
			mustContain(t, msg, "nothing was queued")
			if strings.Contains(msg, "10.9.8.7") || strings.Contains(msg, "refused") || strings.Contains(msg, "deadline") {
				t.Fatalf("the answer carries the registry's error: %q", msg)
			}
			nothingQueued(t, env)
		})
	}
	mustContain(t, env.logs.String(), "digest not checked: the registry could not be asked")
	// The registry answers again, with the payload's digest: the retry of
	// the same envelope is accepted.
	res.set(tags(map[string]string{"v1": ociDigest}))
	resp, ans := env.do(t, "POST", "/webhooks/registry", body, headers)
	if resp.StatusCode != 202 {
		t.Fatalf("the retry once the registry answers: %d %v, want 202", resp.StatusCode, ans)
	}
	if asked, deadline := res.questions(); len(asked) != 3 || !deadline[0] || !deadline[1] || !deadline[2] {
		t.Fatalf("resolver asked %v (deadline %v)", asked, deadline)
	}
}

// A service without an image restarts: the payload's digest deploys
// nothing, so the registry is not asked.
func TestDigestOfAServiceWithoutImageIsNotResolved(t *testing.T) {
	res := &tagResolver{answer: tags(nil)}
	env := newTestEnv(t, func(o *Options) { o.Resolver = res })
	resp, ans := env.do(t, "POST", "/webhooks/registry", fixture(t, "registry-push-oci.json"), registryHeaders(testRegToken))
	if resp.StatusCode != 202 {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
	if asked, _ := res.questions(); len(asked) != 0 {
		t.Fatalf("resolved %v for a service without an image", asked)
	}
}

// The decision when a later push moves the tag after a push's digest was
// checked: the rollout deploys the digest that was checked (pinned), and
// the runner does not resolve the tag again; the later push's own delivery
// is checked in turn and deploys its digest.
func TestCheckedDigestIsWhatTheRolloutDeploys(t *testing.T) {
	res := &tagResolver{}
	var once sync.Once
	res.set(func(context.Context, string, string) (string, error) {
		d := newestDigest
		once.Do(func() { d = ghDigest }) // the tag moves right after the check
		return d, nil
	})
	env := newTestEnv(t, withImage(t, res))
	gh := githubPackageBody("latest")
	resp, ans := env.do(t, "POST", "/webhooks/github", gh, ghDelivery(gh, ""))
	if resp.StatusCode != 202 {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
	rep := env.waitRollout(t, ans["id"].(string))
	if rep.Status != fleetroll.StatusSucceeded || rep.Release == nil || rep.Release.To.Image != releaseImage+"@"+ghDigest {
		t.Fatalf("deployed %+v (%s), want %s@%s", rep.Release, rep.Status, releaseImage, ghDigest)
	}
	if asked, _ := res.questions(); len(asked) != 1 {
		t.Fatalf("resolver asked %v, want once, at ingestion", asked)
	}
	// The push that moved the tag names the digest the registry has now.
	next := bytes.ReplaceAll(gh, []byte(ghDigest), []byte(newestDigest))
	resp, ans = env.do(t, "POST", "/webhooks/github", next, ghDelivery(next, ""))
	if resp.StatusCode != 202 {
		t.Fatalf("the later push: %d %v", resp.StatusCode, ans)
	}
	if rep := env.waitRollout(t, ans["id"].(string)); rep.Release == nil || rep.Release.To.Image != releaseImage+"@"+newestDigest {
		t.Fatalf("the later push deployed %+v", rep.Release)
	}
}

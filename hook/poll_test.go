package hook

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/fleetroll/release"
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	"github.com/fleetroll/fleetroll/internal/clocktest"
)

// pollRegistry answers HEADs of demo/app:latest as registry/distribution
// does (the digest as ETag, 304 to a matching If-None-Match) and tells the
// test of each, with the receiver that asked (X-Test-Receiver).
type pollRegistry struct {
	srv   *httptest.Server
	heads chan string // the asker of each HEAD

	mu      sync.Mutex
	digest  string
	limited string // when set, answer 429 with this Retry-After, once
}

func newPollRegistry(t *testing.T) *pollRegistry {
	t.Helper()
	pr := &pollRegistry{heads: make(chan string, 100), digest: "sha256:" + strings.Repeat("a", 64)}
	pr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/demo/app/manifests/latest" {
			w.WriteHeader(http.StatusOK) // the /v2/ handshake: no auth
			return
		}
		pr.mu.Lock()
		d, limited := pr.digest, pr.limited
		pr.limited = ""
		pr.mu.Unlock()
		pr.heads <- r.Header.Get("X-Test-Receiver")
		if limited != "" {
			w.Header().Set("Retry-After", limited)
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.Header().Set("ETag", `"`+d+`"`)
		if r.Header.Get("If-None-Match") == `"`+d+`"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Docker-Content-Digest", d)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(pr.srv.Close)
	return pr
}

func (pr *pollRegistry) image() string {
	return strings.TrimPrefix(pr.srv.URL, "http://") + "/demo/app"
}

func (pr *pollRegistry) set(d string) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.digest = d
}

// Resolve is the intake's digest check: the registry's digest now.
func (pr *pollRegistry) Resolve(context.Context, string, string) (string, error) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.digest, nil
}

// named marks each request with the receiver's name.
type named struct{ name string }

func (n named) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Test-Receiver", n.name)
	return http.DefaultTransport.RoundTrip(r)
}

// pollEnv is a receiver polling pr's demo/app:latest for my-service every
// minute, on a fake clock, with rollouts that only count.
type pollEnv struct {
	*testEnv
	clock *clocktest.Clock
	runs  chan rollout.Request
}

const pollInterval = time.Minute

func startPolling(t *testing.T, rs *receivers, pr *pollRegistry, owner string) *pollEnv {
	t.Helper()
	clock := clocktest.New()
	runs := make(chan rollout.Request, 10)
	cfg, err := ParseConfig([]byte(`services:
  - name: my-service
    ports: "8901"
    image: `+pr.image()+`
    pre_pull: false
    poll: {interval: 1m}
`), testBase())
	if err != nil {
		t.Fatal(err)
	}
	env := newTestEnv(t, func(o *Options) {
		o.Config, o.Fleet, o.Etcd, o.Owner, o.Clock, o.Resolver = cfg, rs.api, rs.kapi, owner, clock, pr
		o.LeaseTTL = 30 * time.Second
		o.Registry = &release.Registry{Transport: named{owner}}
		o.Run = func(_ context.Context, req rollout.Request) (*fleetroll.Report, error) {
			runs <- req
			return &fleetroll.Report{Status: fleetroll.StatusSucceeded}, nil
		}
	})
	return &pollEnv{testEnv: env, clock: clock, runs: runs}
}

// head waits for the next HEAD and returns who asked.
func (pr *pollRegistry) head(t *testing.T) string {
	t.Helper()
	select {
	case who := <-pr.heads:
		return who
	case <-time.After(10 * time.Second):
		t.Fatal("no HEAD of the tag")
		return ""
	}
}

// noHead checks that no HEAD came (call it while the poller waits on its
// fake-clock timer: it cannot ask before the test advances the clock).
func (pr *pollRegistry) noHead(t *testing.T) {
	t.Helper()
	select {
	case who := <-pr.heads:
		t.Fatalf("an extra HEAD, from %q", who)
	default:
	}
}

// nextPoll waits until the poller armed its timer due d from now.
func (e *pollEnv) nextPoll(t *testing.T, made int, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if !e.clock.WaitTimerAt(ctx, made, e.clock.Now().Add(d)) {
		t.Fatalf("the poller armed no timer due in %s", d)
	}
}

func setRelease(t *testing.T, rs *receivers, image, digest string) {
	t.Helper()
	store := coord.ReleaseStore{KAPI: rs.kapi}
	cur, err := store.Current(t.Context(), "my-service")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Set(t.Context(), "my-service", fleetroll.Release{Image: image + "@" + digest, Tag: "latest", Created: time.Now()}, cur); err != nil {
		t.Fatal(err)
	}
}

// One HEAD per interval while the tag is unchanged (304 to the ETag); a
// new digest queues one rollout of it, source "poll"; a digest a webhook
// already deployed queues nothing.
func TestPollerOneHeadPerIntervalOneRolloutPerChange(t *testing.T) {
	rs := newReceivers(t)
	pr := newPollRegistry(t)
	a, b, c := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64), "sha256:"+strings.Repeat("c", 64)
	setRelease(t, rs, pr.image(), a) // deployed before
	env := startPolling(t, rs, pr, "receiver A")

	pr.head(t) // at once on taking the lease: a, the current release
	env.nextPoll(t, 0, pollInterval)
	// poll advances the clock by an interval, waits for the HEAD and for
	// the poller to arm its next timer: no HEAD can come in between.
	poll := func() {
		t.Helper()
		pr.noHead(t)
		made := env.clock.Made()
		env.clock.Advance(pollInterval)
		pr.head(t)
		env.nextPoll(t, made, pollInterval)
	}
	for range 3 {
		poll()
	}
	if len(env.runs) != 0 {
		t.Fatalf("the current release was queued again: %+v", <-env.runs)
	}

	pr.set(b) // a push whose notification was lost
	poll()
	select {
	case req := <-env.runs:
		if req.Trigger.Source != "poll" || req.Trigger.Digest != b || req.Trigger.Tag != "latest" || req.Deploy == nil || req.Deploy.Ref != b {
			t.Fatalf("the poll's rollout: trigger %+v, change %+v", req.Trigger, req.Deploy)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the new digest was not rolled out")
	}
	// Unchanged since: no second rollout (the stub deployed nothing, so
	// the current release is still a: only the poller's memory stops it).
	poll()

	// A webhook deployed c before the poll saw it: nothing is queued.
	pr.set(c)
	setRelease(t, rs, pr.image(), c)
	poll()
	pr.noHead(t)
	if len(env.runs) != 0 {
		t.Fatalf("a second rollout: %+v", (<-env.runs).Trigger)
	}
	if es, err := (coord.Triggers{KAPI: rs.kapi}).List(t.Context()); err != nil || len(es["my-service"]) != 0 {
		t.Fatalf("queue entries left: %v %v", es, err)
	}
	mustContain(t, env.logs.String(), "registry poller took the lease")
	mustContain(t, env.logs.String(), `source=poll`)
}

// A 429's Retry-After is honoured: the next HEAD no sooner than asked.
func TestPollerHonoursRetryAfter(t *testing.T) {
	rs := newReceivers(t)
	pr := newPollRegistry(t)
	setRelease(t, rs, pr.image(), "sha256:"+strings.Repeat("a", 64))
	pr.limited = "300"
	env := startPolling(t, rs, pr, "receiver A")
	made := env.clock.Made()
	pr.head(t) // 429, Retry-After: 300
	env.nextPoll(t, made, 300*time.Second)
	env.clock.Advance(299 * time.Second)
	env.nextPoll(t, made, time.Second) // still the same timer, a second away
	pr.noHead(t)
	env.clock.Advance(time.Second)
	pr.head(t)
	mustContain(t, env.logs.String(), "the registry asks to wait (429)")
}

// A registry asking for an absurd wait is waited for MaxPollWait at most:
// it cannot stop the poller for days.
func TestPollerBoundsTheWaitAsked(t *testing.T) {
	rs := newReceivers(t)
	pr := newPollRegistry(t)
	setRelease(t, rs, pr.image(), "sha256:"+strings.Repeat("a", 64))
	pr.limited = "2000000" // 23 days
	env := startPolling(t, rs, pr, "receiver A")
	made := env.clock.Made()
	pr.head(t)
	env.nextPoll(t, made, MaxPollWait)
	env.clock.Advance(MaxPollWait)
	pr.head(t)
}

// Two receivers: one polls, the holder of the lease; when it stops, the
// other takes over.
func TestPollerOnePerServiceAcrossReceivers(t *testing.T) {
	rs := newReceivers(t)
	pr := newPollRegistry(t)
	setRelease(t, rs, pr.image(), "sha256:"+strings.Repeat("a", 64))
	envA := startPolling(t, rs, pr, "receiver A")
	if who := pr.head(t); who != "receiver A" {
		t.Fatalf("first HEAD from %q", who)
	}
	startPolling(t, rs, pr, "receiver B")
	lease := func() string {
		resp, err := rs.kapi.Get(t.Context(), coord.PollerPrefix+"/my-service", nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Node.Value
	}
	envA.nextPoll(t, 0, pollInterval)
	if who := lease(); who != "receiver A" {
		t.Fatalf("the lease is %q's", who)
	}
	pr.noHead(t)
	envA.stop() // releases its lease; its clock never moved: any HEAD now is B's
	if who := pr.head(t); who != "receiver B" {
		t.Fatalf("after A stopped, a HEAD from %q", who)
	}
	if who := lease(); who != "receiver B" {
		t.Fatalf("the lease is %q's", who)
	}
	mustContain(t, envA.logs.String(), "registry poller left the lease")
}

func TestPollBackoff(t *testing.T) {
	for _, c := range []struct {
		interval time.Duration
		fails    int
		want     time.Duration
	}{
		{time.Minute, 1, time.Minute},
		{time.Minute, 2, 2 * time.Minute},
		{time.Minute, 4, 8 * time.Minute},
		{time.Minute, 50, MaxPollBackoff},
		{time.Hour, 3, time.Hour}, // never under the interval
	} {
		if got := pollBackoff(c.interval, c.fails); got != c.want {
			t.Errorf("pollBackoff(%s, %d) = %s, want %s", c.interval, c.fails, got, c.want)
		}
	}
}

func TestCovers(t *testing.T) {
	d, e := "sha256:"+strings.Repeat("d", 64), "sha256:"+strings.Repeat("e", 64)
	for _, c := range []struct {
		t    fleetroll.Trigger
		want bool
	}{
		{fleetroll.Trigger{Source: "registry", Tag: "latest", Digest: d}, true},
		{fleetroll.Trigger{Source: "registry", Tag: "latest", Digest: e}, false},
		{fleetroll.Trigger{Source: "dockerhub", Tag: "latest"}, true}, // resolved as it runs
		{fleetroll.Trigger{Source: "dockerhub", Tag: "v2"}, false},
		{fleetroll.Trigger{Source: "manual"}, false}, // a restart
	} {
		if got := covers(c.t, "latest", d); got != c.want {
			t.Errorf("covers(%+v) = %v, want %v", c.t, got, c.want)
		}
	}
}

func TestPollConfig(t *testing.T) {
	for _, c := range []struct{ yaml, err string }{
		{"    image: example.com/app\n    poll: {interval: 1s}\n", "services[0].poll.interval: 1s is under the minimum of 2s"},
		{"    poll: {interval: 1m}\n", "services[0].poll.interval: polling needs the service's image"},
		{"    image: example.com/app\n    poll: {interval: 1m, tag: 'v*'}\n", `services[0].poll.tag: "v*" is not a tag`},
		{"    image: example.com/app\n    tag_policy: minor\n    poll: {interval: 1m}\n", `services[0].poll.tag: "latest" is no version`},
		{"    image: example.com/app\n    poll: {interval: 1m}\n", ""},
	} {
		cfg, err := ParseConfig([]byte("services:\n  - name: my-service\n"+c.yaml), testBase())
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%q: %v", c.yaml, err)
		case c.err == "" && cfg.Services[0].Poll.Tag != "latest":
			t.Errorf("%q: tag %q, want latest", c.yaml, cfg.Services[0].Poll.Tag)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: %v, want %q", c.yaml, err, c.err)
		}
	}
	// Without etcd, a poller could not be one per service.
	_, err := newTestEnvErr(t, func(o *Options) {
		cfg, _ := ParseConfig([]byte("services:\n  - name: my-service\n    image: example.com/app\n    poll: {interval: 1m}\n"), testBase())
		o.Config = cfg
	})
	if err == nil || !strings.Contains(err.Error(), "needs etcd") {
		t.Errorf("poll without etcd: %v", err)
	}
}

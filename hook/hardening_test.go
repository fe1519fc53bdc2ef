package hook

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/clocktest"
)

// 1. Each sender has its own secret; one without is off, and no two may be
// the same.
func TestEachSenderHasItsOwnSecret(t *testing.T) {
	env := newTestEnv(t, func(o *Options) { o.Secrets = Secrets{API: testToken} })
	hub := fixture(t, "dockerhub-push.json")
	gh := githubPackageBody("latest")
	for _, c := range []struct {
		path    string
		body    []byte
		headers map[string]string
	}{
		{"/webhooks/dockerhub/" + testToken, hub, jsonHeaders()},
		{"/webhooks/registry", fixture(t, "registry-push-oci.json"), registryHeaders(testToken)},
		{"/webhooks/github", gh, githubHeaders(testToken, gh, "package")},
	} {
		if resp, body := env.do(t, "POST", c.path, c.body, c.headers); resp.StatusCode != 404 {
			t.Fatalf("%s with only the API token: %d %v, want 404 (the sender is off)", c.path, resp.StatusCode, body)
		}
	}
	if n := len(env.srv.Store().List("")); n != 0 {
		t.Fatalf("%d rollouts queued", n)
	}
	for _, sender := range []string{"dockerhub", "registry", "github"} {
		mustContain(t, env.logs.String(), "sender disabled: it has no secret of its own; its endpoint answers 404\" sender="+sender)
	}
	for _, sec := range []Secrets{
		{API: testToken, DockerHub: testToken},
		{API: testToken, Registry: testGHSecret, GitHub: testGHSecret},
	} {
		if err := sec.Validate(); err == nil || !strings.Contains(err.Error(), "are the same") {
			t.Fatalf("%+v: %v, want the same secret refused", sec, err)
		}
	}
	if err := (Secrets{DockerHub: testHubToken}).Validate(); err == nil {
		t.Fatal("no API token accepted")
	}
	if err := (Secrets{API: testToken, GitHub: "short"}).Validate(); err == nil || !strings.Contains(err.Error(), "at least 16") {
		t.Fatalf("short secret: %v", err)
	}
}

// 3. Callbacks leave the queue: while a callback endpoint hangs, the next
// rollout of the same service starts and ends.
func TestCallbacksDoNotHoldTheServiceSlot(t *testing.T) {
	release := make(chan struct{})
	var pending, served atomic.Int32
	arrived := make(chan struct{}, 10)
	cbs := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pending.Add(1)
		arrived <- struct{}{}
		<-release
		pending.Add(-1)
		served.Add(1)
	}))
	env := newTestEnv(t, func(o *Options) {
		c, err := NewCallbacker([]string{cbs.URL}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		o.Callbacks = c
	})
	defer close(release)
	push := func(pushedAt string) string {
		body := bytes.Replace(fixture(t, "dockerhub-push.json"), []byte("https://registry.hub.docker.com"), []byte(cbs.URL), 1)
		body = bytes.Replace(body, []byte(`"pushed_at": 1795835368`), []byte(`"pushed_at": `+pushedAt), 1)
		resp, ans := env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, body, jsonHeaders())
		if resp.StatusCode != 202 {
			t.Fatalf("%d %v", resp.StatusCode, ans)
		}
		return ans["id"].(string)
	}
	first := env.waitRollout(t, push("1417566161"))
	<-arrived // its callback hangs
	t0 := time.Now()
	second := env.waitRollout(t, push("1417566999"))
	if first.Status != fleetroll.StatusSucceeded || second.Status != fleetroll.StatusSucceeded {
		t.Fatalf("rollouts %s, %s", first.Status, second.Status)
	}
	if served.Load() != 0 || pending.Load() == 0 {
		t.Fatalf("test setup: the first callback is not hanging (served %d)", served.Load())
	}
	t.Logf("the next rollout of the service ran to its end in %s while the first one's callback hung", time.Since(t0).Round(time.Millisecond))
}

// 5. A delivery received again starts nothing: GitHub's signed body, a
// registry's event IDs, Docker Hub's repository+tag+pushed_at.
func TestReplayedDeliveriesStartNothing(t *testing.T) {
	env := newTestEnv(t, nil)
	gh := githubPackageBody("latest")
	ghHeaders := withHeaders(githubHeaders(testGHSecret, gh, "package"), "X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
	hub := fixture(t, "dockerhub-push.json")
	oci := fixture(t, "registry-push-oci.json")
	for _, c := range []struct {
		name, path string
		body       []byte
		headers    map[string]string
	}{
		{"github", "/webhooks/github", gh, ghHeaders},
		{"dockerhub", "/webhooks/dockerhub/" + testHubToken, hub, jsonHeaders()},
		{"registry", "/webhooks/registry", oci, registryHeaders(testRegToken)},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(env.srv.Store().List(""))
			resp, ans := env.do(t, "POST", c.path, c.body, c.headers)
			if resp.StatusCode != 202 {
				t.Fatalf("first delivery: %d %v", resp.StatusCode, ans)
			}
			id := ans["id"].(string)
			env.waitRollout(t, id) // each replay comes after the rollout ended
			for range 2 {
				resp, again := env.do(t, "POST", c.path, c.body, c.headers)
				if resp.StatusCode != 200 || again["status"] != "duplicate" {
					t.Fatalf("replay: %d %v, want 200 duplicate", resp.StatusCode, again)
				}
				if ids, _ := again["rollouts"].([]any); len(ids) != 1 || ids[0] != id {
					t.Fatalf("replay names %v, want [%s]", again["rollouts"], id)
				}
			}
			if n := len(env.srv.Store().List("")) - before; n != 1 {
				t.Fatalf("%d rollouts from three identical deliveries, want 1", n)
			}
		})
	}
	// X-GitHub-Delivery is not signed: the same signed body under another
	// delivery ID is the same delivery (issue 22, item 6;
	// replay_digest_test.go).
	resp, _ := env.do(t, "POST", "/webhooks/github", gh, withHeaders(ghHeaders, "X-GitHub-Delivery", "another"))
	if resp.StatusCode != 200 {
		t.Fatalf("the same body under a new delivery ID: %d, want 200 duplicate", resp.StatusCode)
	}
}

// 6. From a trusted proxy, an X-Forwarded-For that is missing or does not
// parse tells nothing of the client: denied by the allow-list.
func TestForwardedForThatDoesNotParseIsDenied(t *testing.T) {
	env := newTestEnv(t, func(o *Options) {
		o.AllowFrom = mustPrefixes(t, "127.0.0.1/32", "10.1.2.0/24")
		o.TrustedProxies = mustPrefixes(t, "127.0.0.1/32")
	})
	hdr := map[string]string{"Authorization": "Bearer " + testToken}
	for _, xff := range []string{"", "203.0.113.7:4711", "unknown", "[2001:db8::1]", "a, garbage", "10.1.2.3, garbage", " "} {
		h := hdr
		if xff != "" {
			h = withHeaders(hdr, "X-Forwarded-For", xff)
		}
		if resp, body := env.do(t, "GET", "/rollouts", nil, h); resp.StatusCode != 403 {
			t.Fatalf("X-Forwarded-For %q from a trusted proxy: %d %v, want 403", xff, resp.StatusCode, body)
		}
	}
	if resp, _ := env.do(t, "GET", "/rollouts", nil, withHeaders(hdr, "X-Forwarded-For", "10.1.2.3, 127.0.0.1")); resp.StatusCode != 200 {
		t.Fatalf("a client behind two trusted hops: %d", resp.StatusCode)
	}
}

// 8. Answers to outsiders carry no socket addresses: a body that fails to
// read says so, not why.
func TestAnswersNameNoSocketAddress(t *testing.T) {
	env := newTestEnv(t, nil)
	gh := githubPackageBody("latest")
	req := httptest.NewRequest("POST", "/webhooks/github", io.NopCloser(failingReader{}))
	for k, v := range githubHeaders(testGHSecret, gh, "package") {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	env.srv.Handler().ServeHTTP(rec, req)
	if rec.Code != 400 || strings.Contains(rec.Body.String(), "10.9.8.7") || strings.Contains(rec.Body.String(), "i/o timeout") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) {
	return 0, &net.OpError{Op: "read", Net: "tcp", Source: &net.TCPAddr{IP: net.IPv4(10, 9, 8, 7), Port: 8080},
		Addr: &net.TCPAddr{IP: net.IPv4(10, 9, 8, 8), Port: 51234}, Err: errors.New("i/o timeout")}
}

// 8. /metrics and /healthz can move to a listener of their own.
func TestMetricsOnASeparateListener(t *testing.T) {
	env := newTestEnv(t, func(o *Options) { o.SeparateOps = true })
	for _, path := range []string{"/metrics", "/healthz"} {
		if resp, _ := env.do(t, "GET", path, nil, nil); resp.StatusCode != 404 {
			t.Fatalf("%s on the public listener: %d, want 404", path, resp.StatusCode)
		}
		rec := httptest.NewRecorder()
		env.srv.OpsHandler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 {
			t.Fatalf("%s on the ops listener: %d", path, rec.Code)
		}
	}
}

// The outbox gives up on a hung callback at its own limit on shutdown.
func TestOutboxCloseIsBounded(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	cb, err := NewCallbacker([]string{srv.URL}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	o := NewOutbox(cb, 4, 1, time.Hour, discardLogger())
	if !o.Post("0123456789ab", []string{srv.URL + "/cb"}, CallbackResult{State: "success"}) {
		t.Fatal("post refused")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan bool, 1)
	go func() { done <- o.Close(50 * time.Millisecond) }()
	select {
	case sent := <-done:
		if sent {
			t.Fatal("Close says everything was sent")
		}
	case <-ctx.Done():
		t.Fatal("Close waited past its limit")
	}
	if o.Post("0123456789ab", []string{srv.URL + "/cb"}, CallbackResult{}) {
		t.Fatal("a closed outbox took a result")
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// The case: five callbacks to an endpoint that answers 503 (each
// retried 3 times with backoff). The slot is free as soon as the rollout
// ends; the callbacks go on in the outbox.
func TestFiveFailingCallbacksLeaveTheSlotAtOnce(t *testing.T) {
	clock := clocktest.New()
	var attempts atomic.Int32
	cbs := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attempts.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	env := newTestEnv(t, func(o *Options) {
		c, err := NewCallbacker([]string{cbs.URL}, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		o.Callbacks = c
		o.QuietPeriod = 2 * time.Second
		o.Clock = clock // the queue's time moves only when the test says
	})
	// Five pushes, each with its own callback URL, coalesce into one
	// rollout that reports to all five.
	var id string
	for i := range 5 {
		body := bytes.Replace(fixture(t, "dockerhub-push.json"), []byte("https://registry.hub.docker.com/u/demo/my-service/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/"),
			[]byte(cbs.URL+"/cb/"+strconv.Itoa(i)), 1)
		body = bytes.Replace(body, []byte(`"pushed_at": 1795835368`), []byte(`"pushed_at": `+strconv.Itoa(1795835368+i)), 1)
		resp, ans := env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, body, jsonHeaders())
		if resp.StatusCode != 202 {
			t.Fatalf("%d %v", resp.StatusCode, ans)
		}
		id = ans["id"].(string)
	}
	// They all arrived at one instant of the queue's clock: once it has
	// armed its timer, the quiet period ends for all of them at once.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !clock.WaitMade(ctx, 1) {
		t.Fatal("the queue armed no timer")
	}
	clock.Advance(2 * time.Second)
	final := env.waitRollout(t, id)
	env.waitIdle(t)
	slot := time.Since(final.Finished)
	got := attempts.Load()
	t.Logf("5 callbacks to a 503 endpoint: the service's slot was free %s after the rollout ended, after %d of the callbacks' 15 attempts", slot.Round(time.Microsecond), got)
	if got >= 15 {
		t.Fatalf("the slot was held until every callback attempt was made (%d)", got)
	}
	if final.Queue == nil || len(final.Queue.Supersedes) != 4 {
		t.Fatalf("the rollout carries %+v", final.Queue)
	}
}

// The messages of one rollout arrive in the order they were posted, though
// the outbox has several workers: a slow "started" is not overtaken by its
// "failed" (they ran on two workers at once before).
func TestOutboxKeepsARolloutsMessagesInOrder(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	defer free() // before the server's cleanup, which waits for its handlers
	arrived := make(chan string, 16)
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- r.URL.Path
		if r.URL.Path == "/started" {
			<-release // held until the test has looked for an overtaking "failed"
		}
	}))
	cb, err := NewCallbacker([]string{srv.URL}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	o := NewOutbox(cb, 16, 4, time.Minute, discardLogger())
	defer o.Close(time.Minute)
	const id = "0123456789ab"
	for _, what := range []string{"started", "failed"} {
		if !o.post(id, []outgoing{{what: what, url: srv.URL + "/" + what, body: []byte("{}")}}) {
			t.Fatal("post refused")
		}
	}
	if got := <-arrived; got != "/started" {
		t.Fatalf("first message: %s", got)
	}
	// Nothing of this rollout may arrive while "started" is held; a bound
	// is the only way to look for an absence.
	select {
	case got := <-arrived:
		t.Fatalf("%s arrived while /started was still being sent", got)
	case <-time.After(300 * time.Millisecond):
	}
	free()
	if got := <-arrived; got != "/failed" {
		t.Fatalf("second message: %s", got)
	}
}

package hook

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/clocktest"
)

// hubPush is the Docker Hub fixture with fn applied to its JSON.
func hubPush(t *testing.T, fn func(p map[string]any)) []byte {
	t.Helper()
	var p map[string]any
	if err := json.Unmarshal(fixture(t, "dockerhub-push.json"), &p); err != nil {
		t.Fatal(err)
	}
	fn(p)
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every field a sender controls is bounded as the payload arrives: past
// its bound, the push is refused (400, naming the field) and nothing is
// queued or stored.
func TestPayloadFieldsAreBoundedAtIngestion(t *testing.T) {
	env := newTestEnv(t, nil)
	data := func(p map[string]any) map[string]any { return p["push_data"].(map[string]any) }
	long := func(n int) string { return strings.Repeat("a", n) }
	for _, c := range []struct {
		name  string
		set   func(p map[string]any)
		field string
	}{
		{"long repository", func(p map[string]any) { p["repository"].(map[string]any)["repo_name"] = "demo/" + long(300) }, "repository.repo_name"},
		{"repository with a space", func(p map[string]any) { p["repository"].(map[string]any)["repo_name"] = "demo/my service" }, "repository.repo_name"},
		{"long tag", func(p map[string]any) { data(p)["tag"] = long(129) }, "push_data.tag"},
		{"a tag with Slack markup", func(p map[string]any) { data(p)["tag"] = "v1 <!channel> <mailto:ops@evil.example|approve here>" }, "push_data.tag"},
		{"long pusher", func(p map[string]any) { data(p)["pusher"] = long(1000) }, "push_data.pusher"},
		{"pusher with a newline", func(p map[string]any) { data(p)["pusher"] = "a\nlevel=ERROR" }, "push_data.pusher"},
		{"long push time", func(p map[string]any) { data(p)["pushed_at"] = json.Number(strings.Repeat("1", 40)) }, "push_data.pushed_at"},
		{"long callback", func(p map[string]any) { p["callback_url"] = "https://registry.hub.docker.com/" + long(900*1024) }, "callback_url"},
	} {
		body := hubPush(t, c.set)
		resp, ans := env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, body, jsonHeaders())
		if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(ans["error"].(string), c.field+":") {
			t.Errorf("%s: %d %v, want 400 naming %s", c.name, resp.StatusCode, ans, c.field)
		}
	}
	if got := env.srv.Store().List(""); len(got) != 0 {
		t.Fatalf("refused pushes were stored: %+v", got)
	}
	// At the bounds, it is accepted.
	body := hubPush(t, func(p map[string]any) { data(p)["pusher"] = long(MaxPusherLen) })
	if resp, ans := env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, body, jsonHeaders()); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("at the bounds: %d %v", resp.StatusCode, ans)
	}
	if err := (Event{Repository: "demo/" + long(MaxRepositoryLen-5), Tag: "v" + long(MaxTagLen-1)}).Check(func(n string) string { return n }); err != nil {
		t.Fatalf("a tag and a repository at their bounds: %v", err)
	}
}

// A callback URL off the allow-list is dropped when the push arrives: the
// queue entry in etcd never holds it.
func TestCallbackOffTheAllowListIsDroppedAtIngestion(t *testing.T) {
	rs := newReceivers(t)
	a := rs.start(t, "receiver A")
	allowed := rs.cbs.URL + "/u/demo/my-service/hook/x/"
	for i, cb := range []string{"https://evil.example/u/demo/my-service/hook/x/", allowed} {
		body := hubPush(t, func(p map[string]any) {
			p["callback_url"] = cb
			p["push_data"].(map[string]any)["pushed_at"] = json.Number("179583536" + string(rune('0'+i)))
		})
		resp, ans := a.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, body, jsonHeaders())
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("%s: %d %v", cb, resp.StatusCode, ans)
		}
	}
	entries, err := coord.Triggers{KAPI: rs.kapi}.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var stored []string
	for _, es := range entries {
		for _, e := range es {
			stored = append(stored, e.Callbacks...)
		}
	}
	if len(stored) != 1 || stored[0] != allowed {
		t.Fatalf("callbacks stored: %v, want only %s", stored, allowed)
	}
}

// Failed authentications are throttled per client: past its budget a
// client is answered 429 at once (even with the right secret), with
// Retry-After; another client's right secret is never refused for it; the
// budget comes back with time. The login form is throttled the same way.
func TestFailedAuthenticationIsThrottled(t *testing.T) {
	clock := clocktest.New()
	env := newTestEnv(t, func(o *Options) {
		o.Clock = clock
		o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	get := func(from, token string) *http.Response {
		t.Helper()
		resp, _ := env.do(t, "GET", "/rollouts", nil, map[string]string{"Authorization": "Bearer " + token, "X-Forwarded-For": from})
		return resp
	}
	for i := range DefaultAuthBurst {
		if resp := get("10.0.0.1", "wrong-token-0123456789"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d, want 401", i+1, resp.StatusCode)
		}
	}
	resp := get("10.0.0.1", "wrong-token-0123456789")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("past the budget: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if resp := get("10.0.0.1", testToken); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("the right token from a client over its budget: %d, want 429", resp.StatusCode)
	}
	if resp := get("10.0.0.2", testToken); resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("another client's right token: %d (Cache-Control %q), want 200, no-store", resp.StatusCode, resp.Header.Get("Cache-Control"))
	}
	clock.Advance(DefaultAuthEvery)
	if resp := get("10.0.0.1", testToken); resp.StatusCode != http.StatusOK {
		t.Fatalf("the right token once the budget came back: %d", resp.StatusCode)
	}
	// The login form.
	for i := range DefaultAuthBurst + 1 {
		form := url.Values{"token": {"wrong-token-0123456789"}}.Encode()
		resp, _ := env.do(t, "POST", "/login", []byte(form), map[string]string{"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": "10.0.0.3"})
		want := http.StatusUnauthorized
		if i == DefaultAuthBurst {
			want = http.StatusTooManyRequests
		}
		if resp.StatusCode != want {
			t.Fatalf("login %d: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
}

// Event streams are bounded per client (429) and per receiver (503); a
// stream closed gives its slot back; another client is not refused for
// one client's streams.
func TestEventStreamsAreBounded(t *testing.T) {
	env := newTestEnv(t, func(o *Options) {
		o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	open := func(from string) (int, context.CancelFunc) {
		t.Helper()
		ctx, cancel := context.WithCancel(t.Context())
		req, _ := http.NewRequestWithContext(ctx, "GET", env.http.URL+"/events", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		req.Header.Set("X-Forwarded-For", from)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			cancel()
			return resp.StatusCode, func() {}
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp.StatusCode, func() { cancel(); resp.Body.Close() }
	}
	var closes []context.CancelFunc
	for i := range DefaultMaxStreamsPerClient {
		code, done := open("10.0.0.1")
		if code != http.StatusOK {
			t.Fatalf("stream %d: %d", i+1, code)
		}
		closes = append(closes, done)
	}
	if code, _ := open("10.0.0.1"); code != http.StatusTooManyRequests {
		t.Fatalf("a stream past the client's bound: %d, want 429", code)
	}
	code, other := open("10.0.0.2")
	if code != http.StatusOK {
		t.Fatalf("another client's stream: %d", code)
	}
	other()
	closes[0]()
	// The slot comes back once the handler has seen the stream go.
	deadline := time.After(10 * time.Second)
	for {
		n, released := env.srv.streams.of(netip.MustParseAddr("10.0.0.1"))
		if n < DefaultMaxStreamsPerClient {
			break
		}
		select {
		case <-released:
		case <-deadline:
			t.Fatal("a closed stream's slot never came back")
		}
	}
	if code, done := open("10.0.0.1"); code != http.StatusOK {
		t.Fatalf("a stream in the slot given back: %d", code)
	} else {
		done()
	}
	// The receiver's own bound.
	slots := newStreamSlots(2, 2)
	_, r1 := slots.take(netip.MustParseAddr("10.0.0.1"))
	_, r2 := slots.take(netip.MustParseAddr("10.0.0.2"))
	if code, _ := slots.take(netip.MustParseAddr("10.0.0.3")); code != http.StatusServiceUnavailable {
		t.Fatalf("past the receiver's bound: %d", code)
	}
	r1()
	r1() // twice is once
	if code, r3 := slots.take(netip.MustParseAddr("10.0.0.3")); code != 0 {
		t.Fatalf("after a release: %d", code)
	} else {
		r3()
	}
	r2()
}

// An event stream read through a page's session ends at its logout; one
// read with the API token goes on.
func TestEventStreamEndsWithItsSession(t *testing.T) {
	env := newTestEnv(t, nil)
	base := env.http.URL
	c := browser(t)
	if resp, _ := login(t, c, base, testToken); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	_, page := send(t, c, "GET", base+"/", nil, nil)
	m := csrfMeta.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no CSRF token")
	}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", base+"/events", nil)
	stream, err := c.Do(req)
	if err != nil || stream.StatusCode != http.StatusOK {
		t.Fatalf("stream: %v", err)
	}
	defer stream.Body.Close()
	tokenReq, _ := http.NewRequestWithContext(t.Context(), "GET", base+"/events", nil)
	tokenReq.Header.Set("Authorization", "Bearer "+testToken)
	byToken, err := http.DefaultClient.Do(tokenReq)
	if err != nil || byToken.StatusCode != http.StatusOK {
		t.Fatalf("stream with the token: %v", err)
	}
	defer byToken.Body.Close()
	if resp, _ := send(t, c, "POST", base+"/logout", strings.NewReader("csrf="+m[1]), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, stream.Body); ended <- err }()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("the stream broke instead of ending: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the session's stream goes on after its logout")
	}
	// The token's stream still delivers: a rollout's events reach it.
	if resp, _ := env.do(t, "POST", "/rollouts", []byte(`{"service":"other"}`), withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken)); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /rollouts: %d", resp.StatusCode)
	}
	got := make(chan struct{})
	go func() {
		_ = ReadEvents(byToken.Body, func(id uint64, kind string, data []byte) error {
			if kind != "reset" {
				close(got)
				return io.EOF
			}
			return nil
		})
	}()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the token's stream stopped with another's logout")
	}
}

// However many distinct pushes arrive while a service waits, its queue in
// etcd holds one entry: each new trigger supersedes the older ones at
// once, as the in-memory queue coalesces, and carries their rollouts and
// callbacks. The superseded records say so.
func TestDurableQueueSupersedesAtSubmit(t *testing.T) {
	rs := newReceivers(t)
	a := newTestEnv(t, func(o *Options) {
		c, err := NewCallbacker([]string{rs.cbs.URL}, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		o.Callbacks, o.Fleet, o.Etcd, o.Owner = c, rs.api, rs.kapi, "receiver A"
		o.QuietPeriod, o.MaxWait = time.Hour, time.Hour // nothing runs while the test pushes
	})
	var first string
	const pushes = 30
	for i := range pushes {
		body := hubPush(t, func(p map[string]any) {
			p["push_data"].(map[string]any)["pushed_at"] = json.Number(fmt.Sprint(1795835400 + i))
			p["callback_url"] = fmt.Sprintf("%s/u/demo/my-service/hook/%d/", rs.cbs.URL, i)
		})
		resp, ans := a.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, body, jsonHeaders())
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("push %d: %d %v", i, resp.StatusCode, ans)
		}
		if i == 0 {
			first = ans["id"].(string)
		}
	}
	// The queue coalesces behind the answers: wait until one entry is left,
	// carrying what it superseded.
	var es []coord.QueuedTrigger
	for deadline := time.Now().Add(10 * time.Second); ; {
		entries, err := coord.Triggers{KAPI: rs.kapi}.List(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if es = entries["my-service"]; len(es) == 1 {
			if q := es[0].Record.Queue; q != nil && len(q.Supersedes)+q.SupersedesDropped == pushes-1 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d queue entries for %d pushes, want 1", len(es), pushes)
		}
		select {
		case <-a.srv.Store().Changed():
		case <-time.After(50 * time.Millisecond):
		}
	}
	q := es[0].Record.Queue
	if q == nil || len(q.Supersedes)+q.SupersedesDropped != pushes-1 || len(es[0].Callbacks) == 0 || len(es[0].Callbacks) > 21 {
		t.Fatalf("the entry left: %+v, %d callbacks", q, len(es[0].Callbacks))
	}
	if rec, ok := a.srv.Store().Get(first); !ok || rec.Status != fleetroll.StatusSuperseded || rec.Queue.SupersededBy == "" {
		t.Fatalf("the first push's record: %+v", rec)
	}
}

// A sender that never stops pushing cannot keep a service from running:
// the queued entry that coalesces the pushes carries when the first of them
// arrived, and the maximum wait counts from it (it counted from the newest
// entry's own arrival, which a flood renews with every push).
func TestFloodOfPushesCannotPutARolloutOff(t *testing.T) {
	rs := newReceivers(t)
	a := newTestEnv(t, func(o *Options) {
		o.Fleet, o.Etcd, o.Owner = rs.api, rs.kapi, "receiver A"
		o.QuietPeriod, o.MaxWait = time.Hour, time.Second
	})
	started := func() bool {
		for _, r := range a.srv.Store().List("my-service") {
			if !r.Started.IsZero() {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; !started(); i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no rollout started in 15 s of pushes (%d pushes, maximum wait 1 s)", i)
		}
		body := hubPush(t, func(p map[string]any) {
			p["push_data"].(map[string]any)["pushed_at"] = json.Number(fmt.Sprint(1795836000 + i))
		})
		if resp, ans := a.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, body, jsonHeaders()); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("push %d: %d %v", i, resp.StatusCode, ans)
		}
	}
}

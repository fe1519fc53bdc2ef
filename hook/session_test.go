package hook

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/clocktest"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	client "go.etcd.io/etcd/client/v2"
)

// Live logins are bounded: past maxSessions, a new one ends the session
// used least recently (and wakes the streams read through it).
func TestSessionsAreBounded(t *testing.T) {
	clock := clocktest.New()
	ss := newSessions(time.Hour, 12*time.Hour, clock)
	ctx := t.Context()
	first, _ := ss.create(ctx)
	clock.Advance(time.Second)
	var last session
	for range maxSessions - 1 {
		last, _ = ss.create(ctx)
	}
	if alive, _ := ss.alive(first.id); !alive {
		t.Fatal("a session ended before the bound was reached")
	}
	_, ended := ss.alive(first.id)
	extra, _ := ss.create(ctx)
	if alive, _ := ss.alive(first.id); alive {
		t.Fatal("the least recently used session outlived a login past the bound")
	}
	select {
	case <-ended:
	default:
		t.Fatal("the streams of the ended session were not woken")
	}
	for _, s := range []session{last, extra} {
		if alive, _ := ss.alive(s.id); !alive {
			t.Fatalf("session %s ended", s.id)
		}
	}
	if n := len(ss.byID); n != maxSessions {
		t.Fatalf("%d live sessions, want %d", n, maxSessions)
	}
}

// sharedEtcd starts an etcd and returns a keys API on it, and a function
// that stops it.
func sharedEtcd(t *testing.T) (client.KeysAPI, func()) {
	t.Helper()
	u, stop := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{u}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return kapi, stop
}

// onEtcd starts a receiver named owner on the etcd, on the clock; its
// rollouts wait (an hour's quiet period).
func onEtcd(t *testing.T, kapi client.KeysAPI, owner string, clock *clocktest.Clock, modify func(*Options)) *testEnv {
	t.Helper()
	return newTestEnv(t, func(o *Options) {
		o.Etcd, o.Owner, o.Clock, o.QuietPeriod = kapi, owner, clock, time.Hour
		if modify != nil {
			modify(o)
		}
	})
}

// pageCSRF reads the page at base with c's session and returns its CSRF
// token ("" when the page asks for a login).
func pageCSRF(t *testing.T, c *http.Client, base string) string {
	t.Helper()
	resp, page := send(t, c, "GET", base+"/", nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("page: %d", resp.StatusCode)
	}
	if m := csrfMeta.FindStringSubmatch(page); m != nil {
		return m[1]
	}
	if !strings.Contains(page, `action="/login"`) {
		t.Fatalf("page neither logged in nor the login:\n%s", page)
	}
	return ""
}

var formHeaders = map[string]string{"Content-Type": "application/x-www-form-urlencoded"}

// With etcd, a login on one receiver is valid on another (the page, and an
// action with its CSRF token), and a logout there ends it on both, with
// the event streams read through it; a new API token ends every session.
func TestSessionsAcrossReceivers(t *testing.T) {
	kapi, _ := sharedEtcd(t)
	clock := clocktest.New()
	a := onEtcd(t, kapi, "receiver A", clock, nil)
	b := onEtcd(t, kapi, "receiver B", clock, nil)
	c := browser(t) // one cookie jar for both: a balancer's one URL

	if resp, _ := login(t, c, a.http.URL, testToken); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login on A: %d", resp.StatusCode)
	}
	csrf := pageCSRF(t, c, a.http.URL)
	if got := pageCSRF(t, c, b.http.URL); csrf == "" || got != csrf {
		t.Fatalf("CSRF token on A %q, on B %q", csrf, got)
	}
	if resp, body := send(t, c, "GET", b.http.URL+"/ui/state", nil, nil); resp.StatusCode != http.StatusOK || !strings.Contains(body, `"name": "my-service"`) {
		t.Fatalf("state on B: %d %s", resp.StatusCode, body)
	}
	if resp, _ := send(t, c, "POST", b.http.URL+"/ui/roll?service=my-service", nil, map[string]string{"X-CSRF-Token": "forged"}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("an action on B with a forged CSRF token: %d", resp.StatusCode)
	}
	if resp, body := send(t, c, "POST", b.http.URL+"/ui/roll?service=my-service", nil, map[string]string{"X-CSRF-Token": csrf}); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("an action on B with A's session: %d %s", resp.StatusCode, body)
	}

	// A stream on A through the session; the logout on B ends it.
	req, _ := http.NewRequestWithContext(t.Context(), "GET", a.http.URL+"/events", nil)
	stream, err := c.Do(req)
	if err != nil || stream.StatusCode != http.StatusOK {
		t.Fatalf("stream on A: %v %v", stream, err)
	}
	defer stream.Body.Close()
	if resp, _ := send(t, c, "POST", b.http.URL+"/logout", strings.NewReader("csrf="+url.QueryEscape(csrf)), formHeaders); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout on B: %d", resp.StatusCode)
	}
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, stream.Body); ended <- err }()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("the stream on A broke instead of ending: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stream on A goes on after the logout on B")
	}
	if cookie := sessionOf(t, c, a.http.URL); cookie != "" {
		t.Fatalf("the browser kept its cookie after the logout: %q", cookie)
	}

	// A new API token on one receiver ends every session, on all.
	c2 := browser(t)
	login(t, c2, b.http.URL, testToken)
	if pageCSRF(t, c2, a.http.URL) == "" {
		t.Fatal("a second login on B is not valid on A")
	}
	sec := a.srv.secretsNow()
	sec.API = strings.Repeat("n", len(testToken))
	if err := a.srv.SetSecrets(sec); err != nil {
		t.Fatal(err)
	}
	for _, env := range []*testEnv{a, b} {
		if resp, _ := send(t, c2, "GET", env.http.URL+"/ui/state", nil, nil); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a session outlived the new API token: %d", resp.StatusCode)
		}
	}
}

// A cookie kept after its logout (copied, say) is refused on every
// receiver; its key in etcd is not the cookie.
func TestEndedSessionCookieIsRefusedEverywhere(t *testing.T) {
	kapi, _ := sharedEtcd(t)
	clock := clocktest.New()
	a := onEtcd(t, kapi, "receiver A", clock, nil)
	b := onEtcd(t, kapi, "receiver B", clock, nil)
	c := browser(t)
	login(t, c, a.http.URL, testToken)
	id := sessionOf(t, c, a.http.URL)
	resp, err := kapi.Get(t.Context(), coord.SessionPrefix, &client.GetOptions{Recursive: true})
	if err != nil || len(resp.Node.Nodes) != 1 || strings.Contains(resp.Node.Nodes[0].Key, id) || strings.Contains(resp.Node.Nodes[0].Value, id) {
		t.Fatalf("sessions in etcd: %v %v", resp, err)
	}
	csrf := pageCSRF(t, c, b.http.URL)
	thief := browser(t)
	thief.Jar.SetCookies(mustURL(t, a.http.URL), []*http.Cookie{{Name: sessionCookie, Value: id}})
	if pageCSRF(t, thief, a.http.URL) != csrf {
		t.Fatal("the copied cookie is not the session")
	}
	send(t, c, "POST", b.http.URL+"/logout", strings.NewReader("csrf="+url.QueryEscape(csrf)), formHeaders)
	for _, env := range []*testEnv{a, b} {
		if pageCSRF(t, thief, env.http.URL) != "" {
			t.Fatal("a logged-out session's cookie still opens the page")
		}
		if resp, _ := send(t, thief, "POST", env.http.URL+"/ui/roll?service=my-service", nil, map[string]string{"X-CSRF-Token": csrf}); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("an action with a logged-out session: %d", resp.StatusCode)
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// sessionOf is c's session cookie for base ("" when it has none).
func sessionOf(t *testing.T, c *http.Client, base string) string {
	t.Helper()
	for _, k := range c.Jar.Cookies(mustURL(t, base)) {
		if k.Name == sessionCookie {
			return k.Value
		}
	}
	return ""
}

// In etcd too, at most maxSessions live: a login past it ends the one seen
// least recently (on whichever receiver it was used).
func TestSessionsInEtcdAreBounded(t *testing.T) {
	defer func(n int) { maxSessions = n }(maxSessions)
	maxSessions = 3
	kapi, _ := sharedEtcd(t)
	clock := clocktest.New()
	a := onEtcd(t, kapi, "receiver A", clock, nil)
	b := onEtcd(t, kapi, "receiver B", clock, nil)
	var cs []*http.Client
	for i := range 3 {
		c := browser(t)
		login(t, c, []string{a.http.URL, b.http.URL}[i%2], testToken)
		cs = append(cs, c)
		clock.Advance(time.Minute)
	}
	// The first, used again on B, is now the most recent.
	if pageCSRF(t, cs[0], b.http.URL) == "" {
		t.Fatal("the first session ended within the bound")
	}
	clock.Advance(time.Minute)
	extra := browser(t)
	login(t, extra, a.http.URL, testToken)
	for i, want := range []bool{true, false, true} {
		for _, env := range []*testEnv{a, b} {
			if got := pageCSRF(t, cs[i], env.http.URL) != ""; got != want {
				t.Fatalf("session %d alive %v, want %v", i, got, want)
			}
		}
	}
	if pageCSRF(t, extra, b.http.URL) == "" {
		t.Fatal("the login past the bound did not last")
	}
	resp, err := kapi.Get(t.Context(), coord.SessionPrefix, nil)
	if err != nil || len(resp.Node.Nodes) != maxSessions {
		t.Fatalf("sessions in etcd: %v %v", resp, err)
	}
}

// The idle and absolute limits are judged on the receivers' clock; a
// session's last use is written at most once a minute.
func TestSessionsInEtcdExpire(t *testing.T) {
	kapi, _ := sharedEtcd(t)
	clock := clocktest.New()
	abs := func(o *Options) { o.SessionAbsolute = 90 * time.Minute }
	a := onEtcd(t, kapi, "receiver A", clock, abs)
	b := onEtcd(t, kapi, "receiver B", clock, abs)
	c := browser(t)
	login(t, c, a.http.URL, testToken)
	key := coord.SessionKey(sessionOf(t, c, a.http.URL))
	index := func() uint64 {
		t.Helper()
		resp, err := kapi.Get(t.Context(), key, nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Node.ModifiedIndex
	}
	written := index()
	for range 5 {
		clock.Advance(10 * time.Second)
		if resp, _ := send(t, c, "GET", b.http.URL+"/ui/state", nil, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("state: %d", resp.StatusCode)
		}
	}
	if got := index(); got != written {
		t.Fatal("the last use was written more than once a minute")
	}
	clock.Advance(10 * time.Second)
	send(t, c, "GET", b.http.URL+"/ui/state", nil, nil)
	if got := index(); got == written {
		t.Fatal("the last use was not written after a minute")
	}

	// Used every 25 minutes, on A or B: alive until the absolute limit.
	for i := range 3 {
		clock.Advance(25 * time.Minute)
		env := []*testEnv{a, b}[i%2]
		if resp, _ := send(t, c, "GET", env.http.URL+"/ui/state", nil, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("state within the idle limit (%d): %d", i, resp.StatusCode)
		}
	}
	clock.Advance(15 * time.Minute) // 91 min since the login
	if resp, _ := send(t, c, "GET", a.http.URL+"/ui/state", nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("state past the absolute limit: %d", resp.StatusCode)
	}
	if _, err := kapi.Get(t.Context(), key, nil); err == nil {
		t.Fatal("the expired session stays in etcd")
	}

	// Idle: past the limit since its last use, on either receiver.
	c2 := browser(t)
	login(t, c2, b.http.URL, testToken)
	clock.Advance(DefaultSessionIdle - time.Second)
	if resp, _ := send(t, c2, "GET", a.http.URL+"/ui/state", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("state within the idle limit: %d", resp.StatusCode)
	}
	clock.Advance(DefaultSessionIdle + time.Second)
	if resp, _ := send(t, c2, "GET", b.http.URL+"/ui/state", nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("state past the idle limit: %d", resp.StatusCode)
	}
}

// Without etcd, a login is refused with a 503 that says why, and a
// session's cookie is taken for none: the page asks for a login.
func TestSessionsWithoutEtcd(t *testing.T) {
	kapi, stop := sharedEtcd(t)
	env := onEtcd(t, kapi, "receiver A", clocktest.New(), nil)
	c := browser(t)
	login(t, c, env.http.URL, testToken)
	if pageCSRF(t, c, env.http.URL) == "" {
		t.Fatal("no session")
	}
	stop()
	resp, page := login(t, browser(t), env.http.URL, testToken)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(page, "cannot store sessions") {
		t.Fatalf("login without etcd: %d\n%s", resp.StatusCode, page)
	}
	if pageCSRF(t, c, env.http.URL) != "" {
		t.Fatal("a session was taken as alive without etcd")
	}
	if resp, _ := send(t, c, "GET", env.http.URL+"/ui/state", nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("state without etcd: %d", resp.StatusCode)
	}
	logs := env.logs.String()
	for _, want := range []string{"login failed: the session could not be stored", "session: etcd could not be read: taken for logged out"} {
		if !strings.Contains(logs, want) {
			t.Errorf("no log line %q in:\n%s", want, logs)
		}
	}
}

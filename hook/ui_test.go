package hook

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/clocktest"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// browser is an HTTP client with cookies that does not follow redirects.
func browser(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func send(t *testing.T, c *http.Client, method, u string, body io.Reader, headers map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var csrfMeta = regexp.MustCompile(`<meta name="csrf-token" content="([^"]+)">`)

func login(t *testing.T, c *http.Client, base, token string) (*http.Response, string) {
	t.Helper()
	return send(t, c, "POST", base+"/login", strings.NewReader(url.Values{"token": {token}}.Encode()),
		map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
}

func TestStatusPageLoginSessionsAndCSRF(t *testing.T) {
	clock := clocktest.New()
	env := newTestEnv(t, func(o *Options) { o.Clock = clock })
	base := env.http.URL
	c := browser(t)

	// Not logged in: the login page, and 401s from the data, the stream
	// and the actions.
	resp, page := send(t, c, "GET", base+"/", nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(page, `action="/login"`) || resp.Header.Get("Content-Security-Policy") != uiCSP {
		t.Fatalf("unauthenticated page: %d %s\n%s", resp.StatusCode, resp.Header, page)
	}
	for _, p := range []struct{ method, path string }{{"GET", "/ui/state"}, {"GET", "/events"}, {"POST", "/ui/roll?service=my-service"}} {
		if resp, _ := send(t, c, p.method, base+p.path, nil, nil); resp.StatusCode != 401 {
			t.Errorf("%s %s without a session: %d", p.method, p.path, resp.StatusCode)
		}
	}
	for p, code := range map[string]int{"/ui/assets/app.js": 200, "/ui/assets/": 404, "/ui/assets/index.html": 404} {
		if resp, _ := send(t, c, "GET", base+p, nil, nil); resp.StatusCode != code {
			t.Errorf("%s: %d, want %d", p, resp.StatusCode, code)
		}
	}
	if resp, page := login(t, c, base, testHubToken); resp.StatusCode != 401 || !strings.Contains(page, "Wrong token") {
		t.Fatalf("login with another secret: %d", resp.StatusCode)
	}

	resp, _ = login(t, c, base, testToken)
	if resp.StatusCode != 303 {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	cookie := resp.Header.Get("Set-Cookie")
	if !strings.Contains(cookie, "HttpOnly") || !strings.Contains(cookie, "SameSite=Strict") || strings.Contains(cookie, testToken) {
		t.Fatalf("session cookie: %s", cookie)
	}
	_, page = send(t, c, "GET", base+"/", nil, nil)
	m := csrfMeta.FindStringSubmatch(page)
	if m == nil || strings.Contains(page, testToken) {
		t.Fatalf("page: no CSRF token, or the API token in it:\n%s", page)
	}
	csrf := m[1]
	if resp, body := send(t, c, "GET", base+"/ui/state", nil, nil); resp.StatusCode != 200 || !strings.Contains(body, `"name": "my-service"`) {
		t.Fatalf("state: %d %s", resp.StatusCode, body)
	}
	// An action without the CSRF token, or with another, is refused: a
	// cross-site form cannot set the header.
	for _, h := range []map[string]string{nil, {"X-CSRF-Token": "forged"}} {
		if resp, _ := send(t, c, "POST", base+"/ui/roll?service=my-service", nil, h); resp.StatusCode != 403 {
			t.Fatalf("roll with CSRF %v: %d", h, resp.StatusCode)
		}
	}
	if resp, body := send(t, c, "POST", base+"/ui/roll?service=nope", nil, map[string]string{"X-CSRF-Token": csrf}); resp.StatusCode != 404 {
		t.Fatalf("roll of an unknown service: %d %s", resp.StatusCode, body)
	}
	resp, body := send(t, c, "POST", base+"/ui/roll?service=my-service", nil, map[string]string{"X-CSRF-Token": csrf})
	if resp.StatusCode != 202 || !strings.Contains(body, `"service": "my-service"`) {
		t.Fatalf("roll now: %d %s", resp.StatusCode, body)
	}
	// Logout needs the CSRF token too, and ends the session.
	if resp, _ := send(t, c, "POST", base+"/logout", strings.NewReader("csrf=forged"), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); resp.StatusCode != 403 {
		t.Fatalf("logout without the CSRF token: %d", resp.StatusCode)
	}
	if resp, _ := send(t, c, "POST", base+"/logout", strings.NewReader("csrf="+csrf), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); resp.StatusCode != 303 {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	if resp, _ := send(t, c, "GET", base+"/ui/state", nil, nil); resp.StatusCode != 401 {
		t.Fatalf("state after logout: %d", resp.StatusCode)
	}

	// Sessions end after their idle limit.
	login(t, c, base, testToken)
	if resp, _ := send(t, c, "GET", base+"/ui/state", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("state after a new login: %d", resp.StatusCode)
	}
	clock.Advance(DefaultSessionIdle + time.Second)
	if resp, _ := send(t, c, "GET", base+"/ui/state", nil, nil); resp.StatusCode != 401 {
		t.Fatalf("state after the idle limit: %d", resp.StatusCode)
	}
}

// A network opened to viewing sees the page and its data without a login,
// and cannot act.
func TestStatusPageReadOnlyNetworks(t *testing.T) {
	env := newTestEnv(t, func(o *Options) { o.ViewFrom = mustPrefixes(t, "127.0.0.0/8") })
	c := browser(t)
	resp, page := send(t, c, "GET", env.http.URL+"/", nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(page, "read-only") || csrfMeta.MatchString(page) {
		t.Fatalf("read-only page: %d\n%s", resp.StatusCode, page)
	}
	if resp, _ := send(t, c, "GET", env.http.URL+"/ui/state", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("read-only state: %d", resp.StatusCode)
	}
	if resp, _ := send(t, c, "POST", env.http.URL+"/ui/roll?service=my-service", nil, map[string]string{"X-CSRF-Token": "x"}); resp.StatusCode != 401 {
		t.Fatalf("read-only roll: %d", resp.StatusCode)
	}
	// Off by default.
	other := newTestEnv(t, nil)
	if _, page := send(t, c, "GET", other.http.URL+"/", nil, nil); !strings.Contains(page, `action="/login"`) {
		t.Fatal("viewing without a login is on by default")
	}
}

// A queued rollout can be cancelled from the page (and the API) before it
// runs; one that is not queued cannot.
func TestCancelAQueuedRollout(t *testing.T) {
	env := newTestEnv(t, func(o *Options) { o.QuietPeriod = time.Hour })
	c := browser(t)
	login(t, c, env.http.URL, testToken)
	_, page := send(t, c, "GET", env.http.URL+"/", nil, nil)
	csrf := csrfMeta.FindStringSubmatch(page)[1]
	resp, body := send(t, c, "POST", env.http.URL+"/ui/roll?service=my-service", nil, map[string]string{"X-CSRF-Token": csrf})
	if resp.StatusCode != 202 {
		t.Fatalf("roll: %d %s", resp.StatusCode, body)
	}
	id := regexp.MustCompile(`"id": "([0-9a-f]{12})"`).FindStringSubmatch(body)[1]
	if resp, _ := send(t, c, "POST", env.http.URL+"/ui/cancel?id="+id, nil, nil); resp.StatusCode != 403 {
		t.Fatalf("cancel without CSRF: %d", resp.StatusCode)
	}
	resp, body = send(t, c, "POST", env.http.URL+"/ui/cancel?id="+id, nil, map[string]string{"X-CSRF-Token": csrf})
	if resp.StatusCode != 200 || !strings.Contains(body, `"status": "cancelled"`) {
		t.Fatalf("cancel: %d %s", resp.StatusCode, body)
	}
	if got, _ := env.srv.Store().Get(id); got.Status != "cancelled" || !strings.Contains(got.Error, "the status page") {
		t.Fatalf("record after cancel: %+v", got)
	}
	// Twice: it is not queued any more. Through the API, with its token.
	api := map[string]string{"Authorization": "Bearer " + testToken}
	if resp, _ := send(t, http.DefaultClient, "POST", env.http.URL+"/rollouts/"+id+"/cancel", nil, api); resp.StatusCode != 409 {
		t.Fatalf("second cancel: %d", resp.StatusCode)
	}
	if resp, _ := send(t, http.DefaultClient, "POST", env.http.URL+"/rollouts/"+id+"/cancel", nil, nil); resp.StatusCode != 401 {
		t.Fatalf("cancel without a token: %d", resp.StatusCode)
	}
	if n, _ := env.srv.queue.Depth(); n != 0 {
		t.Fatalf("%d rollouts still queued", n)
	}
}

// With the durable queue, a cancel removes the trigger from etcd (unless a
// receiver has begun it) and records the rollout as cancelled.
func TestCancelAQueuedRolloutInEtcd(t *testing.T) {
	rs := newReceivers(t)
	env := newTestEnv(t, func(o *Options) { o.Etcd, o.Owner, o.QuietPeriod = rs.kapi, "receiver", time.Hour })
	api := map[string]string{"Authorization": "Bearer " + testToken, "Content-Type": "application/json"}
	resp, body := send(t, http.DefaultClient, "POST", env.http.URL+"/rollouts", strings.NewReader(`{"service":"my-service"}`), api)
	if resp.StatusCode != 202 {
		t.Fatalf("trigger: %d %s", resp.StatusCode, body)
	}
	id := regexp.MustCompile(`"id": "([0-9a-f]{12})"`).FindStringSubmatch(body)[1]
	resp, body = send(t, http.DefaultClient, "POST", env.http.URL+"/rollouts/"+id+"/cancel", nil, api)
	if resp.StatusCode != 200 || !strings.Contains(body, `"status": "cancelled"`) {
		t.Fatalf("cancel: %d %s", resp.StatusCode, body)
	}
	all, err := coord.Triggers{KAPI: rs.kapi}.List(t.Context())
	if err != nil || len(all["my-service"]) != 0 {
		t.Fatalf("queue after the cancel: %v %v", all, err)
	}
	if rec, ok, err := (coord.History{KAPI: rs.kapi}).Get(t.Context(), id); err != nil || !ok || rec.Status != "cancelled" {
		t.Fatalf("history: %+v %v %v", rec, ok, err)
	}
}

// Roll back from the page: the release before the current one is deployed
// again, for a service with an image; a service without one cannot.
func TestRollBackFromThePage(t *testing.T) {
	url, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	env := newTestEnv(t, func(o *Options) {
		cfg, err := ParseConfig([]byte(strings.Replace(testConfig, "    ports: 8901-8903\n", "    ports: 8901-8903\n    image: "+releaseImage+"\n", 1)), testBase())
		if err != nil {
			t.Fatal(err)
		}
		o.Config, o.Etcd, o.Resolver = cfg, kapi, &fakeResolver{}
	})
	store := coord.ReleaseStore{KAPI: kapi}
	v1 := fleetroll.Release{Image: releaseImage + "@sha256:" + strings.Repeat("1", 64), Tag: "v1"}
	v2 := fleetroll.Release{Image: releaseImage + "@sha256:" + strings.Repeat("2", 64), Tag: "v2"}
	if err := store.Set(t.Context(), "my-service", v1, nil); err != nil {
		t.Fatal(err)
	}
	if err := store.Set(t.Context(), "my-service", v2, &v1); err != nil {
		t.Fatal(err)
	}
	c := browser(t)
	login(t, c, env.http.URL, testToken)
	_, page := send(t, c, "GET", env.http.URL+"/", nil, nil)
	csrf := csrfMeta.FindStringSubmatch(page)[1]
	if _, body := send(t, c, "GET", env.http.URL+"/ui/state", nil, nil); !strings.Contains(body, `"previous": "`+v1.Image+`"`) {
		t.Fatalf("state does not name the release to roll back to: %s", body)
	}
	if resp, _ := send(t, c, "POST", env.http.URL+"/ui/rollback?service=other", nil, map[string]string{"X-CSRF-Token": csrf}); resp.StatusCode != 422 {
		t.Fatalf("roll back a service without an image: %d", resp.StatusCode)
	}
	resp, body := send(t, c, "POST", env.http.URL+"/ui/rollback?service=my-service", nil, map[string]string{"X-CSRF-Token": csrf})
	if resp.StatusCode != 202 {
		t.Fatalf("roll back: %d %s", resp.StatusCode, body)
	}
	id := regexp.MustCompile(`"id": "([0-9a-f]{12})"`).FindStringSubmatch(body)[1]
	rep := env.waitRollout(t, id)
	cur, _ := store.Current(t.Context(), "my-service")
	if rep.Status != fleetroll.StatusSucceeded || rep.Trigger.Digest != v1.Digest() || cur == nil || cur.Image != v1.Image {
		t.Fatalf("rollback: %+v, current %+v", rep, cur)
	}
}

// A session ends at its absolute limit, however busy.
func TestSessionAbsoluteLimit(t *testing.T) {
	clock := clocktest.New()
	env := newTestEnv(t, func(o *Options) { o.Clock = clock; o.SessionAbsolute = time.Hour })
	c := browser(t)
	login(t, c, env.http.URL, testToken)
	for range 3 {
		clock.Advance(20 * time.Minute) // within the idle limit each time
		if resp, _ := send(t, c, "GET", env.http.URL+"/ui/state", nil, nil); resp.StatusCode != 200 {
			t.Fatalf("state within the limits: %d", resp.StatusCode)
		}
	}
	clock.Advance(time.Minute)
	if resp, _ := send(t, c, "GET", env.http.URL+"/ui/state", nil, nil); resp.StatusCode != 401 {
		t.Fatalf("state past the absolute limit: %d", resp.StatusCode)
	}
}

// One reading of fleet serves every viewer of the page for a second, or
// until a record changes: viewers cannot make the receiver read fleet and
// etcd, or call the instances, at their own pace.
func TestPageStateIsReadOncePerSecond(t *testing.T) {
	env := newTestEnv(t, func(o *Options) { o.ViewFrom = mustPrefixes(t, "127.0.0.0/8") })
	c := browser(t)
	units := func() int {
		n := 0
		for _, call := range env.fleet.Calls() {
			if strings.HasPrefix(call, "units") {
				n++
			}
		}
		return n
	}
	before := units()
	for range 20 {
		if resp, _ := send(t, c, "GET", env.http.URL+"/ui/state", nil, nil); resp.StatusCode != 200 {
			t.Fatalf("state: %d", resp.StatusCode)
		}
	}
	if n := units() - before; n > 2 {
		t.Fatalf("20 readings of the page's state within a second read fleet's units %d times", n)
	}
	// A change of the records is seen at once.
	env.srv.Store().Put(fleetroll.Report{ID: "0123456789ab", Service: "my-service", Status: fleetroll.StatusSucceeded})
	if _, body := send(t, c, "GET", env.http.URL+"/ui/state", nil, nil); !strings.Contains(body, "0123456789ab") {
		t.Fatalf("a new record is not in the page's state:\n%s", body)
	}
}

// Where a login returns to: the page, or the page opened on a rollout;
// nothing else, so no link can make the login send anyone elsewhere.
func TestPagePath(t *testing.T) {
	for in, want := range map[string]string{
		"":                              "/",
		"/":                             "/",
		"/ui/rollouts/0123456789ab":     "/ui/rollouts/0123456789ab",
		"/ui/rollouts/0123456789AB":     "/ui/rollouts/0123456789ab",
		"/ui/rollouts/0123456789abc":    "/",
		"/ui/rollouts/0123456789ab/":    "/",
		"/ui/rollouts/0123456789ab?x=1": "/",
		"/ui/rollouts/":                 "/",
		"/ui/rollouts/../../evil":       "/",
		"//evil.example/":               "/",
		"/\\evil.example":               "/",
		"https://evil.example/":         "/",
		"https://evil.example/ui/rollouts/0123456789ab": "/",
		"javascript:alert(1)":                           "/",
		"/ui/state":                                     "/",
		" /ui/rollouts/0123456789ab":                    "/",
		"/ui/rollouts/0123456789ab\r\nX: y":             "/",
	} {
		if got := pagePath(in); got != want {
			t.Errorf("pagePath(%q) = %q, want %q", in, got, want)
		}
	}
}

// The page opened on a rollout (the link of a Slack message, of Docker
// Hub's target_url): without a session, the login, which returns to it;
// a link followed from another site, whose browser leaves the SameSite
// cookie out, asks for the page again from the page's own origin.
func TestPageOpensOnARollout(t *testing.T) {
	env := newTestEnv(t, nil)
	base := env.http.URL
	const path = "/ui/rollouts/0123456789ab"
	c := browser(t)
	for p, code := range map[string]int{"/ui/rollouts/nothex": 404, "/ui/rollouts/0123456789abc": 404, "/ui/rollouts/0123456789ab/x": 404} {
		if resp, body := send(t, c, "GET", base+p, nil, nil); resp.StatusCode != code {
			t.Errorf("GET %s: %d %s, want %d", p, resp.StatusCode, body, code)
		}
	}
	resp, page := send(t, c, "GET", base+path, nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(page, `action="/login"`) || !strings.Contains(page, `name="next" value="`+path+`"`) ||
		resp.Header.Get("Content-Security-Policy") != uiCSP {
		t.Fatalf("the rollout's page without a session: %d\n%s", resp.StatusCode, page)
	}
	resp, page = send(t, c, "GET", base+path, nil, map[string]string{"Sec-Fetch-Site": "cross-site"})
	if resp.StatusCode != 200 || !strings.Contains(page, `<meta http-equiv="refresh" content="0;url=`+path+`">`) || strings.Contains(page, "token") {
		t.Fatalf("the rollout's page from another site: %d\n%s", resp.StatusCode, page)
	}

	// A wrong token keeps where to return; a login returns there, or to
	// the page for anything but a rollout's page.
	form := func(token, next string) (io.Reader, map[string]string) {
		return strings.NewReader(url.Values{"token": {token}, "next": {next}}.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	}
	body, h := form("wrong-token", path)
	if resp, page := send(t, c, "POST", base+"/login", body, h); resp.StatusCode != 401 || !strings.Contains(page, `name="next" value="`+path+`"`) {
		t.Fatalf("a wrong token: %d\n%s", resp.StatusCode, page)
	}
	for next, want := range map[string]string{strings.ToUpper(path[len("/ui/rollouts/"):]): "/", "/ui/rollouts/0123456789AB": path,
		"//evil.example/": "/", "https://evil.example" + path: "/", "": "/"} {
		body, h := form(testToken, next)
		if resp, _ := send(t, browser(t), "POST", base+"/login", body, h); resp.StatusCode != 303 || resp.Header.Get("Location") != want {
			t.Errorf("login with next %q: %d to %q, want %q", next, resp.StatusCode, resp.Header.Get("Location"), want)
		}
	}
	body, h = form(testToken, path)
	if resp, _ := send(t, c, "POST", base+"/login", body, h); resp.StatusCode != 303 || resp.Header.Get("Location") != path {
		t.Fatalf("login from the rollout's page: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// With the session: the page itself, from anywhere.
	for _, site := range []string{"", "same-origin", "cross-site"} {
		resp, page := send(t, c, "GET", base+path, nil, map[string]string{"Sec-Fetch-Site": site})
		if resp.StatusCode != 200 || !csrfMeta.MatchString(page) || !strings.Contains(page, `id="detail"`) {
			t.Fatalf("the rollout's page with a session (Sec-Fetch-Site %q): %d\n%s", site, resp.StatusCode, page)
		}
	}
}

// A canary rollout paused in serve is promoted, or aborted, from the page:
// the API's decision, with the session's CSRF token, recorded as the
// page's; the page reads the rollout it is opened on.
func TestPromoteAndAbortFromThePage(t *testing.T) {
	etcdURL, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{etcdURL}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	env := newTestEnv(t, func(o *Options) {
		o.Etcd, o.Owner = kapi, "receiver"
		for i := range o.Config.Services {
			o.Config.Services[i].Settings.Canary = 1
		}
	})
	base := env.http.URL
	anon, c := browser(t), browser(t)
	login(t, c, base, testToken)
	_, page := send(t, c, "GET", base+"/", nil, nil)
	csrf := map[string]string{"X-CSRF-Token": csrfMeta.FindStringSubmatch(page)[1]}
	trigger := func() string {
		t.Helper()
		resp, body := send(t, c, "POST", base+"/ui/roll?service=my-service", nil, csrf)
		if resp.StatusCode != 202 {
			t.Fatalf("roll: %d %s", resp.StatusCode, body)
		}
		return regexp.MustCompile(`"id": "([0-9a-f]{12})"`).FindStringSubmatch(body)[1]
	}

	id := trigger()
	waitStatus(t, env, id, fleetroll.StatusPaused)
	if resp, body := send(t, anon, "GET", base+"/ui/rollout?id="+id, nil, nil); resp.StatusCode != 401 {
		t.Fatalf("the rollout without a session: %d %s", resp.StatusCode, body)
	}
	for q, code := range map[string]int{id: 200, strings.ToUpper(id): 200, "000000000000": 404, "..%2f": 404} {
		resp, body := send(t, c, "GET", base+"/ui/rollout?id="+q, nil, nil)
		if resp.StatusCode != code || code == 200 && !strings.Contains(body, `"status": "paused"`) {
			t.Errorf("the rollout %q: %d %s, want %d", q, resp.StatusCode, body, code)
		}
	}
	for _, try := range []struct {
		client  *http.Client
		headers map[string]string
		code    int
	}{{anon, csrf, 401}, {c, nil, 403}, {c, map[string]string{"X-CSRF-Token": "forged"}, 403}} {
		if resp, body := send(t, try.client, "POST", base+"/ui/promote?id="+id, nil, try.headers); resp.StatusCode != try.code {
			t.Errorf("promote %v: %d %s, want %d", try.headers, resp.StatusCode, body, try.code)
		}
	}
	if resp, body := send(t, c, "POST", base+"/ui/promote?id=000000000000", nil, csrf); resp.StatusCode != 404 {
		t.Fatalf("promote a rollout that is not paused: %d %s", resp.StatusCode, body)
	}
	if resp, body := send(t, c, "POST", base+"/ui/promote?id="+id, nil, csrf); resp.StatusCode != 200 || !strings.Contains(body, `"decision": "promote"`) {
		t.Fatalf("promote: %d %s", resp.StatusCode, body)
	}
	if final := waitFinal(t, env, id); final.Status != fleetroll.StatusSucceeded || final.Restarted() != 3 ||
		!strings.HasPrefix(final.Canary.By, "the status page (request ") {
		t.Fatalf("promoted rollout: %+v %+v", final, final.Canary)
	}

	id = trigger()
	waitStatus(t, env, id, fleetroll.StatusPaused)
	if resp, body := send(t, c, "POST", base+"/ui/abort?id="+id, nil, csrf); resp.StatusCode != 200 || !strings.Contains(body, `"decision": "abort"`) {
		t.Fatalf("abort: %d %s", resp.StatusCode, body)
	}
	if final := waitFinal(t, env, id); final.Status != fleetroll.StatusAborted || final.Units[2].Outcome != fleetroll.OutcomeUntouched {
		t.Fatalf("aborted rollout: %+v", final)
	}
	if resp, _ := send(t, c, "POST", base+"/ui/promote?id="+id, nil, csrf); resp.StatusCode != 404 {
		t.Fatalf("a decision after the end: %d", resp.StatusCode)
	}
}

// Fleet's target and systemd's state disagree: a launched unit that is not
// active, or a loaded or inactive one that is (or is becoming so).
func TestDisagree(t *testing.T) {
	for _, c := range []struct {
		target, systemd string
		want            bool
	}{
		{"launched", "active/running", false},
		{"launched", "active/exited", false},
		{"launched", "failed/failed", true},
		{"launched", "inactive/dead", true},
		{"launched", "activating/start", true},
		{"launched", "deactivating/stop-sigterm", true},
		{"launched", "no state", true},
		{"loaded", "inactive/dead", false},
		{"loaded", "failed/failed", false},
		{"loaded", "active/running", true},
		{"loaded", "activating/start", true},
		{"loaded", "deactivating/stop-sigterm", true},
		{"loaded", "no state", false},
		{"inactive", "no state", false},
		{"inactive", "active/running", true},
		{"", "active/running", false},
		{"", "failed/failed", false},
	} {
		if got := disagree(c.target, c.systemd); got != c.want {
			t.Errorf("disagree(%q, %q) = %v, want %v", c.target, c.systemd, got, c.want)
		}
	}
}

// The page's state says since when an instance's target and state have
// disagreed: the first reading that saw it, kept while they disagree,
// forgotten when they agree again (or the instance is gone), and not
// judged from a reading that could not read fleet's states.
func TestPageStateSaysSinceWhenTargetAndStateDisagree(t *testing.T) {
	clock := clocktest.New()
	env := newTestEnv(t, func(o *Options) { o.Clock = clock; o.ViewFrom = mustPrefixes(t, "127.0.0.0/8") })
	c := browser(t)
	const broken = "my-service@8902.service"
	var fleetErr string
	read := func() map[string]uiInstance {
		t.Helper()
		clock.Advance(uiStateTTL) // a reading of its own
		resp, body := send(t, c, "GET", env.http.URL+"/ui/state", nil, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("state: %d %s", resp.StatusCode, body)
		}
		var doc struct{ Services []uiService }
		if err := json.Unmarshal([]byte(body), &doc); err != nil {
			t.Fatal(err)
		}
		out := map[string]uiInstance{}
		fleetErr = ""
		for _, svc := range doc.Services {
			fleetErr += svc.Error
			for _, i := range svc.Instances {
				out[i.Unit] = i
			}
		}
		return out
	}
	if got := read(); len(got) != 4 || got[broken].Disagrees {
		t.Fatalf("all running: %+v", got)
	}
	env.fleet.Update(broken, func(u *fakefleet.Unit) { u.Active, u.Sub = "failed", "failed" })
	first := read()[broken]
	since := clock.Now()
	if !first.Disagrees || !first.DisagreeingSince.Equal(since) || first.DisagreeingFor != 0 || first.Fleet != "launched" || first.Systemd != "failed/failed" {
		t.Fatalf("first reading of a failed launched unit: %+v", first)
	}
	clock.Advance(5 * time.Second)
	later := read()
	if i := later[broken]; !i.Disagrees || !i.DisagreeingSince.Equal(since) || time.Duration(i.DisagreeingFor) != 5*time.Second+uiStateTTL {
		t.Fatalf("a later reading: %+v", i)
	}
	for u, i := range later {
		if u != broken && (i.Disagrees || !i.DisagreeingSince.IsZero()) {
			t.Errorf("%s agrees: %+v", u, i)
		}
	}
	if n := len(env.srv.uiCache.disagreeing); n != 1 {
		t.Errorf("%d since-times kept, want 1", n)
	}
	// Fleet unreadable: nothing judged, the since-time kept.
	env.fleet.FailNext(fakefleet.Fault{Status: 500, Message: "boom"})
	if i := read()[broken]; i.Disagrees || fleetErr == "" {
		t.Fatalf("judged without fleet's units (%q): %+v", fleetErr, i)
	}
	if i := read()[broken]; !i.Disagrees || !i.DisagreeingSince.Equal(since) {
		t.Fatalf("after a reading that failed: %+v", i)
	}
	// Running again: forgotten; failing again: a new since-time.
	env.fleet.Update(broken, func(u *fakefleet.Unit) { u.Active, u.Sub = "active", "running" })
	if i := read()[broken]; i.Disagrees || !i.DisagreeingSince.IsZero() {
		t.Fatalf("running again: %+v", i)
	}
	if n := len(env.srv.uiCache.disagreeing); n != 0 {
		t.Errorf("%d since-times kept, want 0", n)
	}
	env.fleet.Update(broken, func(u *fakefleet.Unit) { u.Desired = "loaded" })
	again := read()[broken]
	if !again.Disagrees || !again.DisagreeingSince.Equal(clock.Now()) || again.Fleet != "loaded" {
		t.Fatalf("a loaded unit still running: %+v", again)
	}
}

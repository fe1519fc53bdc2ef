package hook

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

// pageRequest sends a request to the handler under test with the Host
// header given (a browser's, after DNS rebinding) and the headers.
func pageRequest(t *testing.T, c *http.Client, method, u, host string, body io.Reader, headers map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp, string(b)
}

func formLogin(token string) (io.Reader, map[string]string) {
	return strings.NewReader(url.Values{"token": {token}}.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
}

// Issue 22, item 9: the session cookie is Secure, and HSTS is sent, when the
// page reaches its client over TLS: this listener's, a trusted proxy's
// X-Forwarded-Proto: https, or an https public URL; never over plain HTTP.
// HttpOnly and SameSite=Strict always.
func TestSessionCookieSecureAndHSTSOverTLS(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tls     bool
		modify  func(*Options)
		headers map[string]string
		secure  bool
	}{
		{name: "plain HTTP", secure: false},
		{name: "TLS listener", tls: true, secure: true},
		{name: "trusted proxy, https", modify: func(o *Options) { o.TrustedProxies = mustPrefixes(t, "127.0.0.0/8") },
			headers: map[string]string{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}, secure: true},
		{name: "trusted proxy, https first of two", modify: func(o *Options) { o.TrustedProxies = mustPrefixes(t, "127.0.0.0/8") },
			headers: map[string]string{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "HTTPS, http"}, secure: true},
		{name: "trusted proxy, http", modify: func(o *Options) { o.TrustedProxies = mustPrefixes(t, "127.0.0.0/8") },
			headers: map[string]string{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "http"}, secure: false},
		{name: "trusted proxy says http, https public URL", modify: func(o *Options) {
			o.TrustedProxies, o.PublicURL = mustPrefixes(t, "127.0.0.0/8"), "https://hooks.example.com"
		}, headers: map[string]string{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "http"}, secure: false},
		{name: "untrusted peer says https", modify: func(o *Options) { o.TrustedProxies = mustPrefixes(t, "10.0.0.0/8") },
			headers: map[string]string{"X-Forwarded-Proto": "https"}, secure: false},
		{name: "https public URL", modify: func(o *Options) { o.PublicURL = "https://hooks.example.com/" }, secure: true},
		{name: "http public URL", modify: func(o *Options) { o.PublicURL = "http://hooks.example.com" }, secure: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newTestEnv(t, tc.modify)
			base, c := env.http.URL, browser(t)
			if tc.tls {
				ts := httptest.NewTLSServer(env.srv.Handler())
				t.Cleanup(ts.Close)
				base, c = ts.URL, ts.Client()
				c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			}
			body, hdr := formLogin(testToken)
			resp, _ := pageRequest(t, c, "POST", base+"/login", "", body, withHeaders(hdr, flatten(tc.headers)...))
			if resp.StatusCode != http.StatusSeeOther {
				t.Fatalf("login: %d", resp.StatusCode)
			}
			var cookie *http.Cookie
			for _, ck := range resp.Cookies() {
				if ck.Name == sessionCookie {
					cookie = ck
				}
			}
			if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Secure != tc.secure {
				t.Fatalf("session cookie %q: want HttpOnly, SameSite=Strict, Secure=%v", resp.Header.Get("Set-Cookie"), tc.secure)
			}
			want := ""
			if tc.secure {
				want = "max-age=31536000"
			}
			cookieHdr := map[string]string{"Cookie": sessionCookie + "=" + cookie.Value}
			for _, p := range []struct{ method, path string }{{"POST", "/login"}, {"GET", "/"}, {"GET", "/ui/state"}, {"GET", "/ui/assets/app.js"}} {
				var body io.Reader
				h := withHeaders(cookieHdr, flatten(tc.headers)...)
				if p.path == "/login" {
					body, _ = formLogin(testToken)
					h = withHeaders(h, "Content-Type", "application/x-www-form-urlencoded")
				}
				resp, _ := pageRequest(t, c, p.method, base+p.path, "", body, h)
				if got := resp.Header.Get("Strict-Transport-Security"); got != want {
					t.Errorf("%s %s: Strict-Transport-Security %q, want %q", p.method, p.path, got, want)
				}
			}
			// Logout clears the cookie with the same attributes.
			_, page := pageRequest(t, c, "GET", base+"/", "", nil, withHeaders(cookieHdr, flatten(tc.headers)...))
			m := csrfMeta.FindStringSubmatch(page)
			if m == nil {
				t.Fatal("no CSRF token on the page")
			}
			resp, _ = pageRequest(t, c, "POST", base+"/logout", "", strings.NewReader("csrf="+url.QueryEscape(m[1])),
				withHeaders(cookieHdr, append(flatten(tc.headers), "Content-Type", "application/x-www-form-urlencoded")...))
			if sc := resp.Header.Get("Set-Cookie"); resp.StatusCode != http.StatusSeeOther || strings.Contains(sc, "Secure") != tc.secure {
				t.Fatalf("logout: %d, cookie %q", resp.StatusCode, sc)
			}
		})
	}
	if _, err := newTestEnvErr(t, func(o *Options) { o.PublicURL = "hooks.example.com" }); err == nil {
		t.Fatal("a public URL without a scheme was taken")
	}
}

func flatten(m map[string]string) []string {
	var kv []string
	for k, v := range m {
		kv = append(kv, k, v)
	}
	return kv
}

// Issue 22, item 11: DNS rebinding. The page, its assets, its data, its
// stream and its actions answer only to the hosts the page is served at;
// the senders and the API (secrets, no browser) to any.
func TestPageAnswersOnlyToItsHosts(t *testing.T) {
	env := newTestEnv(t, func(o *Options) {
		o.ViewFrom = mustPrefixes(t, "127.0.0.0/8") // read-only data without a login: what rebinding would read
		o.QuietPeriod = time.Hour
	})
	base, port := env.http.URL, strings.TrimPrefix(env.http.URL, "http://127.0.0.1")
	c := browser(t)
	page := []struct{ method, path string }{
		{"GET", "/"}, {"GET", "/ui/assets/app.js"}, {"GET", "/ui/state"}, {"GET", "/events"},
		{"POST", "/login"}, {"POST", "/logout"}, {"POST", "/ui/roll?service=my-service"},
		{"POST", "/ui/cancel?id=0123456789ab"}, {"POST", "/ui/rollback?service=my-service"},
		{"GET", "/ui/rollouts/0123456789ab"}, {"GET", "/ui/rollout?id=0123456789ab"},
		{"POST", "/ui/promote?id=0123456789ab"}, {"POST", "/ui/abort?id=0123456789ab"},
	}
	for _, host := range []string{"evil.example", "evil.example" + port, "EVIL.example.", "localhost.evil.example", "127.0.0.1.nip.io" + port} {
		for _, p := range page {
			resp, body := pageRequest(t, c, p.method, base+p.path, host, nil, nil)
			if resp.StatusCode != http.StatusMisdirectedRequest || !strings.Contains(body, "DNS rebinding") || !strings.Contains(body, "--public-url") {
				t.Errorf("%s %s with Host %q: %d %s, want 421", p.method, p.path, host, resp.StatusCode, body)
			}
		}
	}
	// Without a public URL: loopback names and any IP address.
	for _, host := range []string{"127.0.0.1" + port, "localhost" + port, "LocalHost", "[::1]" + port, "10.1.2.3:8080", "[2001:db8::1]", "203.0.113.9"} {
		if resp, body := pageRequest(t, c, "GET", base+"/ui/state", host, nil, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("GET /ui/state with Host %q: %d %s", host, resp.StatusCode, body)
		}
	}
	// The API, its stream and the senders: their secrets, whatever the Host.
	bearer := map[string]string{"Authorization": "Bearer " + testToken}
	if resp, body := pageRequest(t, c, "GET", base+"/rollouts", "evil.example", nil, bearer); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /rollouts with the API token: %d %s", resp.StatusCode, body)
	}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", base+"/events", nil)
	req.Host, req.Header = "evil.example", http.Header{"Authorization": {"Bearer " + testToken}}
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /events with the API token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if resp, body := pageRequest(t, c, "POST", base+"/webhooks/dockerhub/"+testHubToken, "evil.example",
		bytes.NewReader(fixture(t, "dockerhub-push.json")), jsonHeaders()); resp.StatusCode != http.StatusAccepted {
		t.Errorf("a Docker Hub push: %d %s", resp.StatusCode, body)
	}
	if resp, _ := pageRequest(t, c, "GET", base+"/healthz", "evil.example", nil, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %d", resp.StatusCode)
	}

	// With a public URL: its host, loopback and the listener's IP; not
	// another IP address.
	pub := newTestEnv(t, func(o *Options) {
		o.PublicURL, o.ListenAddr = "https://hooks.example.com", "10.9.8.7:8080"
		o.ViewFrom = mustPrefixes(t, "127.0.0.0/8")
	})
	for host, code := range map[string]int{
		"hooks.example.com": 200, "HOOKS.example.com.:443": 200, "127.0.0.1" + port: 200, "localhost": 200, "[::1]": 200,
		"10.9.8.7:8080": 200, "10.9.8.8:8080": 421, "203.0.113.9": 421, "evil.example": 421, "example.com": 421,
	} {
		resp, body := pageRequest(t, c, "GET", pub.http.URL+"/ui/state", host, nil, nil)
		if resp.StatusCode != code {
			t.Errorf("public URL: GET /ui/state with Host %q: %d %s, want %d", host, resp.StatusCode, body, code)
		}
		if code == 421 && !strings.Contains(body, "open it at https://hooks.example.com") {
			t.Errorf("public URL: refusal does not say where the page is: %s", body)
		}
	}
}

// Issue 22, item 11: the page's actions check Origin, when the browser
// sends one: the page's own (the request's host, or the public URL's), or
// 403 and nothing done.
func TestPageActionsCheckOrigin(t *testing.T) {
	env := newTestEnv(t, func(o *Options) { o.QuietPeriod = time.Hour; o.PublicURL = "https://hooks.example.com" })
	base := env.http.URL
	c := browser(t)
	body, hdr := formLogin(testToken)
	if resp, _ := pageRequest(t, c, "POST", base+"/login", "", body, withHeaders(hdr, "Origin", "https://evil.example")); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("login from another origin: %d", resp.StatusCode)
	}
	login(t, c, base, testToken)
	_, page := send(t, c, "GET", base+"/", nil, nil)
	m := csrfMeta.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no CSRF token")
	}
	csrf := map[string]string{"X-CSRF-Token": m[1]}
	for _, origin := range []string{"https://evil.example", "null", "http://127.0.0.1.evil.example", "https://hooks.example.com.evil.example", "file://", "garbage"} {
		resp, body := pageRequest(t, c, "POST", base+"/ui/roll?service=my-service", "", nil, withHeaders(csrf, "Origin", origin))
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "cross-origin") {
			t.Fatalf("roll with Origin %q: %d %s, want 403", origin, resp.StatusCode, body)
		}
	}
	if n := len(env.srv.Store().List("")); n != 0 {
		t.Fatalf("%d rollouts queued by cross-origin actions", n)
	}
	for _, action := range []string{"/ui/promote?id=0123456789ab", "/ui/abort?id=0123456789ab"} {
		resp, body := pageRequest(t, c, "POST", base+action, "", nil, withHeaders(csrf, "Origin", "https://evil.example"))
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "cross-origin") {
			t.Fatalf("%s from another origin: %d %s, want 403", action, resp.StatusCode, body)
		}
	}
	for _, origin := range []string{"", base, "https://hooks.example.com", "https://HOOKS.EXAMPLE.COM:443"} {
		h := csrf
		if origin != "" {
			h = withHeaders(csrf, "Origin", origin)
		}
		if resp, body := pageRequest(t, c, "POST", base+"/ui/roll?service=my-service", "", nil, h); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("roll with Origin %q: %d %s", origin, resp.StatusCode, body)
		}
	}
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"}
	if resp, _ := pageRequest(t, c, "POST", base+"/logout", "", strings.NewReader("csrf="+url.QueryEscape(m[1])), form); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("logout from another origin: %d", resp.StatusCode)
	}
	if resp, _ := send(t, c, "GET", base+"/ui/state", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("the session ended by a cross-origin logout: %d", resp.StatusCode)
	}
}

// Issue 22, item 11: on the main (public) listener, /metrics takes the API
// token; /healthz stays open. On --metrics-listen, neither takes one
// (TestMetricsOnASeparateListener).
func TestMetricsOnTheMainListenerTakeTheAPIToken(t *testing.T) {
	env := newTestEnv(t, nil)
	resp, body := env.do(t, "GET", "/metrics", nil, nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" || strings.Contains(fmtDump(body), "my-service") {
		t.Fatalf("/metrics without a token: %d %v", resp.StatusCode, body)
	}
	for _, tok := range []string{testHubToken, "wrong-token-0123456789abc"} {
		if resp, _ := env.do(t, "GET", "/metrics", nil, map[string]string{"Authorization": "Bearer " + tok}); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("/metrics with another token: %d", resp.StatusCode)
		}
	}
	req, _ := http.NewRequest("GET", env.http.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != http.StatusOK || !strings.Contains(string(text), "fleetroll_queue_depth") {
		t.Fatalf("/metrics with the API token: %d", r.StatusCode)
	}
	if resp, _ := env.do(t, "GET", "/healthz", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %d", resp.StatusCode)
	}
}

func fmtDump(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// Issue 22, item 11: serve's listeners keep a ReadTimeout (slow clients);
// an event stream, whose request was read, outlives it (net/http lifts the
// read deadline once a request is read).
func TestEventStreamOutlivesTheReadTimeout(t *testing.T) {
	env := newTestEnv(t, nil)
	hs := httptest.NewUnstartedServer(env.srv.Handler())
	hs.Config.ReadTimeout = 200 * time.Millisecond
	hs.Start()
	t.Cleanup(hs.Close)
	t.Cleanup(env.srv.CloseStreams)
	resp := stream(t, hs.URL, "", map[string]string{"Authorization": "Bearer " + testToken})
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %d", resp.StatusCode)
	}
	kinds := make(chan string, 100)
	ended := make(chan error, 1)
	go func() {
		ended <- ReadEvents(resp.Body, func(_ uint64, kind string, _ []byte) error { kinds <- kind; return nil })
	}()
	select {
	case err := <-ended:
		t.Fatalf("the stream ended at the read timeout: %v", err)
	case <-time.After(4 * hs.Config.ReadTimeout):
	}
	r, ans := env.do(t, "POST", "/rollouts", []byte(`{"service":"other"}`), withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken))
	if r.StatusCode != http.StatusAccepted {
		t.Fatalf("%d %v", r.StatusCode, ans)
	}
	for {
		select {
		case k := <-kinds:
			if k == "queued" {
				return
			}
		case err := <-ended:
			t.Fatalf("the stream ended: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("no event after the read timeout")
		}
	}
}

// Issue 22, item 11: a payload of the wrong JSON type is told in JSON's
// terms, from every sender: the field's path, the type wanted and the type
// given, never a Go type or struct.
func TestSenderTypeErrorsSpeakJSON(t *testing.T) {
	env := newTestEnv(t, nil)
	gh := []byte(`{"action":"published","package":{"name":["my-service"],"namespace":"demo"}}`)
	hubBadPushedAt := []byte(`{"repository":{"repo_name":"demo/my-service"},"push_data":{"tag":"latest","pushed_at":"soon"}}`)
	for _, c := range []struct {
		name, path string
		body       []byte
		headers    map[string]string
		want       string
	}{
		{"dockerhub", "/webhooks/dockerhub/" + testHubToken, []byte(`{"repository":{"repo_name":"demo/my-service"},"push_data":{"tag":1}}`), jsonHeaders(),
			"push_data.tag: want a string, got a number"},
		{"dockerhub object", "/webhooks/dockerhub/" + testHubToken, []byte(`{"repository":"demo/my-service"}`), jsonHeaders(),
			"repository: want an object, got a string"},
		{"dockerhub pushed_at", "/webhooks/dockerhub/" + testHubToken, hubBadPushedAt, jsonHeaders(), "malformed JSON: a number field holds a string that is not a number"},
		{"dockerhub body", "/webhooks/dockerhub/" + testHubToken, []byte(`[1]`), jsonHeaders(), "the body: want an object, got an array"},
		{"registry", "/webhooks/registry", []byte(`{"events":[{"action":"push","target":{"repository":5}}]}`), registryHeaders(testRegToken),
			"events.target.repository: want a string, got a number"},
		{"registry events", "/webhooks/registry", []byte(`{"events":{"id":"x"}}`), registryHeaders(testRegToken),
			"events: want an array, got an object"},
		{"github", "/webhooks/github", gh, githubHeaders(testGHSecret, gh, "package"), "package.name: want a string, got an array"},
		{"manual", "/rollouts", []byte(`{"service":true}`), withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken),
			"service: want a string, got true or false"},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, ans := env.do(t, "POST", c.path, c.body, c.headers)
			msg, _ := ans["error"].(string)
			if resp.StatusCode != http.StatusBadRequest || msg != c.want {
				t.Fatalf("%d %q, want 400 %q", resp.StatusCode, msg, c.want)
			}
			for _, goWord := range []string{"Go ", "struct", "Number", "int64", "hook.", "main.", "json:", "Payload"} {
				if strings.Contains(msg, goWord) {
					t.Fatalf("the answer %q names Go's %q", msg, goWord)
				}
			}
		})
	}
	if n := len(env.srv.Store().List("")); n != 0 {
		t.Fatalf("%d rollouts queued", n)
	}
	// An encoding/json error that reaches badPayload unwrapped says the same.
	raw := &json.UnmarshalTypeError{Value: "number 1.5", Type: reflect.TypeFor[int64](), Field: "events.target.size", Struct: "registryEnvelope"}
	if _, body := badPayload(errors.Join(raw)); body.(map[string]any)["error"] != "events.target.size: want an integer, got a number with a fraction or out of range" {
		t.Fatalf("badPayload: %v", body)
	}
}

package hook

import (
	"crypto/hmac"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

const notifyKey = "webhook-signing-key-0123456789"

// received is one request a notification receiver got.
type received struct {
	path    string
	body    []byte
	headers http.Header
}

// notifyReceivers is a local server with a Slack-shaped receiver, a webhook
// receiver, and a flaky one that answers 503 first.
type notifyReceivers struct {
	got  chan received
	hold chan struct{} // the flaky one's retry of the first rollout waits for it
	held chan struct{} // closed when that retry has arrived and waits
	url  string

	mu         sync.Mutex
	firstFlaky string // the first rollout the flaky one was told of
	flakyHits  int    // and how often
}

func newNotifyReceivers(t *testing.T) *notifyReceivers {
	nr := &notifyReceivers{got: make(chan received, 20), hold: make(chan struct{}), held: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /slack/", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		nr.got <- received{"slack", b, r.Header}
	})
	mux.HandleFunc("POST /hook/", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		nr.got <- received{"hook", b, r.Header}
	})
	mux.HandleFunc("POST /flaky/", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var n WebhookNotification
		_ = json.Unmarshal(b, &n)
		nr.mu.Lock()
		if nr.firstFlaky == "" {
			nr.firstFlaky = n.Rollout.ID
		}
		first := n.Rollout.ID == nr.firstFlaky
		hits := 0
		if first {
			nr.flakyHits++
			hits = nr.flakyHits
		}
		nr.mu.Unlock()
		switch {
		case first && hits == 1:
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		case first:
			// The retry of the first rollout's message waits.
			if hits == 2 {
				close(nr.held)
			}
			select {
			case <-nr.hold:
			case <-r.Context().Done():
				return
			}
		}
		nr.got <- received{"flaky", b, r.Header}
	})
	srv := newHTTPServer(t, mux)
	nr.url = srv.URL
	return nr
}

func notifyEnv(t *testing.T, nr *notifyReceivers, cfgYAML string, secrets map[string]NotifySecret) (*testEnv, error) {
	t.Helper()
	cfg, err := ParseConfig([]byte(cfgYAML), testBase())
	if err != nil {
		t.Fatal(err)
	}
	return newTestEnvErr(t, func(o *Options) {
		o.Config = cfg
		o.PublicURL = notifyPublicURL
		c, err := NewCallbacker([]string{DefaultCallbackAllow}, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.AllowNotify(nr.url); err != nil {
			t.Fatal(err)
		}
		c.backoff = 10 * time.Millisecond
		o.Callbacks = c
		o.NotifySecret = func(name string) (NotifySecret, error) {
			s, ok := secrets[name]
			if !ok {
				return NotifySecret{}, errors.New("no secret")
			}
			return s, nil
		}
	})
}

const notifyPublicURL = "https://hooks.example.com"

const notifyConfig = `
notifications:
  - name: team
    kind: slack
  - name: ci
    kind: webhook
    events: [started, failed, succeeded]
  - name: flaky
    kind: webhook
    events: [succeeded]
services:
  - name: my-service
    ports: 8901-8903
    notify: [team, ci, flaky]
`

func TestNotifications(t *testing.T) {
	nr := newNotifyReceivers(t)
	env, err := notifyEnv(t, nr, notifyConfig, map[string]NotifySecret{
		"team":  {URL: nr.url + "/slack/T000/B000/XXXX"},
		"ci":    {URL: nr.url + "/hook/ci", Key: notifyKey},
		"flaky": {URL: nr.url + "/flaky/x", Key: notifyKey},
	})
	if err != nil {
		t.Fatal(err)
	}
	auth := withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken)
	trigger := func() string {
		resp, ans := env.do(t, "POST", "/rollouts", []byte(`{"service":"my-service"}`), auth)
		if resp.StatusCode != 202 {
			t.Fatalf("trigger: %d %v", resp.StatusCode, ans)
		}
		return ans["id"].(string)
	}
	first := trigger()
	if rep := waitFinal(t, env, first); rep.Status != fleetroll.StatusSucceeded {
		t.Fatalf("first rollout: %+v", rep)
	}
	// The flaky target answers 503 once; the outbox retries after its
	// backoff, and the retry is held. Nothing orders that retry against the
	// next rollout, so the test waits for it: then the next rollout runs
	// while it is held, and its notifications must still go out.
	select {
	case <-nr.held:
	case <-time.After(10 * time.Second):
		nr.mu.Lock()
		hits := nr.flakyHits
		nr.mu.Unlock()
		t.Fatalf("the flaky target got the first rollout's message %d times, want 2 (a 503, then the held retry)", hits)
	}
	second := trigger()
	if rep := waitFinal(t, env, second); rep.Status != fleetroll.StatusSucceeded {
		t.Fatalf("second rollout: %+v", rep)
	}
	// Before the held retry goes through: both rollouts' messages to the
	// others, and the second's to the flaky target.
	want := map[string]int{"slack " + first: 2, "hook " + first: 2, "slack " + second: 2, "hook " + second: 2, "flaky " + second: 1}
	seen := map[string]int{}
	deadline := time.After(10 * time.Second)
	for !maps.Equal(seen, want) {
		select {
		case r := <-nr.got:
			seen[r.path+" "+checkNotification(t, r)]++
		case <-deadline:
			t.Fatalf("notifications seen %v, want %v", seen, want)
		}
	}
	nr.mu.Lock()
	hits := nr.flakyHits
	nr.mu.Unlock()
	if hits != 2 {
		t.Fatalf("the flaky target got the first rollout's message %d times while held, want 2 (a 503, then the held retry)", hits)
	}
	close(nr.hold)
	select {
	case r := <-nr.got:
		if r.path != "flaky" || checkNotification(t, r) != first {
			t.Fatalf("after the hold: %s", r.path)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the retried notification never arrived")
	}
}

func checkNotification(t *testing.T, r received) string {
	t.Helper()
	if r.path == "slack" {
		var m map[string]string
		if err := json.Unmarshal(r.body, &m); err != nil || len(m) != 1 || !strings.HasPrefix(m["text"], "fleetroll ") || !strings.Contains(m["text"], ": my-service: ") {
			t.Fatalf("Slack body %s", r.body)
		}
		id, _, _ := strings.Cut(strings.TrimPrefix(m["text"], "fleetroll "), ":")
		// The link is for the person reading it: the status page opened
		// on the rollout, not the API (which answers a browser 401).
		if link := " <" + notifyPublicURL + "/ui/rollouts/" + id + "|rollout " + id + ">"; !strings.HasSuffix(m["text"], link) {
			t.Fatalf("Slack text %q does not end with the page's link %q", m["text"], link)
		}
		return id
	}
	if sig := r.headers.Get(SignatureHeader); !hmac.Equal([]byte(sig), []byte(Sign(notifyKey, r.body))) {
		t.Fatalf("%s: signature %q does not verify", r.path, sig)
	}
	var n WebhookNotification
	if err := json.Unmarshal(r.body, &n); err != nil || n.Rollout.Service != "my-service" || r.headers.Get("X-Fleetroll-Event") != n.Event {
		t.Fatalf("webhook body %s", r.body)
	}
	if id := n.Rollout.ID; n.URL != notifyPublicURL+"/rollouts/"+id || n.PageURL != notifyPublicURL+"/ui/rollouts/"+id {
		t.Fatalf("webhook links: url %q, page_url %q", n.URL, n.PageURL)
	}
	if strings.Contains(string(r.body), "machine") || strings.Contains(string(r.body), "last_state") {
		t.Fatalf("a notification carries internal details: %s", r.body)
	}
	return n.Rollout.ID
}

// A target off the allow-list, without its URL or (a webhook) its key, or
// a configuration naming what does not exist: serve refuses to start, and
// nothing is called.
func TestNotificationsRefused(t *testing.T) {
	nr := newNotifyReceivers(t)
	var called atomic.Int32
	outside := newHTTPServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called.Add(1) }))
	for _, c := range []struct {
		secrets map[string]NotifySecret
		want    string
	}{
		{map[string]NotifySecret{"team": {URL: outside.URL + "/slack/x"}, "ci": {URL: nr.url + "/hook/", Key: notifyKey}, "flaky": {URL: nr.url + "/flaky/", Key: notifyKey}}, "not on --notify-allow"},
		{map[string]NotifySecret{"team": {URL: nr.url + "/slack/x"}, "ci": {URL: nr.url + "/hook/"}, "flaky": {URL: nr.url + "/flaky/", Key: notifyKey}}, "signing key"},
		{map[string]NotifySecret{"team": {URL: nr.url + "/slack/x"}, "ci": {URL: nr.url + "/hook/", Key: notifyKey}}, "no secret"},
	} {
		if _, err := notifyEnv(t, nr, notifyConfig, c.secrets); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.secrets, err, c.want)
		}
	}
	if called.Load() != 0 {
		t.Fatal("a target off the allow-list was called")
	}
	for cfg, want := range map[string]string{
		"notifications:\n  - {name: a, kind: email}\nservices:\n  - name: s\n":                 "kind",
		"notifications:\n  - {name: a, kind: slack, events: [done]}\nservices:\n  - name: s\n": "events",
		"notifications:\n  - {name: A_B, kind: slack}\nservices:\n  - name: s\n":               "name",
		"services:\n  - name: s\n    notify: [nope]\n":                                         "not among notifications",
	} {
		if _, err := ParseConfig([]byte(cfg), testBase()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", cfg, err, want)
		}
	}
}

// A tag that a glob let through cannot ping a channel or disguise a link in
// a Slack message: <, > and & reach Slack escaped, the link fleetroll adds
// itself stays a link.
func TestSlackMessageEscapesWhatASenderWrote(t *testing.T) {
	tag := "v1 <!channel> <mailto:ops@evil.example|approve here> & more"
	target := notifyTarget{Notification: Notification{Name: "team", Kind: NotifySlack}}
	r := fleetroll.Report{ID: "0123456789ab", Service: "my-service", Status: fleetroll.StatusSucceeded,
		Trigger: fleetroll.Trigger{Source: "dockerhub", Repository: "demo/my-service", Tag: tag}}
	for _, event := range []string{"started", "succeeded"} {
		body, _, err := target.message(event, r, rolloutLinks{status: "https://fleetroll.example/rollouts/0123456789ab", page: "https://fleetroll.example/ui/rollouts/0123456789ab"})
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]string
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		text := m["text"]
		if strings.Contains(text, "<!channel>") || strings.Contains(text, "<mailto:") || strings.Contains(text, " & ") {
			t.Errorf("%s: the tag reached Slack unescaped: %s", event, text)
		}
		if !strings.Contains(text, "&lt;!channel&gt; &lt;mailto:ops@evil.example|approve here&gt; &amp; more") {
			t.Errorf("%s: the tag is not in the text, escaped: %s", event, text)
		}
		if !strings.HasSuffix(text, " <https://fleetroll.example/ui/rollouts/0123456789ab|rollout 0123456789ab>") {
			t.Errorf("%s: fleetroll's own link is gone: %s", event, text)
		}
	}
}

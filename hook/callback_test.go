package hook

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestCallbackAllowList(t *testing.T) {
	var hits atomic.Int32
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	c, err := NewCallbacker([]string{"https://registry.hub.docker.com"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{srv.URL + "/hook", "http://registry.hub.docker.com/u/x/", "https://registry.hub.docker.com.evil.example/u/x/",
		"https://user@registry.hub.docker.com/u/x/", "/relative", "::"} {
		if c.Allowed(u) {
			t.Errorf("%s allowed", u)
		}
	}
	if !c.Allowed("https://REGISTRY.hub.docker.com/u/demo/my-service/hook/abc/") {
		t.Error("Docker Hub's own origin refused")
	}
	if err := c.Send(context.Background(), srv.URL+"/hook", CallbackResult{State: "success"}); !errors.Is(err, ErrCallbackNotAllowed) {
		t.Fatalf("err = %v", err)
	}
	if hits.Load() != 0 {
		t.Fatal("a callback off the allow-list was sent")
	}
	for _, bad := range []string{"ftp://x", "https://x/path", "x", "https://u:p@x"} {
		if _, err := NewCallbacker([]string{bad}, time.Second); err == nil {
			t.Errorf("origin %q accepted", bad)
		}
	}
}

func TestCallbackSendsTheResult(t *testing.T) {
	got := make(chan CallbackResult, 1)
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(400)
			return
		}
		var res CallbackResult
		_ = json.NewDecoder(r.Body).Decode(&res)
		got <- res
	}))
	c, _ := NewCallbacker([]string{srv.URL}, time.Second)
	long := strings.Repeat("é", 200) // 400 bytes
	if err := c.Send(context.Background(), srv.URL+"/u/x/hook/1/", CallbackResult{State: "failure", Description: long, Context: "fleetroll"}); err != nil {
		t.Fatal(err)
	}
	res := <-got
	if res.State != "failure" || len(res.Description) > 255 || !strings.HasPrefix(long, res.Description) {
		t.Fatalf("result = %+v (%d bytes)", res, len(res.Description))
	}
}

func TestCallbackDoesNotFollowRedirectsToOtherHosts(t *testing.T) {
	var other atomic.Int32
	elsewhere := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { other.Add(1) }))
	var same atomic.Int32
	allowed := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/away":
			http.Redirect(w, r, elsewhere.URL+"/x", http.StatusTemporaryRedirect)
		case "/here":
			http.Redirect(w, r, "/final", http.StatusTemporaryRedirect)
		case "/final":
			same.Add(1)
		}
	}))
	c, _ := NewCallbacker([]string{allowed.URL}, time.Second)
	c.backoff = time.Millisecond
	if err := c.Send(context.Background(), allowed.URL+"/away", CallbackResult{State: "success"}); err == nil || !strings.Contains(err.Error(), "another origin") {
		t.Fatalf("err = %v", err)
	}
	if other.Load() != 0 {
		t.Fatal("the redirect to another host was followed")
	}
	if err := c.Send(context.Background(), allowed.URL+"/here", CallbackResult{State: "success"}); err != nil || same.Load() != 1 {
		t.Fatalf("same-origin redirect: err %v, hits %d", err, same.Load())
	}
}

func TestCallbackRetries(t *testing.T) {
	var n atomic.Int32
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) < 3 {
			w.WriteHeader(503)
		}
	}))
	c, _ := NewCallbacker([]string{srv.URL}, time.Second)
	c.backoff = time.Millisecond
	if err := c.Send(context.Background(), srv.URL+"/cb", CallbackResult{State: "success"}); err != nil || n.Load() != 3 {
		t.Fatalf("err %v after %d attempts", err, n.Load())
	}
	// A 4xx is final: one attempt.
	n.Store(0)
	srv4 := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.Add(1); w.WriteHeader(404) }))
	c4, _ := NewCallbacker([]string{srv4.URL}, time.Second)
	c4.backoff = time.Millisecond
	if err := c4.Send(context.Background(), srv4.URL+"/cb", CallbackResult{State: "success"}); err == nil || n.Load() != 1 {
		t.Fatalf("err %v after %d attempts", err, n.Load())
	}
}

// The notifications' allow-list is apart from the callbacks': allowing a
// chat for notifications leaves Docker Hub's callback origin in place, a
// callback cannot go to a notification origin, nor a notification to a
// callback origin (issue 25: one flag guarded two unrelated things).
func TestNotifyAllowListIsApartFromTheCallbacks(t *testing.T) {
	var hits atomic.Int32
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	c, err := NewCallbacker([]string{DefaultCallbackAllow}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AllowNotify(srv.URL); err != nil {
		t.Fatal(err)
	}
	const hub = "https://registry.hub.docker.com/u/demo/my-service/hook/abc/"
	if !c.Allowed(hub) || c.NotifyAllowed(hub) {
		t.Errorf("Docker Hub: callback allowed %v, notification allowed %v; want true, false", c.Allowed(hub), c.NotifyAllowed(hub))
	}
	if c.Allowed(srv.URL+"/slack") || !c.NotifyAllowed(srv.URL+"/slack") {
		t.Errorf("the notification origin: callback allowed %v, notification allowed %v; want false, true", c.Allowed(srv.URL+"/slack"), c.NotifyAllowed(srv.URL+"/slack"))
	}
	if err := c.Send(context.Background(), srv.URL+"/slack", CallbackResult{State: "success"}); !errors.Is(err, ErrCallbackNotAllowed) {
		t.Fatalf("a callback to a notification origin: %v", err)
	}
	if hits.Load() != 0 {
		t.Fatal("a callback went to a notification origin")
	}
	if err := c.deliver(context.Background(), srv.URL+"/slack", true, []byte("{}"), nil); err != nil || hits.Load() != 1 {
		t.Fatalf("a notification on its own list: %v, %d requests", err, hits.Load())
	}
	if err := c.AllowNotify("https://hooks.slack.com/services"); err == nil {
		t.Error("a notification origin with a path accepted")
	}
}

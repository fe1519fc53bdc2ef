package hook

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// stream opens GET /events on base with the headers; the caller closes the
// body.
func stream(t *testing.T, base, query string, headers map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "GET", base+"/events"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

var errEnough = errors.New("enough")

// readUntil reads events until one of the rollout has the kind; it returns
// the events read.
func readUntil(t *testing.T, resp *http.Response, rollout, kind string) []StreamEvent {
	t.Helper()
	var got []StreamEvent
	err := ReadEvents(resp.Body, func(id uint64, k string, data []byte) error {
		var ev StreamEvent
		if k == "reset" {
			got = append(got, StreamEvent{Kind: k})
			return nil
		}
		if err := json.Unmarshal(data, &ev); err != nil {
			return err
		}
		if ev.ID != id || ev.Kind != k {
			t.Errorf("event id %d kind %s carries %d %s", id, k, ev.ID, ev.Kind)
		}
		got = append(got, ev)
		if ev.Rollout == rollout && ev.Kind == kind {
			return errEnough
		}
		return nil
	})
	if !errors.Is(err, errEnough) {
		t.Fatalf("the stream ended (%v) before %s of %s; got %d events", err, kind, rollout, len(got))
	}
	return got
}

func TestEventsStreamARollout(t *testing.T) {
	env := newTestEnv(t, nil)
	auth := map[string]string{"Authorization": "Bearer " + testToken}
	for _, h := range []map[string]string{nil, {"Authorization": "Bearer " + testHubToken}} {
		resp := stream(t, env.http.URL, "", h)
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("events with %v: %d", h, resp.StatusCode)
		}
	}
	for q, code := range map[string]int{"?rollout=../x": 400} {
		resp := stream(t, env.http.URL, q, auth)
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Fatalf("%s: %d", q, resp.StatusCode)
		}
	}
	if resp := stream(t, env.http.URL, "", withHeaders(auth, "Last-Event-ID", "x")); resp.StatusCode != 400 {
		t.Fatalf("bad Last-Event-ID: %d", resp.StatusCode)
	}

	resp := stream(t, env.http.URL, "", auth)
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	r, ans := env.do(t, "POST", "/rollouts", []byte(`{"service":"my-service"}`), withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken))
	if r.StatusCode != 202 {
		t.Fatalf("trigger: %d %v", r.StatusCode, ans)
	}
	id := ans["id"].(string)
	got := readUntil(t, resp, id, string(fleetroll.StatusSucceeded))
	var kinds []string
	perUnit := map[string][]string{}
	for i, ev := range got {
		if i > 0 && ev.ID <= got[i-1].ID {
			t.Fatalf("ids not increasing: %d after %d", ev.ID, got[i-1].ID)
		}
		if ev.Rollout != id || ev.Record.ID != id || ev.Status != ev.Record.Status {
			t.Fatalf("event %+v", ev)
		}
		kinds = append(kinds, ev.Kind)
		if ev.Unit != "" {
			perUnit[ev.Unit] = append(perUnit[ev.Unit], ev.Kind)
		}
	}
	if kinds[0] != "queued" || kinds[len(kinds)-1] != "succeeded" || !strings.Contains(strings.Join(kinds, " "), "running") {
		t.Fatalf("kinds %v", kinds)
	}
	for _, u := range testUnits[:3] {
		if w := "stopping stopped starting running"; !strings.Contains(strings.Join(perUnit[u], " "), w) {
			t.Errorf("%s: %v, want %s", u, perUnit[u], w)
		}
	}
	final := got[len(got)-1].Record
	if final.Restarted() != 3 {
		t.Fatalf("final record in the stream: %+v", final)
	}

	// A client that reconnects gets what came after its last event, of its
	// rollout only.
	mid := got[len(got)/2].ID
	again := stream(t, env.http.URL, "?rollout="+id, withHeaders(auth, "Last-Event-ID", strconv.FormatUint(mid, 10)))
	defer again.Body.Close()
	rest := readUntil(t, again, id, string(fleetroll.StatusSucceeded))
	if rest[0].ID != mid+1 || len(rest) != len(got)-len(got)/2-1 {
		t.Fatalf("after %d: %d events from %d, want %d from %d", mid, len(rest), rest[0].ID, len(got)-len(got)/2-1, mid+1)
	}
	// IDs of another run (serve restarted): read the records again.
	other := stream(t, env.http.URL, "", withHeaders(auth, "Last-Event-ID", "999999"))
	defer other.Body.Close()
	var first string
	_ = ReadEvents(other.Body, func(_ uint64, k string, _ []byte) error { first = k; return errEnough })
	if first != "reset" {
		t.Fatalf("a stale Last-Event-ID: first event %q", first)
	}
}

// A stream outlives the server's write timeout, and ends when the server
// shuts down instead of holding it up.
func TestEventsOutliveTheWriteTimeoutAndEndOnShutdown(t *testing.T) {
	env := newTestEnv(t, nil)
	hs := httptest.NewUnstartedServer(env.srv.Handler())
	hs.Config.WriteTimeout = 200 * time.Millisecond
	hs.Config.RegisterOnShutdown(env.srv.CloseStreams)
	hs.Start()
	defer hs.Close()
	resp := stream(t, hs.URL, "", map[string]string{"Authorization": "Bearer " + testToken})
	defer resp.Body.Close()
	// Past the server's write timeout, an event still arrives.
	time.Sleep(400 * time.Millisecond) // the time under test, not a synchronisation
	r, ans := env.do(t, "POST", "/rollouts", []byte(`{"service":"other"}`), withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken))
	if r.StatusCode != 202 {
		t.Fatalf("trigger: %d %v", r.StatusCode, ans)
	}
	readUntil(t, resp, ans["id"].(string), "queued")

	done := make(chan error, 1)
	go func() { done <- hs.Config.Shutdown(t.Context()) }()
	var rest bytes.Buffer
	if _, err := rest.ReadFrom(resp.Body); err != nil {
		t.Fatalf("the stream broke instead of ending: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// The feed keeps at least feedSize events: a client that missed more is
// told to read the records again; one that missed fewer gets them all.
func TestFeedKeepsTheNewestEvents(t *testing.T) {
	s := NewStore(10)
	for i := range 2*feedSize + 10 {
		s.Put(fleetroll.Report{ID: strconv.Itoa(i), Service: "a", Status: fleetroll.StatusQueued})
	}
	sub, backlog, complete := s.Subscribe(1, "")
	s.Unsubscribe(sub)
	if complete || len(backlog) < feedSize {
		t.Fatalf("after 1: complete %v, %d events", complete, len(backlog))
	}
	last := uint64(2*feedSize + 10)
	sub, backlog, complete = s.Subscribe(last-5, "")
	defer s.Unsubscribe(sub)
	if !complete || len(backlog) != 5 || backlog[0].ID != last-4 {
		t.Fatalf("after %d: complete %v, %d events", last-5, complete, len(backlog))
	}
	s.CloseFeed()
	if _, open := <-sub.C; open {
		t.Fatal("the subscription outlived the feed")
	}
}

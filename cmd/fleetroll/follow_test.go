package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/hook"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// followServer runs serve's handler over a fake fleet of a@1 and a@2; the
// first stop waits until a client has opened the event stream.
func followServer(t *testing.T, ff *fakefleet.Fleet) (string, func() string) {
	t.Helper()
	fsrv := httptest.NewServer(ff)
	t.Cleanup(fsrv.Close)
	fleet, err := fleetroll.Connect(fsrv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := hook.ParseConfig([]byte("services:\n  - name: a\n    ports: 1-2\n"), testBase())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := hook.New(hook.Options{Fleet: fleet, Config: cfg, Secrets: hook.Secrets{API: token}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Run(ctx, time.Second) }()
	t.Cleanup(func() { cancel(); <-done })
	streaming := make(chan struct{})
	var once sync.Once
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/events" {
			// The stream's headers go out once it has subscribed.
			w = &onHeader{ResponseWriter: w, fn: func() { once.Do(func() { close(streaming) }) }}
		}
		srv.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	t.Cleanup(srv.CloseStreams)
	ff.SetHook(func(call string) {
		if call == "units" { // the plan, before any unit is touched
			<-streaming
		}
	})
	return hs.URL, func() string { return postRollout(t, hs.URL, token, "a") }
}

// status --follow prints a rollout's steps as they happen and exits with
// restart's exit code; a rollout that ended is printed at once.
func TestStatusFollowsARollout(t *testing.T) {
	ff := fakefleet.New("a@1.service", "a@2.service")
	ff.Update("a@2.service", func(u *fakefleet.Unit) { u.FailStart = true })
	url, trigger := followServer(t, ff)
	id := trigger()
	t.Setenv("FLEETROLL_TOKEN", token)
	code, out, errs := runCLI(t, "status", "--follow", id, "--server", url)
	if code != exitFailed {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	for _, want := range []string{"a@1.service: stopping", "a@1.service: running in", "a@2.service: FAILED after"} {
		if !strings.Contains(errs, want) {
			t.Errorf("progress lacks %q:\n%s", want, errs)
		}
	}
	if !strings.Contains(out, "rollout "+id+" of a failed: 1/2 restarted") {
		t.Fatalf("summary:\n%s", out)
	}
	// Ended already: the record at once, same exit code, no waiting.
	code, out, _ = runCLI(t, "status", "-f", id, "--server", url, "-o", "json")
	var rec fleetroll.Report
	if code != exitFailed || json.Unmarshal([]byte(out), &rec) != nil || rec.ID != id || rec.Status != fleetroll.StatusFailed {
		t.Fatalf("exit %d:\n%s", code, out)
	}

	for _, c := range []struct {
		args []string
		env  string
		code int
		want string
	}{
		{[]string{"status", "-f", "000000000000", "--server", url}, token, exitUsage, "404"},
		{[]string{"status", "-f", id, "--server", url}, "wrong-token-0123456789", exitUsage, "401"},
		{[]string{"status", "-f", id}, token, exitUsage, "--server"},
		{[]string{"status", "-f", "nope", "--server", url}, token, exitUsage, "rollout ID"},
		{[]string{"status", "-f", id, "--server", url}, "", exitUsage, "API token is required"},
	} {
		t.Setenv("FLEETROLL_TOKEN", c.env)
		code, out, errs := runCLI(t, c.args...)
		if code != c.code || !strings.Contains(errs, c.want) || strings.Contains(out+errs, "wrong-token") {
			t.Errorf("%v: exit %d, want %d with %q:\n%s%s", c.args, code, c.code, c.want, out, errs)
		}
	}
}

// onHeader calls fn when the response's headers are written.
type onHeader struct {
	http.ResponseWriter
	fn func()
}

func (w *onHeader) WriteHeader(code int) {
	w.fn()
	w.ResponseWriter.WriteHeader(code)
}

func (w *onHeader) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// status --follow gives up with a clear error on a server it cannot reach,
// and on one that has not opened the stream for followGiveUp.
func TestStatusFollowGivesUp(t *testing.T) {
	t.Setenv("FLEETROLL_TOKEN", token)
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close() // nothing listens there any more
	code, out, errs := runCLI(t, "status", "-f", "0123456789ab", "--server", gone.URL)
	if code != exitFailed || !strings.Contains(errs, "fleetroll serve at "+gone.URL+" cannot be reached") {
		t.Fatalf("exit %d:\n%s%s", code, out, errs)
	}

	prev := followGiveUp
	followGiveUp = 1500 * time.Millisecond
	t.Cleanup(func() { followGiveUp = prev })
	var n atomic.Int32
	busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":"etcd unreachable"}`))
	}))
	defer busy.Close()
	code, out, errs = runCLI(t, "status", "-f", "0123456789ab", "--server", busy.URL)
	if code != exitFailed || !strings.Contains(errs, "no event stream for 1.5s") || !strings.Contains(errs, "503") || n.Load() < 2 {
		t.Fatalf("exit %d after %d tries:\n%s%s", code, n.Load(), out, errs)
	}
}

// A stream that was open longer than followGiveUp and ends (its receiver
// restarts) is tried again for followGiveUp from its end, not given up at
// the first refusal.
func TestStatusFollowRetriesAfterALongStream(t *testing.T) {
	t.Setenv("FLEETROLL_TOKEN", token)
	prev := followGiveUp
	followGiveUp = time.Second
	t.Cleanup(func() { followGiveUp = prev })
	var streams, refused atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/rollouts/0123456789ab" {
			_ = json.NewEncoder(w).Encode(fleetroll.Report{ID: "0123456789ab", Service: "a", Status: fleetroll.StatusRunning})
			return
		}
		if streams.Add(1) > 1 {
			refused.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable) // restarting
			_, _ = w.Write([]byte(`{"error":"shutting down"}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(": ping\n\n"))
		w.(http.Flusher).Flush()
		// The stream outlives followGiveUp, then its receiver goes.
		select {
		case <-time.After(followGiveUp + 200*time.Millisecond):
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	code, out, errs := runCLI(t, "status", "-f", "0123456789ab", "--server", srv.URL)
	if code != exitFailed || !strings.Contains(errs, "no event stream for 1s") || refused.Load() < 2 {
		t.Fatalf("exit %d after %d refusals:\n%s%s", code, refused.Load(), out, errs)
	}
}

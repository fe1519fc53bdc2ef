package hook

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/clocktest"
)

// A callback or notification target answering 429 (or 503) with
// Retry-After is retried no sooner than it asked: in seconds or as an HTTP
// date, on the injected clock; one that asks for more than the longest
// wait, or past the deadline, is given up on at once.
func TestRetryAfterIsHonoured(t *testing.T) {
	clock := clocktest.New()
	for _, tc := range []struct {
		name         string
		notification bool
		status       int
		retryAfter   string
		asked        time.Duration
	}{
		{"callback, 429, seconds", false, http.StatusTooManyRequests, "120", 120 * time.Second},
		{"notification, 429, HTTP date", true, http.StatusTooManyRequests, "date", 90 * time.Second},
		{"notification, 503, seconds", true, http.StatusServiceUnavailable, "7", 7 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.retryAfter == "date" {
				tc.retryAfter = clock.Now().Add(tc.asked).UTC().Format(http.TimeFormat)
			}
			var hits atomic.Int32
			got := make(chan int32, 4)
			srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := hits.Add(1)
				if n == 1 {
					w.Header().Set("Retry-After", tc.retryAfter)
					w.WriteHeader(tc.status)
				}
				got <- n
			}))
			c, err := NewCallbacker([]string{srv.URL}, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.AllowNotify(srv.URL); err != nil {
				t.Fatal(err)
			}
			c.clock = clock
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			made := clock.Made()
			start := clock.Now()
			done := make(chan error, 1)
			// The callbacks' deadline is past the wait asked (the clock's
			// minutes take no real time).
			dctx, dcancel := context.WithTimeout(t.Context(), 15*time.Minute)
			defer dcancel()
			go func() {
				done <- c.deliver(dctx, srv.URL+"/hook", tc.notification, []byte(`{}`), map[string]string{"Content-Type": "application/json"})
			}()
			<-got
			// The backoff (1 s, jittered to 0.5–1.5 s) is shorter than the
			// wait asked: the retry is armed for exactly that.
			if !clock.WaitTimerAt(ctx, made, start.Add(tc.asked)) {
				t.Fatalf("no retry armed at %s", tc.asked)
			}
			// A millisecond short of it, the retry is still waiting (its
			// timer pending, the target asked once).
			clock.Advance(tc.asked - time.Millisecond)
			if !clock.WaitTimerAt(ctx, made, start.Add(tc.asked)) || hits.Load() != 1 {
				t.Fatalf("retried before the %s it asked (%d attempts)", tc.asked, hits.Load())
			}
			clock.Advance(time.Millisecond)
			if n := <-got; n != 2 {
				t.Fatalf("attempt %d", n)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("more than the longest wait", func(t *testing.T) {
		var hits atomic.Int32
		srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
		}))
		c, _ := NewCallbacker([]string{srv.URL}, time.Second)
		c.clock = clock
		err := c.Send(t.Context(), srv.URL+"/hook", CallbackResult{State: "success"})
		if err == nil || !strings.Contains(err.Error(), "given up") || hits.Load() != 1 {
			t.Fatalf("err %v after %d attempts", err, hits.Load())
		}
	})
	t.Run("past the deadline", func(t *testing.T) {
		var hits atomic.Int32
		srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			w.Header().Set("Retry-After", "60")
			w.WriteHeader(http.StatusServiceUnavailable)
		}))
		c, _ := NewCallbacker([]string{srv.URL}, time.Second)
		c.clock = clock
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		err := c.Send(ctx, srv.URL+"/hook", CallbackResult{State: "success"})
		if err == nil || !strings.Contains(err.Error(), "deadline") || hits.Load() != 1 {
			t.Fatalf("err %v after %d attempts", err, hits.Load())
		}
	})
}

// The backoff is jittered around its step: never under half nor past one
// and a half of it.
func TestJitteredBackoff(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 200 {
		d := jittered(time.Second)
		if d < 500*time.Millisecond || d >= 1500*time.Millisecond {
			t.Fatalf("jittered(1s) = %s", d)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Fatalf("%d distinct waits in 200: no jitter", len(seen))
	}
	if jittered(0) != 0 {
		t.Fatal("jittered(0)")
	}
}

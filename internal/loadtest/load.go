// Package loadtest measures a rollout under load on the local cluster: a
// constant rate of requests through nginx (upstreams rendered by confd from
// the sidekicks' announcements) to the demo service's instances, while
// fleetroll or a naive loop restarts them. bench/load prints its figures;
// the e2e suite runs a smaller version as a test.
package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// LoadOptions shapes the requests.
type LoadOptions struct {
	Rate      int           // requests per second, sent on a fixed schedule
	SlowEvery int           // every Nth request is slow (8: 12.5 %)
	Slow      time.Duration // how long a slow request takes at the instance
	Timeout   time.Duration // a request that takes longer has failed
}

// Load sends POST requests at a constant rate to the proxy's unix socket
// until stopped. POST: a proxy must not replay them on another instance,
// so a request cut by a stopping instance is seen as the client sees it.
type Load struct {
	opt    LoadOptions
	client *http.Client
	stop   chan struct{}
	done   chan struct{}
	wg     sync.WaitGroup

	mu      sync.Mutex
	results []result
	sent    int
}

type result struct {
	at      time.Time
	latency time.Duration
	slow    bool
	failure string // empty: 2xx
}

// StartLoad begins sending to the proxy listening on the unix socket.
func StartLoad(ctx context.Context, socket string, opt LoadOptions) *Load {
	if opt.Timeout == 0 {
		opt.Timeout = 10 * time.Second
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "unix", socket)
		},
		// A connection per request: nginx closes idle client connections
		// when confd reloads it, and a POST sent on one just then fails in
		// the client (which may not resend it) whatever the rollout does.
		DisableKeepAlives: true,
	}
	l := &Load{
		opt:    opt,
		client: &http.Client{Transport: tr, Timeout: opt.Timeout},
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	go l.run(ctx)
	return l
}

func (l *Load) run(ctx context.Context) {
	defer close(l.done)
	every := time.Second / time.Duration(l.opt.Rate)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-l.stop:
			return
		case <-tick.C:
		}
		slow := l.opt.SlowEvery > 0 && n%l.opt.SlowEvery == 0
		l.mu.Lock()
		l.sent++
		l.mu.Unlock()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			r := l.one(ctx, n, slow)
			l.mu.Lock()
			l.results = append(l.results, r)
			l.mu.Unlock()
		}()
	}
}

func (l *Load) one(ctx context.Context, n int, slow bool) result {
	url := fmt.Sprintf("http://proxy/?n=%d", n)
	if slow {
		url += "&sleep=" + l.opt.Slow.String()
	}
	r := result{at: time.Now(), slow: slow}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("{}"))
	if err != nil {
		r.failure = err.Error()
		return r
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.client.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	r.latency = time.Since(r.at)
	switch {
	case err != nil:
		r.failure = classify(err)
	case resp.StatusCode/100 != 2:
		r.failure = fmt.Sprintf("HTTP %d", resp.StatusCode)
	}
	return r
}

func classify(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "connection closed"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	default:
		return "error: " + err.Error()
	}
}

// Sent is how many requests have been sent so far.
func (l *Load) Sent() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent
}

// WaitSent waits until at least n requests were sent.
func (l *Load) WaitSent(ctx context.Context, n int) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for l.Sent() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d requests (%d sent): %w", n, l.Sent(), ctx.Err())
		case <-l.done:
			return fmt.Errorf("the load stopped after %d requests", l.Sent())
		case <-tick.C:
		}
	}
	return nil
}

// Stop ends the load, waits for the requests in flight and sums them up.
func (l *Load) Stop() Result {
	close(l.stop)
	<-l.done
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return summarize(l.results)
}

// Result sums up a load run.
type Result struct {
	Requests int
	Slow     int
	Failed   int
	Failures map[string]int // by kind: "HTTP 502", "connection closed", ...
	// Latency percentiles of all requests, failed ones included.
	P50, P90, P99, Max time.Duration
	// MinUpstreams is the fewest instances the proxy routed to during the
	// rollout (its rendered upstreams, sampled every 50 ms).
	MinUpstreams int
}

func summarize(rs []result) Result {
	res := Result{Requests: len(rs), Failures: map[string]int{}}
	lat := make([]time.Duration, 0, len(rs))
	for _, r := range rs {
		if r.slow {
			res.Slow++
		}
		if r.failure != "" {
			res.Failed++
			res.Failures[r.failure]++
		}
		lat = append(lat, r.latency)
	}
	if len(lat) == 0 {
		return res
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	res.P50, res.P90, res.P99, res.Max = pct(0.50), pct(0.90), pct(0.99), lat[len(lat)-1]
	return res
}

// FailureSummary renders the failures by kind, "HTTP 502: 3, connection closed: 1".
func (r Result) FailureSummary() string {
	if r.Failed == 0 {
		return "none"
	}
	kinds := make([]string, 0, len(r.Failures))
	for k := range r.Failures {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = fmt.Sprintf("%s: %d", k, r.Failures[k])
	}
	return strings.Join(parts, ", ")
}

package hook

import (
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"golang.org/x/time/rate"
)

// Failed authentications are throttled per client (docs/serve.md,
// "Limits"): DefaultAuthBurst failures at once, then one every
// DefaultAuthEvery. A client over its budget is answered 429 at once,
// before any secret is compared; a client's failures never cost another.
const (
	DefaultAuthBurst   = 10
	DefaultAuthEvery   = time.Second
	DefaultAuthClients = 10000 // clients tracked; past it, new ones share one budget
)

// authThrottle owns the failure budgets of the clients (one lock, one map).
type authThrottle struct {
	mu       sync.Mutex
	clients  map[netip.Addr]*rate.Limiter
	overflow *rate.Limiter // the budget of clients past max
	limit    rate.Limit
	burst    int
	max      int
	clock    fleetroll.Clock
}

func newAuthThrottle(clock fleetroll.Clock) *authThrottle {
	limit := rate.Every(DefaultAuthEvery)
	return &authThrottle{clients: map[netip.Addr]*rate.Limiter{}, limit: limit, burst: DefaultAuthBurst,
		max: DefaultAuthClients, overflow: rate.NewLimiter(limit, DefaultAuthBurst), clock: clock}
}

// of is the client's budget (a lock is held). A full map first forgets
// the clients whose budget is whole again: they are as new.
func (a *authThrottle) of(client netip.Addr, now time.Time) *rate.Limiter {
	if l, ok := a.clients[client]; ok {
		return l
	}
	if len(a.clients) >= a.max {
		for c, l := range a.clients {
			if l.TokensAt(now) >= float64(a.burst) {
				delete(a.clients, c)
			}
		}
	}
	if len(a.clients) >= a.max {
		return a.overflow
	}
	l := rate.NewLimiter(a.limit, a.burst)
	a.clients[client] = l
	return l
}

// wait says how long the client must wait before its next attempt (0: it
// may try now).
func (a *authThrottle) wait(client netip.Addr) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.clock.Now()
	l := a.of(client, now)
	if l.TokensAt(now) >= 1 {
		return 0
	}
	return max(time.Duration((1-l.TokensAt(now))/float64(a.limit)*float64(time.Second)), time.Millisecond)
}

// failed spends one of the client's budget.
func (a *authThrottle) failed(client netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.clock.Now()
	a.of(client, now).AllowN(now, 1)
}

// authorize runs check (a secret compared in constant time) unless the
// client has spent its budget of failures: then 429 at once, and
// retry_after_seconds says when to try again.
func (s *Server) authorize(r *http.Request, check func() (int, any, bool)) (int, any, bool) {
	client := info(r).client
	if d := s.auth.wait(client); d > 0 {
		s.metrics.throttled.Inc()
		return http.StatusTooManyRequests, map[string]any{"error": "too many failed authentications from this client; retry later",
			"retry_after_seconds": int(math.Ceil(d.Seconds()))}, false
	}
	code, body, ok := check()
	if !ok {
		s.auth.failed(client)
	}
	return code, body, ok
}

// retryAfter sets Retry-After from an answer of authorize.
func retryAfter(w http.ResponseWriter, body any) {
	if m, ok := body.(map[string]any); ok {
		if s, ok := m["retry_after_seconds"].(int); ok {
			w.Header().Set("Retry-After", strconv.Itoa(s))
		}
	}
}

// Event streams are bounded: DefaultMaxStreams at once on a receiver, and
// DefaultMaxStreamsPerClient from one client address.
const (
	DefaultMaxStreams          = 256
	DefaultMaxStreamsPerClient = 8
)

// streamSlots owns the count of open event streams (one lock).
type streamSlots struct {
	mu        sync.Mutex
	open      int
	perClient map[netip.Addr]int
	max, each int
	released  chan struct{} // closed (and replaced) at each release
}

func newStreamSlots(max, each int) *streamSlots {
	return &streamSlots{perClient: map[netip.Addr]int{}, max: max, each: each, released: make(chan struct{})}
}

// of is how many streams client has open, and a channel closed at the
// next release.
func (s *streamSlots) of(client netip.Addr) (int, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.perClient[client], s.released
}

// take opens a slot for client, or says why not (0: taken): 429 for a
// client at its bound, 503 for a receiver at its own. release gives it
// back.
func (s *streamSlots) take(client netip.Addr) (code int, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.perClient[client] >= s.each:
		return http.StatusTooManyRequests, nil
	case s.open >= s.max:
		return http.StatusServiceUnavailable, nil
	}
	s.open++
	s.perClient[client]++
	var once sync.Once
	return 0, func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.open--
			if s.perClient[client]--; s.perClient[client] <= 0 {
				delete(s.perClient, client)
			}
			close(s.released)
			s.released = make(chan struct{})
		})
	}
}

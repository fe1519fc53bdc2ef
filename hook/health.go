package hook

import (
	"context"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	client "go.etcd.io/etcd/client/v2"
)

// Readiness checks: how often fleet's API (and etcd, when serve uses it)
// is asked whether it answers, and how long one check may take. A probe
// of /healthz reads the last result and never waits for fleet.
const (
	DefaultHealthInterval = time.Second
	DefaultHealthTimeout  = 2 * time.Second
)

// healthCheck keeps the readiness of the receiver: whether the services it
// depends on answered their last check. Its loop (run) is owned by
// Server.Run and ends with it.
type healthCheck struct {
	checks   map[string]func(context.Context) error // by dependency: fleet, etcd
	interval time.Duration
	timeout  time.Duration
	clock    fleetroll.Clock
	log      *slog.Logger

	mu    sync.Mutex
	state map[string]depState
	at    time.Time // when the last round ended
}

// depState is one dependency's last check.
type depState struct {
	ok    bool
	since time.Time // in this state since
	err   string    // the last error, for the log only
}

func newHealthCheck(fleet fleetroll.Fleet, etcd client.KeysAPI, interval, timeout time.Duration, clock fleetroll.Clock, log *slog.Logger) *healthCheck {
	h := &healthCheck{interval: interval, timeout: timeout, clock: clock, log: log, state: map[string]depState{},
		checks: map[string]func(context.Context) error{
			// GET /machines: the cheapest question fleet answers.
			"fleet": func(ctx context.Context) error { _, err := fleet.MachineIPs(ctx); return err },
		}}
	if etcd != nil {
		h.checks["etcd"] = func(ctx context.Context) error { return coord.Ping(ctx, etcd) }
	}
	return h
}

// round asks every dependency at once, each within the timeout, and keeps
// the answers; a change of state is logged once.
func (h *healthCheck) round(ctx context.Context) {
	type answer struct {
		name string
		err  error
	}
	answers := make(chan answer, len(h.checks))
	for name, check := range h.checks {
		go func() {
			cctx, cancel := context.WithTimeout(ctx, h.timeout)
			defer cancel()
			answers <- answer{name, check(cctx)}
		}()
	}
	got := make([]answer, 0, len(h.checks))
	for range h.checks {
		got = append(got, <-answers)
	}
	now := h.clock.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, a := range got {
		prev, seen := h.state[a.name]
		st := depState{ok: a.err == nil, since: prev.since}
		if a.err != nil {
			st.err = a.err.Error()
		}
		if !seen || prev.ok != st.ok {
			st.since = now
			switch {
			case !st.ok:
				h.log.Warn("not ready: a dependency does not answer", "dependency", a.name, "error", st.err)
			case seen:
				h.log.Info("ready: a dependency answers again", "dependency", a.name, "down_for", now.Sub(prev.since).Round(time.Millisecond).String())
			}
		}
		h.state[a.name] = st
	}
	h.at = now
}

// run checks every interval until ctx ends.
func (h *healthCheck) run(ctx context.Context) {
	for {
		t := h.clock.NewTimer(h.interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		h.round(ctx)
	}
}

// readiness is what /healthz answers: ready, and which dependencies are
// down. Checks that stopped (their loop is over, or stuck past three
// rounds) do not count as ready.
func (h *healthCheck) readiness() (ready bool, down []string, checks map[string]any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.clock.Now()
	checks = map[string]any{}
	for name, st := range h.state {
		c := map[string]any{"ok": st.ok, "since": st.since.UTC().Format(time.RFC3339)}
		checks[name] = c
		if !st.ok {
			down = append(down, name)
		}
	}
	sort.Strings(down)
	if stale := 3 * (h.interval + h.timeout); h.at.IsZero() || now.Sub(h.at) > stale {
		down = append(down, "checks")
	}
	return len(down) == 0, down, checks
}

// healthz answers readiness: 200 when fleet's API (and etcd, when serve
// uses it) answered its last check, else 503 naming what is down. It reads
// the checks' last result: a probe never waits for fleet.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	ready, down, checks := s.health.readiness()
	body := map[string]any{"status": "ok", "services": len(s.Config().Services), "checks": checks}
	code := http.StatusOK
	if !ready {
		body["status"], body["down"] = "unavailable", down
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, body)
}

// livez answers liveness: the process serves requests. It asks nothing
// of fleet or etcd, so that a supervisor never restarts a receiver for
// their outage.
func (s *Server) livez(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "alive"})
}

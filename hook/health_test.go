package hook

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/clocktest"
	client "go.etcd.io/etcd/client/v2"
)

// downFleet is a fleet whose API can be made not to answer (refused) or to
// hang until its caller gives up.
type downFleet struct {
	fleetroll.Fleet
	mu      sync.Mutex
	down    bool
	hang    chan struct{} // closed to let a hanging check go
	entered chan struct{} // a check is hanging
}

func (f *downFleet) set(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

func (f *downFleet) MachineIPs(ctx context.Context) (map[string]string, error) {
	f.mu.Lock()
	down, hang, entered := f.down, f.hang, f.entered
	f.mu.Unlock()
	if hang != nil {
		entered <- struct{}{}
		select {
		case <-hang:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if down {
		return nil, errors.New("dial tcp 10.0.0.1:49153: connection refused")
	}
	return map[string]string{"m1": "10.0.0.1"}, nil
}

// downEtcd is an etcd that can be made not to answer.
type downEtcd struct {
	client.KeysAPI
	mu   sync.Mutex
	down bool
}

func (e *downEtcd) Get(ctx context.Context, key string, _ *client.GetOptions) (*client.Response, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.down {
		return nil, errors.New("client: etcd cluster is unavailable or misconfigured")
	}
	return &client.Response{Node: &client.Node{Key: key, Dir: true}}, nil
}

// /healthz follows fleet's API: it turns 503, naming fleet, at the first
// check after fleet stops answering, and 200 again at the first after it
// is back; /livez answers 200 throughout. The checks run on their clock,
// and a probe reads their last result.
func TestHealthzFollowsFleet(t *testing.T) {
	clock := clocktest.New()
	var fleet *downFleet
	env := newTestEnv(t, func(o *Options) {
		fleet = &downFleet{Fleet: o.Fleet}
		o.Fleet, o.HealthClock = fleet, clock
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	probe := func(path string) (int, map[string]any) {
		resp, body := env.do(t, "GET", path, nil, nil)
		return resp.StatusCode, body
	}
	if code, body := probe("/healthz"); code != 200 || body["status"] != "ok" {
		t.Fatalf("fleet up: %d %v", code, body)
	}
	// made: the timers of the check loop so far (one per round, armed
	// once the round before has ended).
	made := 1
	step := func() {
		t.Helper()
		if !clock.WaitMade(ctx, made) {
			t.Fatal("the check loop armed no timer")
		}
		clock.Advance(DefaultHealthInterval)
		made++
		if !clock.WaitMade(ctx, made) {
			t.Fatal("no round after the interval")
		}
	}
	fleet.set(true)
	if code, _ := probe("/healthz"); code != 200 {
		t.Fatalf("not ready before any check saw fleet down: %d", code)
	}
	step()
	code, body := probe("/healthz")
	if code != http.StatusServiceUnavailable || body["status"] != "unavailable" || !slices.Equal(toStrings(body["down"]), []string{"fleet"}) {
		t.Fatalf("fleet down: %d %v", code, body)
	}
	if s := body["checks"].(map[string]any)["fleet"].(map[string]any); s["ok"] != false {
		t.Fatalf("checks: %v", body["checks"])
	}
	for _, secret := range []string{"10.0.0.1", "refused"} {
		if containsJSON(body, secret) {
			t.Fatalf("the answer tells fleet's error (%q): %v", secret, body)
		}
	}
	if code, _ := probe("/livez"); code != 200 {
		t.Fatalf("/livez with fleet down: %d", code)
	}
	mustContain(t, env.logs.String(), "not ready: a dependency does not answer")

	fleet.set(false)
	step()
	if code, body := probe("/healthz"); code != 200 {
		t.Fatalf("fleet back: %d %v", code, body)
	}
	mustContain(t, env.logs.String(), "ready: a dependency answers again")

	// A check that hangs holds up no probe: it answers the last result.
	fleet.mu.Lock()
	fleet.hang, fleet.entered = make(chan struct{}), make(chan struct{}, 1)
	fleet.mu.Unlock()
	clock.Advance(DefaultHealthInterval)
	<-fleet.entered
	if code, _ := probe("/healthz"); code != 200 {
		t.Fatalf("probe during a hanging check: %d", code)
	}
	fleet.mu.Lock()
	close(fleet.hang)
	fleet.hang = nil
	fleet.mu.Unlock()

	// Once the checks stop (shutdown), the receiver is not ready.
	env.stop()
	clock.Advance(time.Minute)
	if code, body := probe("/healthz"); code != http.StatusServiceUnavailable || !slices.Contains(toStrings(body["down"]), "checks") {
		t.Fatalf("checks stopped: %d %v", code, body)
	}
	if code, _ := probe("/livez"); code != 200 {
		t.Fatalf("/livez: %d", code)
	}
}

// The readiness judgement over fleet and etcd: each one down is named;
// without etcd, etcd is not checked.
func TestReadinessNamesWhatIsDown(t *testing.T) {
	for _, tc := range []struct {
		name                string
		withEtcd            bool
		fleetDown, etcdDown bool
		down                []string
	}{
		{"fleet alone, up", false, false, false, nil},
		{"fleet alone, down", false, true, false, []string{"fleet"}},
		{"both up", true, false, false, nil},
		{"etcd down", true, false, true, []string{"etcd"}},
		{"both down", true, true, true, []string{"etcd", "fleet"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fleet := &downFleet{down: tc.fleetDown}
			var etcd client.KeysAPI
			if tc.withEtcd {
				etcd = &downEtcd{down: tc.etcdDown}
			}
			clock := clocktest.New()
			h := newHealthCheck(fleet, etcd, time.Second, time.Second, clock, slog.New(slog.DiscardHandler))
			if ready, down, _ := h.readiness(); ready || !slices.Equal(down, []string{"checks"}) {
				t.Fatalf("before any check: ready %v, down %v", ready, down)
			}
			h.round(t.Context())
			ready, down, checks := h.readiness()
			if ready != (len(tc.down) == 0) || !slices.Equal(down, tc.down) {
				t.Fatalf("ready %v, down %v; want down %v", ready, down, tc.down)
			}
			if _, ok := checks["etcd"]; ok != tc.withEtcd {
				t.Fatalf("checks %v", checks)
			}
			clock.Advance(3*(2*time.Second) + time.Millisecond)
			if ready, down, _ := h.readiness(); ready || !slices.Contains(down, "checks") {
				t.Fatalf("stale checks: ready %v, down %v", ready, down)
			}
		})
	}
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	var out []string
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

func containsJSON(v any, sub string) bool {
	b, _ := json.Marshal(v)
	return strings.Contains(string(b), sub)
}

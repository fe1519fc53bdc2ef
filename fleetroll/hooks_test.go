package fleetroll

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/fleet/schema"
)

func TestHooksRunAroundEachUnit(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	var log []string
	r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{
		Continue:   func() error { log = append(log, "continue"); return nil },
		BeforeStop: func(ctx context.Context, u string) error { log = append(log, "drain "+u); return nil },
		AfterRunning: func(ctx context.Context, u string, st *schema.UnitState) error {
			if st == nil || st.SystemdSubState != "running" {
				t.Errorf("AfterRunning got %+v", st)
			}
			log = append(log, "gate "+u)
			return nil
		},
		Done: func(ctx context.Context, u string) { log = append(log, "done "+u) },
	}})
	if _, err := r.Roll(context.Background(), planOf(a, b)); err != nil {
		t.Fatal(err)
	}
	want := []string{"continue", "drain " + a, "gate " + a, "done " + a, "continue", "drain " + b, "gate " + b, "done " + b}
	if !reflect.DeepEqual(log, want) {
		t.Fatalf("hooks ran %v, want %v", log, want)
	}
}

func TestDrainFailureLeavesTheUnitUntouched(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	var done []string
	r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{
		BeforeStop: func(ctx context.Context, u string) error { return errors.New("etcd unreachable") },
		Done:       func(ctx context.Context, u string) { done = append(done, u) },
	}})
	rep, err := r.Roll(context.Background(), planOf(a, b))
	var ue *UnitError
	if !errors.As(err, &ue) || ue.Phase != PhaseDrain || ue.LeftStopped || !strings.Contains(err.Error(), "etcd unreachable") {
		t.Fatalf("err = %v", err)
	}
	if got := sets(f.Calls()); len(got) != 0 {
		t.Fatalf("a unit was touched: %v", got)
	}
	if rep.Units[0].Outcome != OutcomeFailed || rep.Units[1].Outcome != OutcomeUntouched || !reflect.DeepEqual(done, []string{a}) {
		t.Fatalf("report %+v, done %v", rep.Units, done)
	}
}

func TestFailedGateHaltsWithTheUnitRunning(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{
		AfterRunning: func(ctx context.Context, u string, st *schema.UnitState) error { return ErrUnhealthy },
	}})
	_, err := r.Roll(context.Background(), planOf(a, b))
	var ue *UnitError
	if !errors.As(err, &ue) || ue.Phase != PhaseHealth || ue.LeftStopped || !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("err = %v", err)
	}
	untouched(t, f.Calls(), b)
}

func TestContinueHaltsBeforeTheNextUnit(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	n := 0
	r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{Continue: func() error {
		if n++; n > 1 {
			return errors.New("lock lost")
		}
		return nil
	}}})
	rep, err := r.Roll(context.Background(), planOf(a, b))
	if err == nil || !strings.Contains(err.Error(), "halted before "+b+": lock lost") {
		t.Fatalf("err = %v", err)
	}
	if rep.Units[0].Outcome != OutcomeRestarted || rep.Units[1].Outcome != OutcomeUntouched {
		t.Fatalf("report %+v", rep.Units)
	}
	untouched(t, f.Calls(), b)
}

func TestHealthGate(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/redirect":
			http.Redirect(w, r, "/healthz", http.StatusFound)
		case r.URL.Path != "/healthz":
			http.NotFound(w, r)
		case n.Add(1) <= 2:
			w.WriteHeader(503) // not ready for the first two checks
		}
	}))
	defer srv.Close()
	g := HealthGate{Path: "/healthz", Successes: 3, Interval: time.Millisecond, Timeout: time.Minute, Clock: newFakeClock()}
	if err := g.Wait(context.Background(), srv.URL+"/healthz"); err != nil {
		t.Fatal(err)
	}
	if got := n.Load(); got != 5 {
		t.Fatalf("%d checks, want 2 failing then 3 in a row", got)
	}
	g.Timeout = 50 * time.Millisecond
	for _, path := range []string{"/nope", "/redirect"} {
		if err := g.Wait(context.Background(), srv.URL+path); !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "last: answered") {
			t.Fatalf("%s: err = %v", path, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.Wait(ctx, srv.URL+"/nope"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if got := g.URL("10.0.0.1", "8901"); got != "http://10.0.0.1:8901/healthz" {
		t.Fatalf("URL = %s", got)
	}
}

// A roll that is fenced (its lock's lease could have expired) makes no
// more writes to fleet: the unit it was about to stop is left as it is.
func TestFencedRollMakesNoWrite(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	fenced := false
	r, _, _ := newTestRoller(t, f, Options{Hooks: Hooks{Fence: func() error {
		if fenced {
			return errors.New("lease may expire")
		}
		return nil
	}, AfterRunning: func(context.Context, string, *schema.UnitState) error {
		fenced = true // the lease runs out while the first unit is gated
		return nil
	}}})
	rep, err := r.Roll(context.Background(), planOf(a, b))
	var ue *UnitError
	if !errors.As(err, &ue) || ue.Unit != b || !errors.Is(err, ErrFenced) || ue.LeftStopped {
		t.Fatalf("err = %v", err)
	}
	untouched(t, f.Calls(), b)
	if rep.Units[0].Outcome != OutcomeRestarted {
		t.Fatalf("first unit %+v", rep.Units[0])
	}
}

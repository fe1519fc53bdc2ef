package fleetroll

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRepublishHold(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		until time.Duration // to the republish (negative: it passed)
		hold  time.Duration
	}{
		{-2 * time.Second, 0},                            // the agent looks again
		{-1100 * time.Millisecond, 0},                    // just out of the blind second
		{-time.Second, 100 * time.Millisecond},           // in the agent's blind second
		{0, 1100 * time.Millisecond},                     // at it
		{700 * time.Millisecond, 0},                      // the agent acts after it
		{800 * time.Millisecond, 100 * time.Millisecond}, // the agent would act in its tick: written 0.7 s before it
		{1900 * time.Millisecond, 1200 * time.Millisecond},
		{2300 * time.Millisecond, 1600 * time.Millisecond},
		{2400 * time.Millisecond, 0}, // the change is seen before it
		{20 * time.Second, 0},
	} {
		if got := republishHold(now, now.Add(c.until)); got != c.hold {
			t.Errorf("republish in %s: hold %s, want %s", c.until, got, c.hold)
		}
	}
}

// republishAt is a Republish whose next republish is set per unit, relative
// to the clock's now when asked.
type republishAt struct {
	clock Clock
	in    map[string]time.Duration
}

func (r republishAt) Next(_ context.Context, unit string) (time.Time, bool) {
	d, ok := r.in[unit]
	return r.clock.Now().Add(d), ok
}

// A stop or start that would meet fleet's republish is written just after
// it; the others at once.
func TestRollHoldsAWriteThatWouldMeetTheRepublish(t *testing.T) {
	a, b := "my-service@8901.service", "my-service@8902.service"
	f := newFakeFleet(a, b)
	var mu sync.Mutex
	var at []time.Time
	var clock Clock
	f.SetHook(func(call string) {
		if strings.HasPrefix(call, "set ") {
			mu.Lock()
			at = append(at, clock.Now())
			mu.Unlock()
		}
	})
	rp := &republishAt{in: map[string]time.Duration{a: 1500 * time.Millisecond, b: 10 * time.Second}}
	r, fc, _ := newTestRoller(t, f, Options{Hooks: Hooks{Republish: rp}})
	clock, rp.clock = fc, fc
	t0 := fc.Now()
	rep, err := r.Roll(context.Background(), planOf(a, b))
	if err != nil || rep.Restarted() != 2 {
		t.Fatalf("roll: %v %+v", err, rep)
	}
	want := []string{a + " loaded", a + " launched", b + " loaded", b + " launched"}
	if got := sets(f.Calls()); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("sets %v, want %v", got, want)
	}
	// a's stop and start were each held until 0.7 s before the republish
	// (1.5 s ahead when asked): 0.8 s; b's writes were not.
	if d := at[0].Sub(t0); d != 800*time.Millisecond {
		t.Errorf("a's stop written %s after the roll began, want 0.8s", d)
	}
	if d := at[1].Sub(at[0]); d != 100*time.Millisecond+800*time.Millisecond {
		t.Errorf("a's start written %s after its stop, want the stop's poll and the hold, 0.9s", d)
	}
	if d := at[3].Sub(at[2]); d != 100*time.Millisecond {
		t.Errorf("b's start written %s after its stop, want one poll", d)
	}
	// The phases count from the writes: the hold is in neither.
	if u := rep.Units[0]; time.Duration(u.Stop) != 100*time.Millisecond || time.Duration(u.Start) != 100*time.Millisecond {
		t.Errorf("a's phases %s/%s, want 100ms each", u.Stop, u.Start)
	}
}

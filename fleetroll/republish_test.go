package fleetroll

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

func TestRepublishHold(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		until   time.Duration // to the republish (negative: it passed)
		unheard bool          // fleetroll does not know when the agents listen
		hold    time.Duration
	}{
		// Not knowing when the agents listen: a write may be missed and
		// nudged 0.5 s later, and the heartbeat's deaf second is held out.
		{-2 * time.Second, true, 0},                            // the agent looks again
		{-1100 * time.Millisecond, true, 0},                    // just out of the blind second
		{-time.Second, true, 100 * time.Millisecond},           // in the agent's blind second
		{0, true, 1100 * time.Millisecond},                     // at it
		{700 * time.Millisecond, true, 0},                      // the agent acts after it
		{800 * time.Millisecond, true, 100 * time.Millisecond}, // the agent would act in its tick: written 0.7 s before it
		{1900 * time.Millisecond, true, 1200 * time.Millisecond},
		{2300 * time.Millisecond, true, 1600 * time.Millisecond},
		{2400 * time.Millisecond, true, 0}, // the change is seen before it
		{20 * time.Second, true, 0},
		// Knowing it: the agent acts 1 s after the write.
		{-time.Second, false, 0}, // the heartbeat's deaf second is the hearing's to tell
		{0, false, 0},
		{850 * time.Millisecond, false, 0},                       // the agent acts 0.15 s after it
		{900 * time.Millisecond, false, 0},                       // 0.1 s after it
		{950 * time.Millisecond, false, 50 * time.Millisecond},   // too close: written 0.9 s before it
		{1500 * time.Millisecond, false, 600 * time.Millisecond}, // in the second before it
		{2150 * time.Millisecond, false, 1250 * time.Millisecond},
		{2200 * time.Millisecond, false, 0}, // the change is seen a tick before it
	} {
		if got := republishHold(now, now.Add(c.until), c.unheard); got != c.hold {
			t.Errorf("republish in %s (unheard %v): hold %s, want %s", c.until, c.unheard, got, c.hold)
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
	w := recordWrites(f)
	rp := &republishAt{in: map[string]time.Duration{a: 1500 * time.Millisecond, b: 10 * time.Second}}
	r, fc, _ := newTestRoller(t, f, Options{Hooks: Hooks{Republish: rp}})
	w.clock, rp.clock = fc, fc
	t0 := fc.Now()
	rep := rollInOrder(t, r, f, a, b)
	// a's stop and start were each held until 0.7 s before the republish
	// (1.5 s ahead when asked): 0.8 s; b's writes were not.
	if d := w.at(0).Sub(t0); d != 800*time.Millisecond {
		t.Errorf("a's stop written %s after the roll began, want 0.8s", d)
	}
	if d := w.at(1).Sub(w.at(0)); d != 100*time.Millisecond+800*time.Millisecond {
		t.Errorf("a's start written %s after its stop, want the stop's poll and the hold, 0.9s", d)
	}
	if d := w.at(3).Sub(w.at(2)); d != 100*time.Millisecond {
		t.Errorf("b's start written %s after its stop, want one poll", d)
	}
	// The phases count from the writes: the hold is in neither.
	if u := rep.Units[0]; time.Duration(u.Stop) != 100*time.Millisecond || time.Duration(u.Start) != 100*time.Millisecond {
		t.Errorf("a's phases %s/%s, want 100ms each", u.Stop, u.Start)
	}
}

// deafFor is a Hearing whose agents are deaf, per unit, until a time set
// relative to the clock's now when first asked; reconcile as given.
type deafFor struct {
	clock     Clock
	reconcile bool
	mu        sync.Mutex
	in        map[string]time.Duration
	until     map[string]time.Time
}

func (d *deafFor) Deaf(unit string) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if u, ok := d.until[unit]; ok {
		return u, d.reconcile
	}
	in, ok := d.in[unit]
	if !ok {
		return time.Time{}, false
	}
	d.until[unit] = d.clock.Now().Add(in)
	return d.until[unit], d.reconcile
}

func TestHearingHold(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name      string
		left      time.Duration // to the end of the agents' second
		reconcile bool
		hold      time.Duration
	}{
		{"listening", -time.Second, false, 0},
		{"listening again just now", 0, false, 0},
		{"deaf after an act or a heartbeat", 600 * time.Millisecond, false, 615 * time.Millisecond},
		{"in a second that ends with a reconcile", 600 * time.Millisecond, true, 0},
		{"too close to that reconcile", 40 * time.Millisecond, true, 55 * time.Millisecond},
		{"never known", -24 * time.Hour, false, 0},
	} {
		if got := hearingHold(now, now.Add(c.left), c.reconcile); got != c.hold {
			t.Errorf("%s: hold %s, want %s", c.name, got, c.hold)
		}
	}
}

// A stop or start is written once fleet's agents listen, just after their
// deaf second; one they hear at once is written at once. The hold is in no
// phase.
func TestRollHoldsAWriteUntilFleetsAgentsListen(t *testing.T) {
	a, b := "my-service@8901.service", "my-service@8902.service"
	f := newFakeFleet(a, b)
	w := recordWrites(f)
	deaf := &deafFor{in: map[string]time.Duration{a: 600 * time.Millisecond}, until: map[string]time.Time{}}
	r, fc, _ := newTestRoller(t, f, Options{Hooks: Hooks{Hearing: deaf}})
	w.clock, deaf.clock = fc, fc
	t0 := fc.Now()
	rep := rollInOrder(t, r, f, a, b)
	// a's stop: held 0.6 s and the margin; its start (the agents listen
	// by then) and b's writes: at once after the poll that saw the stop.
	if d := w.at(0).Sub(t0); d != 600*time.Millisecond+hearingMargin {
		t.Errorf("a's stop written %s after the roll began, want 615ms", d)
	}
	if d := w.at(1).Sub(w.at(0)); d != 100*time.Millisecond {
		t.Errorf("a's start written %s after its stop, want one poll", d)
	}
	if d := w.at(3).Sub(w.at(2)); d != 100*time.Millisecond {
		t.Errorf("b's start written %s after its stop, want one poll", d)
	}
	if u := rep.Units[0]; time.Duration(u.Stop) != 100*time.Millisecond {
		t.Errorf("a's stop phase %s, want 100ms (the hold is before it)", u.Stop)
	}
}

// A write in a second that ends with the agents' reconcile (a target was
// written: a batch's other unit) is made at once: it is acted on then.
func TestNoHoldInASecondThatEndsWithAReconcile(t *testing.T) {
	a := "my-service@8901.service"
	f := newFakeFleet(a)
	w := recordWrites(f)
	deaf := &deafFor{in: map[string]time.Duration{a: 600 * time.Millisecond}, until: map[string]time.Time{}, reconcile: true}
	r, fc, _ := newTestRoller(t, f, Options{Hooks: Hooks{Hearing: deaf}})
	w.clock, deaf.clock = fc, fc
	t0 := fc.Now()
	rollInOrder(t, r, f, a)
	if d := w.at(0).Sub(t0); d != 0 {
		t.Errorf("the stop written %s after the roll began, want at once", d)
	}
}

// A hold for the agents' second that would put the write in the
// republish's window is followed by the republish's hold: the write is
// made clear of both.
func TestHoldsForTheAgentsAndTheRepublishTogether(t *testing.T) {
	a := "my-service@8901.service"
	f := newFakeFleet(a)
	w := recordWrites(f)
	// Deaf for 0.7 s, which would leave the write 2.06 s before the
	// republish, where the agent would act in the second before it: held
	// on until 0.9 s before it, 1.9 s after the roll began.
	deaf := &deafFor{in: map[string]time.Duration{a: 700 * time.Millisecond}, until: map[string]time.Time{}}
	rp := &republishAt{in: map[string]time.Duration{a: 2800 * time.Millisecond}}
	r, fc, _ := newTestRoller(t, f, Options{Hooks: Hooks{Hearing: deaf, Republish: rp}})
	w.clock, deaf.clock = fc, fc
	t0 := fc.Now()
	rp.clock = frozen{t0}
	if _, err := r.Roll(context.Background(), planOf(a)); err != nil {
		t.Fatal(err)
	}
	if d := w.at(0).Sub(t0); d != 1900*time.Millisecond {
		t.Errorf("the stop written %s after the roll began, want 1.9s", d)
	}
}

// frozen is a clock that tells one time.
type frozen struct{ t time.Time }

func (f frozen) Now() time.Time                     { return f.t }
func (frozen) After(time.Duration) <-chan time.Time { return nil }
func (frozen) NewTimer(time.Duration) Timer         { return nil }

// writes records when each target state is written to a fake fleet, by
// its clock (set before the roll).
type writes struct {
	mu    sync.Mutex
	clock Clock
	times []time.Time
}

func recordWrites(f *fakefleet.Fleet) *writes {
	w := &writes{}
	f.SetHook(func(call string) {
		if strings.HasPrefix(call, "set ") {
			w.mu.Lock()
			w.times = append(w.times, w.clock.Now())
			w.mu.Unlock()
		}
	})
	return w
}

// at is the time of the i-th write.
func (w *writes) at(i int) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.times[i]
}

// rollInOrder rolls units with r and checks that each was stopped, then
// started, in turn.
func rollInOrder(t *testing.T, r *Roller, f *fakefleet.Fleet, units ...string) *Report {
	t.Helper()
	rep, err := r.Roll(context.Background(), planOf(units...))
	if err != nil || rep.Restarted() != len(units) {
		t.Fatalf("roll: %v %+v", err, rep)
	}
	var want []string
	for _, u := range units {
		want = append(want, u+" loaded", u+" launched")
	}
	if got := sets(f.Calls()); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("sets %v, want %v", got, want)
	}
	return rep
}

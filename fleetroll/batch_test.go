package fleetroll

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// downCounter records, at every fleet call, how many of the units are not
// active/running, and the most at once.
type downCounter struct {
	mu    sync.Mutex
	f     *fakefleet.Fleet
	units []string
	max   int
}

func (d *downCounter) observe(string) {
	down := 0
	for _, n := range d.units {
		if u, _ := d.f.Unit(n); u.Active != "active" || u.Sub != "running" {
			down++
		}
	}
	d.mu.Lock()
	d.max = max(d.max, down)
	d.mu.Unlock()
}

// With MaxUnavailable 2, two units are down at once, never three, and each
// is restarted once.
func TestBatchesOfTwo(t *testing.T) {
	units := []string{"s@1.service", "s@2.service", "s@3.service", "s@4.service", "s@5.service"}
	f := newFakeFleet(units...)
	d := &downCounter{f: f, units: units}
	// The first unit starts once the second is being stopped, and takes 50
	// polls to run: the two are down together.
	f.Update(units[0], func(u *fakefleet.Unit) { u.StartPolls = 50 })
	secondStopping := make(chan struct{})
	var once sync.Once
	f.SetHook(func(call string) {
		d.observe(call)
		switch call {
		case "set " + units[1] + " loaded":
			once.Do(func() { close(secondStopping) })
		case "set " + units[0] + " launched":
			<-secondStopping // the first unit starts only once the second is being stopped: both down
		}
	})
	r, err := NewRoller(connectFake(t, f), Options{PollInterval: time.Millisecond, MaxUnavailable: Unavailable{N: 2}, Grace: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	rep, err := r.Roll(ctx, planOf(units...))
	if err != nil || rep.Restarted() != len(units) {
		t.Fatalf("roll: %v %+v", err, rep)
	}
	for _, n := range units {
		if u, _ := f.Unit(n); u.Restarts != 1 {
			t.Errorf("%s restarted %d times", n, u.Restarts)
		}
	}
	if d.max != 2 {
		t.Fatalf("at most %d down at once, want 2", d.max)
	}
	// The units in flight are polled through listings of all states, not
	// one request each.
	listings := 0
	for _, c := range f.Calls() {
		if strings.HasPrefix(c, "state ") {
			t.Fatalf("a batch polled one unit: %q", c)
		}
		if c == "states" {
			listings++
		}
	}
	if listings == 0 {
		t.Fatal("no listing of states")
	}
	// The third unit's stop comes after one of the first two ran again.
	sets := f.Sets()
	third := slices.Index(sets, units[2]+" loaded")
	firstBack := min(idx(sets, units[0]+" launched"), idx(sets, units[1]+" launched"))
	if third < firstBack {
		t.Fatalf("the third unit was stopped before a slot was free: %v", sets)
	}
}

func idx(s []string, v string) int {
	if i := slices.Index(s, v); i >= 0 {
		return i
	}
	return len(s)
}

// A failure in a batch: the units in flight finish, no other starts, and
// the roll fails on the unit that failed.
func TestBatchHaltsAfterTheUnitsInFlight(t *testing.T) {
	units := []string{"s@1.service", "s@2.service", "s@3.service", "s@4.service"}
	f := newFakeFleet(units...)
	f.Update(units[1], func(u *fakefleet.Unit) { u.FailStart = true })
	// The first unit starts only with the second, and takes 500 polls to
	// run: the second has failed long before a slot is free.
	f.Update(units[0], func(u *fakefleet.Unit) { u.StartPolls = 500 })
	secondStarting := make(chan struct{})
	var once sync.Once
	f.SetHook(func(call string) {
		switch call {
		case "set " + units[1] + " launched":
			once.Do(func() { close(secondStarting) })
		case "set " + units[0] + " launched":
			<-secondStarting
		}
	})
	r, err := NewRoller(connectFake(t, f), Options{PollInterval: time.Millisecond, MaxUnavailable: Unavailable{N: 2}, StartTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.Roll(t.Context(), planOf(units...))
	var ue *UnitError
	if err == nil || !errors.As(err, &ue) || ue.Unit != units[1] || rep.Status != StatusFailed {
		t.Fatalf("roll: %v %+v", err, rep)
	}
	want := []Outcome{OutcomeRestarted, OutcomeFailed, OutcomeUntouched, OutcomeUntouched}
	for i, u := range rep.Units {
		if u.Outcome != want[i] {
			t.Errorf("%s: %s, want %s", u.Unit, u.Outcome, want[i])
		}
	}
	for _, n := range units[2:] {
		if slices.Contains(f.Sets(), n+" loaded") {
			t.Errorf("%s was touched after the failure", n)
		}
	}
}

func TestMaxUnavailableMustNotBeNegative(t *testing.T) {
	if _, err := NewRoller(connectFake(t, newFakeFleet()), Options{MaxUnavailable: Unavailable{N: -1}}); err == nil {
		t.Fatal("accepted")
	}
}

func TestParseUnavailable(t *testing.T) {
	for _, c := range []struct {
		in    string
		of10  int
		of3   int
		valid bool
	}{
		{"", 1, 1, true}, {"1", 1, 1, true}, {"3", 3, 3, true}, {"10%", 1, 1, true}, {"50%", 5, 1, true}, {"100%", 10, 3, true},
		{"0", 0, 0, false}, {"-1", 0, 0, false}, {"0%", 0, 0, false}, {"101%", 0, 0, false}, {"x", 0, 0, false}, {"3 units", 0, 0, false},
	} {
		u, err := ParseUnavailable(c.in)
		if (err == nil) != c.valid {
			t.Errorf("%q: error %v", c.in, err)
			continue
		}
		if c.valid && (u.Of(10) != c.of10 || u.Of(3) != c.of3 || u.Validate() != nil) {
			t.Errorf("%q: of 10 = %d, of 3 = %d, want %d, %d", c.in, u.Of(10), u.Of(3), c.of10, c.of3)
		}
	}
}

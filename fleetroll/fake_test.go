package fleetroll

import (
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// fakeClock advances by the requested duration on every wait, so tests run
// instantly and timeouts are reached deterministically.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.now = c.now.Add(d)
	now := c.now
	c.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- now
	return ch
}

// NewTimer fires at once, having advanced the clock by d.
func (c *fakeClock) NewTimer(d time.Duration) Timer { return firedTimer{c.After(d)} }

type firedTimer struct{ c <-chan time.Time }

func (t firedTimer) C() <-chan time.Time { return t.c }
func (t firedTimer) Stop() bool          { return false }

// newFakeFleet returns the one fake fleet of the tests (internal/fakefleet)
// with the named units launched and running.
func newFakeFleet(names ...string) *fakefleet.Fleet { return fakefleet.New(names...) }

// connectFake serves f over HTTP until the test ends and connects to it
// the way fleetroll connects to fleet.
func connectFake(t testing.TB, f *fakefleet.Fleet) Fleet {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	fl, err := Connect(srv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return fl
}

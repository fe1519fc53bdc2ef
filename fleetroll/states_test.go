package fleetroll

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/coreos/fleet/schema"
)

// listingFleet answers UnitStates from a fixed list, counting the calls; a
// call blocks while gate is set and not closed. Other calls are not used.
type listingFleet struct {
	Fleet
	calls atomic.Int64
	fail  atomic.Bool
	gate  chan struct{}
}

func (f *listingFleet) UnitStates(ctx context.Context) ([]*schema.UnitState, error) {
	f.calls.Add(1)
	if f.gate != nil {
		<-f.gate
	}
	if f.fail.Load() {
		return nil, errors.New("fleet down")
	}
	return []*schema.UnitState{{Name: "s@1.service", SystemdActiveState: "active"}, {Name: "s@2.service", SystemdActiveState: "inactive"}}, nil
}

func TestStateReaderServesABatchFromOneListing(t *testing.T) {
	f := &listingFleet{}
	s := &stateReader{fleet: f}
	ctx := t.Context()

	st, gen, err := s.get(ctx, "s@1.service", s.newest())
	if err != nil || st.SystemdActiveState != "active" || gen != 1 || f.calls.Load() != 1 {
		t.Fatalf("first poll: %+v %d %v, %d calls", st, gen, err, f.calls.Load())
	}
	// Another unit whose last listing is older: served by the same one.
	if st, gen, err := s.get(ctx, "s@2.service", 0); err != nil || st.SystemdActiveState != "inactive" || gen != 1 || f.calls.Load() != 1 {
		t.Fatalf("second unit: %+v %d %v, %d calls", st, gen, err, f.calls.Load())
	}
	// A unit that saw that listing asks for a newer one.
	if _, gen, _ := s.get(ctx, "s@1.service", 1); gen != 2 || f.calls.Load() != 2 {
		t.Fatalf("next poll: generation %d, %d calls", gen, f.calls.Load())
	}
	// A unit fleet publishes no state for.
	if _, _, err := s.get(ctx, "s@3.service", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing unit: %v", err)
	}
	// A failed listing fails the polls it serves, and the next poll asks
	// again.
	f.fail.Store(true)
	_, gen, err = s.get(ctx, "s@1.service", s.newest())
	if err == nil || gen != 3 {
		t.Fatalf("failed listing: %d %v", gen, err)
	}
	f.fail.Store(false)
	if _, gen, err := s.get(ctx, "s@1.service", gen); err != nil || gen != 4 {
		t.Fatalf("after the failure: %d %v", gen, err)
	}
}

// Polls that arrive while a new enough listing is in flight wait for it
// instead of sending their own; one cancelled poll does not fail the others.
func TestStateReaderJoinsTheListingInFlight(t *testing.T) {
	f := &listingFleet{gate: make(chan struct{})}
	s := &stateReader{fleet: f}
	first, cancelFirst := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			ctx := t.Context()
			if i == 0 {
				ctx = first
			}
			_, _, errs[i] = s.get(ctx, "s@1.service", 0)
		})
	}
	cancelFirst()
	close(f.gate)
	wg.Wait()
	for i, err := range errs[1:] {
		if err != nil {
			t.Errorf("poll %d: %v", i+1, err)
		}
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("%d listings for four polls that want any", n)
	}
}

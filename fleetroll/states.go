package fleetroll

import (
	"context"
	"sync"

	"github.com/coreos/fleet/schema"
)

// stateReader serves the state polls of the units in flight from one
// listing of fleet's states, so that a batch costs one request per poll
// interval, not one per unit. Each listing has a generation; a poll asks for
// a listing newer than the one it saw last (or than the write it waits on),
// joins the listing in flight when that one is new enough, and starts one
// otherwise. At most one listing is in flight.
type stateReader struct {
	fleet Fleet

	mu     sync.Mutex
	gen    uint64 // generation of the newest listing requested
	held   uint64 // generation of the listing in states and err
	states []*schema.UnitState
	err    error
	busy   chan struct{} // closed when the listing in flight ends; nil when none is
}

// newest is the generation of the newest listing requested so far: a poll
// after a write asks for a newer one, requested after the write.
func (s *stateReader) newest() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// get returns the unit's state from a listing newer than after, and that
// listing's generation (also when the listing failed, so that the next poll
// asks for a newer one). A unit missing from the listing is ErrNotFound.
func (s *stateReader) get(ctx context.Context, name string, after uint64) (*schema.UnitState, uint64, error) {
	for {
		s.mu.Lock()
		if s.held > after {
			states, err, gen := s.states, s.err, s.held
			s.mu.Unlock()
			if err != nil {
				return nil, gen, err
			}
			st, err := findState(states, name)
			return st, gen, err
		}
		busy := s.busy
		if busy == nil {
			s.gen++
			gen := s.gen
			busy = make(chan struct{})
			s.busy = busy
			s.mu.Unlock()
			// Shared by every poll that joins it: one caller's
			// cancellation must not fail the others' (the request is
			// bounded by its own timeout).
			states, err := s.fleet.UnitStates(context.WithoutCancel(ctx))
			s.mu.Lock()
			s.states, s.err, s.held, s.busy = states, err, gen, nil
			s.mu.Unlock()
			close(busy)
			continue
		}
		s.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, after, ctx.Err()
		}
	}
}

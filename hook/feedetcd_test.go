package hook

import (
	"testing"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// The feed of etcd holds events without an ID (a waiting rollout that a
// newer push took the place of). One of them first in the feed once it is
// trimmed does not make every later Last-Event-ID a reset; the floor is
// the last ID trimmed.
func TestFeedTrimmedAtAnEventWithoutID(t *testing.T) {
	s := NewStore(10)
	s.FeedFromEtcd()
	s.restartFeed(100, false)
	rec := fleetroll.Report{ID: "0123456789ab", Service: "my-service", Status: fleetroll.StatusRunning}
	id := uint64(100)
	for i := range 2 * feedSize {
		if i == feedSize { // the first event kept by the trim below
			s.mirror(0, change{}, "", rec, false)
			continue
		}
		id += 2 // etcd's indexes of the feed's writes are not consecutive
		s.mirror(id, change{kind: "progress"}, fleetroll.StatusRunning, rec, false)
	}
	s.mirror(id+2, change{kind: "progress"}, fleetroll.StatusRunning, rec, false) // trims
	lastDropped := uint64(100 + 2*feedSize)
	if _, backlog, complete := s.Subscribe(id, ""); !complete || len(backlog) != 1 || backlog[0].ID != id+2 {
		t.Fatalf("after %d (held): complete %v, backlog %d", id, complete, len(backlog))
	}
	if _, _, complete := s.Subscribe(lastDropped, ""); !complete {
		t.Fatalf("after %d (the last event trimmed): want the rest, not a reset", lastDropped)
	}
	if _, _, complete := s.Subscribe(lastDropped-2, ""); complete {
		t.Fatalf("after %d (an event trimmed follows): want a reset", lastDropped-2)
	}
}

package hook

import (
	"sync"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// Store keeps the most recent rollout records in memory, in the one record
// shape (fleetroll.Report). It has its own lock; the queue never holds the
// store's lock while it waits for anything.
type Store struct {
	mu      sync.Mutex
	byID    map[string]*fleetroll.Report
	order   []string // oldest first
	limit   int
	changed chan struct{} // closed and replaced on every change

	// The feed of changes (GET /events).
	seq        uint64
	floor      uint64 // the feed holds every event after it
	external   bool   // the feed is etcd's (FeedFromEtcd)
	feed       []StreamEvent
	subs       map[*Subscription]bool
	feedClosed bool
}

// NewStore keeps at most limit finished rollouts (queued and running ones
// are never dropped).
func NewStore(limit int) *Store {
	return &Store{byID: map[string]*fleetroll.Report{}, limit: max(limit, 1), changed: make(chan struct{})}
}

// Put records a rollout. A new one goes last and drops the oldest finished
// ones over the limit; one the store already holds is replaced where it is.
// byID and order always hold the same IDs, each once.
func (s *Store) Put(r fleetroll.Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := r.Clone()
	if held, ok := s.byID[r.ID]; ok {
		before := held.Status
		*held = c
		s.notifyLocked()
		s.emitLocked(change{}, before, held)
		return
	}
	s.insertLocked(c)
	s.emitLocked(change{kind: "queued"}, "", &c)
	s.notifyLocked()
}

// PutNew records a rollout the store does not hold yet, and leaves one it
// holds as it is: a queue that took the rollout up meanwhile has put a
// newer account of it.
func (s *Store) PutNew(r fleetroll.Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byID[r.ID]; ok {
		return
	}
	c := r.Clone()
	s.insertLocked(c)
	s.emitLocked(change{kind: "queued"}, "", &c)
	s.notifyLocked()
}

// insertLocked adds a record the store does not hold (the caller's copy),
// last, and drops the oldest finished ones over the limit.
func (s *Store) insertLocked(c fleetroll.Report) {
	s.byID[c.ID] = &c
	s.order = append(s.order, c.ID)
	for len(s.order) > s.limit {
		i := 0
		for i < len(s.order) && !s.byID[s.order[i]].Status.Final() {
			i++
		}
		if i == len(s.order) {
			break
		}
		delete(s.byID, s.order[i])
		s.order = append(s.order[:i], s.order[i+1:]...)
	}
}

func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Changed returns a channel closed at the next change of any record.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Get returns a copy of a rollout.
func (s *Store) Get(id string) (fleetroll.Report, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byID[id]
	if !ok {
		return fleetroll.Report{}, false
	}
	return r.Clone(), true
}

// List returns copies of the rollouts, newest first, optionally of one
// service only.
func (s *Store) List(service string) []fleetroll.Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]fleetroll.Report, 0, len(s.order))
	for i := len(s.order) - 1; i >= 0; i-- {
		r := s.byID[s.order[i]]
		if service == "" || r.Service == service {
			out = append(out, r.Clone())
		}
	}
	return out
}

// Update changes a rollout under the lock and returns a copy of it.
func (s *Store) Update(id string, fn func(*fleetroll.Report)) (fleetroll.Report, bool) {
	return s.update(id, change{}, fn)
}

// update is Update, telling the feed what the change is.
func (s *Store) update(id string, ch change, fn func(*fleetroll.Report)) (fleetroll.Report, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byID[id]
	if !ok {
		return fleetroll.Report{}, false
	}
	before := r.Status
	fn(r)
	s.notifyLocked()
	s.emitLocked(ch, before, r)
	return r.Clone(), true
}

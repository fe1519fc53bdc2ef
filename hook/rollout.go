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
	// taken are the rollouts this receiver's queue has taken up and runs
	// (Take): a write of their queue entry from before (no runner yet)
	// that the feed brings late is older than the store's account.
	taken map[string]bool

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
	return &Store{byID: map[string]*fleetroll.Report{}, limit: max(limit, 1), changed: make(chan struct{}), taken: map[string]bool{}}
}

// Put records a rollout. A new one goes last and drops the oldest finished
// ones over the limit; one the store already holds is replaced where it is.
// byID and order always hold the same IDs, each once.
func (s *Store) Put(r fleetroll.Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putLocked(r, true)
}

// putLocked records r: a new rollout, or (replace) in place of the one
// the store holds.
func (s *Store) putLocked(r fleetroll.Report, replace bool) {
	c := r.Clone()
	if held, ok := s.byID[r.ID]; ok {
		if replace {
			before := held.Status
			*held = c
			s.notifyLocked()
			s.emitLocked(change{}, before, held)
		}
		return
	}
	s.insertLocked(c)
	s.emitLocked(change{kind: "queued"}, "", &c)
	s.notifyLocked()
}

// Take records the rollout this receiver's queue has just taken up, as the
// queue entry it took says, and marks it taken until Release.
func (s *Store) Take(r fleetroll.Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.taken[r.ID] = true
	s.putLocked(r, true)
}

// Release ends Take's mark: the rollout is no longer run here.
func (s *Store) Release(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.taken, id)
}

// newerLocked reports whether the store should take r, a write of the
// rollout's queue entry (or its history record) that the feed brings, in
// place of its own account: an end always; otherwise not while this
// receiver runs it (own: the entry names it as runner; or the write is
// from before its runner, waiting, and the store has taken it up), nor
// over an end.
func (s *Store) newerLocked(r fleetroll.Report, own, waiting bool) bool {
	held, ok := s.byID[r.ID]
	switch {
	case !ok || r.Status.Final():
		return true
	case own || waiting && s.taken[r.ID]:
		return false
	}
	return !held.Status.Final()
}

// PutNew records a rollout the store does not hold yet, and leaves one it
// holds as it is: a queue that took the rollout up meanwhile has put a
// newer account of it.
func (s *Store) PutNew(r fleetroll.Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putLocked(r, false)
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

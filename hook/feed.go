package hook

import (
	"github.com/fleetroll/fleetroll/fleetroll"
)

// StreamEvent is one message of GET /events: a change of one rollout's
// record, what changed (kind), and the record as it stands after it.
//
// Kinds: queued (a new rollout); resumed (a receiver goes on with a
// rollout another left); the roller's events of a unit (stopping,
// stopped, starting, recovering, running, healthy, failed) and its phases
// (phase: drain, stop, start, health, grace); the rollout's own (paused,
// decided); and a status the record entered (running, succeeded, failed,
// interrupted, superseded, cancelled, rolled_back, aborted). Other changes
// of the record are "progress".
type StreamEvent struct {
	ID      uint64           `json:"id"`
	Kind    string           `json:"kind"`
	Rollout string           `json:"rollout_id"`
	Service string           `json:"service"`
	Unit    string           `json:"unit,omitempty"`
	Phase   fleetroll.Phase  `json:"phase,omitempty"`
	Status  fleetroll.Status `json:"status"`
	Record  fleetroll.Report `json:"record"`
}

// feedSize is how many events the store keeps at least for clients that
// reconnect (Last-Event-ID); up to twice as many between two trims.
const feedSize = 2048

// subBuffer is how many events a subscriber may lag behind before it is
// cut off (it reconnects and catches up from the feed).
const subBuffer = 256

// Subscription receives the events of the store's feed, of one rollout or
// of all, until it is closed: by Unsubscribe, when it falls behind, or
// when the feed closes (shutdown).
type Subscription struct {
	C       <-chan StreamEvent
	c       chan StreamEvent
	rollout string
	// after: the client has the events up to it already (an ID of etcd
	// this receiver has not seen yet); they are not sent again.
	after uint64
}

// change says what an update is, for the feed.
type change struct {
	kind  string
	unit  string
	phase fleetroll.Phase
}

// emitLocked appends an event of r to the feed and hands it to the
// subscribers: a change made here, numbered by the store. With the durable
// queue the feed is etcd's (mirror), and changes made here reach it
// through etcd.
func (s *Store) emitLocked(ch change, before fleetroll.Status, r *fleetroll.Report) {
	if s.external {
		return
	}
	s.seq++
	s.appendLocked(newEvent(s.seq, ch, before, r))
}

// newEvent is the event of a change of r (from status before).
func newEvent(id uint64, ch change, before fleetroll.Status, r *fleetroll.Report) StreamEvent {
	kind := ch.kind
	if kind == "" {
		kind = "progress"
		if r.Status != before {
			kind = string(r.Status)
		}
	}
	return StreamEvent{ID: id, Kind: kind, Rollout: r.ID, Service: r.Service, Unit: ch.unit, Phase: ch.phase, Status: r.Status, Record: r.Clone()}
}

// appendLocked appends ev to the feed and hands it to the subscribers; a
// subscriber whose buffer is full is cut off.
func (s *Store) appendLocked(ev StreamEvent) {
	if len(s.feed) >= 2*feedSize {
		// Keep the newest feedSize (a copy every feedSize events, not one
		// per event). The floor is the last ID dropped: etcd's IDs are not
		// consecutive, and an event without one (0) may come first.
		for _, old := range s.feed[:len(s.feed)-feedSize] {
			s.floor = max(s.floor, old.ID)
		}
		s.feed = append(make([]StreamEvent, 0, 2*feedSize), s.feed[len(s.feed)-feedSize:]...)
	}
	s.feed = append(s.feed, ev)
	for sub := range s.subs {
		if sub.rollout != "" && sub.rollout != ev.Rollout || ev.ID != 0 && ev.ID <= sub.after {
			continue
		}
		select {
		case sub.c <- ev:
		default:
			delete(s.subs, sub)
			close(sub.c)
		}
	}
}

// FeedFromEtcd makes etcd the feed's source, for a receiver with the
// durable queue: its events are the writes of the queue entries and of
// the history, each numbered by its etcd index, so that an event ID means
// the same on every receiver (Last-Event-ID resumes anywhere). Call it
// before the store is used.
func (s *Store) FeedFromEtcd() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.external = true
}

// restartFeed begins the feed again after etcd's index (the watch starts
// there): the events before are gone. A subscriber that may have missed
// some is cut off (a client that reconnects learns what it missed): every
// one when the feed starts again, only those that asked for older events
// when it starts (the others asked for new ones only).
func (s *Store) restartFeed(index uint64, again bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.feed = nil
	s.seq, s.floor = index, index
	for sub := range s.subs {
		if again || sub.after != 0 && sub.after < index {
			delete(s.subs, sub)
			close(sub.c)
		}
	}
}

// pass hands to the feed a change of a rollout that the store does not
// keep (a CLI's, which the status API lists from the history).
func (s *Store) pass(id uint64, ch change, before fleetroll.Status, r fleetroll.Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.etcdEventLocked(id, ch, before, &r)
}

// etcdEventLocked appends the event etcd numbered id (0: none) to the feed.
func (s *Store) etcdEventLocked(id uint64, ch change, before fleetroll.Status, r *fleetroll.Report) {
	if id > s.seq {
		s.seq = id
	}
	s.appendLocked(newEvent(id, ch, before, r))
}

// mirror takes a change of a rollout's record that etcd holds at index
// (id 0: an event etcd does not number) and hands it to the feed. The
// store keeps the newer of its own record and etcd's (newerLocked): its
// own while this receiver runs the rollout (own: the entry names it; or
// waiting: a write from before any runner, of one it has taken up), and a
// record that ended is not taken back to an earlier state.
func (s *Store) mirror(id uint64, ch change, before fleetroll.Status, r fleetroll.Report, own, waiting bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshLocked(r, own, waiting)
	s.notifyLocked()
	s.etcdEventLocked(id, ch, before, &r)
}

// refresh brings the store's record of a rollout up to date from etcd, as
// mirror does, with no event (the feed's starting state).
func (s *Store) refresh(r fleetroll.Report, own, waiting bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshLocked(r, own, waiting)
	s.notifyLocked()
}

func (s *Store) refreshLocked(r fleetroll.Report, own, waiting bool) {
	if !s.newerLocked(r, own, waiting) {
		return
	}
	if held, ok := s.byID[r.ID]; ok {
		*held = r.Clone()
		return
	}
	s.insertLocked(r.Clone())
}

// Subscribe returns a subscription to the events after the one with ID
// after (0: only new ones), of one rollout or of all (""), and the events
// after it that the feed still holds. complete is false when some were
// dropped from the feed meanwhile: the client should read the records
// again.
func (s *Store) Subscribe(after uint64, rollout string) (sub *Subscription, backlog []StreamEvent, complete bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan StreamEvent, subBuffer)
	sub = &Subscription{C: c, c: c, rollout: rollout}
	if s.feedClosed {
		close(c)
		return sub, nil, true
	}
	if s.subs == nil {
		s.subs = map[*Subscription]bool{}
	}
	s.subs[sub] = true
	switch {
	case after == 0:
		return sub, nil, true
	case after > s.seq && s.external:
		// An index of etcd that this receiver's watch has not reached
		// yet: the events after it are still to come.
		sub.after = after
		return sub, nil, true
	case after > s.seq:
		return sub, nil, false // another run's IDs (serve restarted): read the records again
	}
	complete = after >= s.floor
	for _, ev := range s.feed {
		if ev.ID > after && (rollout == "" || ev.Rollout == rollout) {
			backlog = append(backlog, ev)
		}
	}
	return sub, backlog, complete
}

// Unsubscribe ends a subscription.
func (s *Store) Unsubscribe(sub *Subscription) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subs[sub] {
		delete(s.subs, sub)
		close(sub.c)
	}
}

// CloseFeed ends every subscription (the server shuts down: streams must
// not hold up its graceful shutdown) and every later one at once.
func (s *Store) CloseFeed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.feedClosed = true
	for sub := range s.subs {
		close(sub.c)
	}
	s.subs = nil
}

// ownRecords are the store's records of the rollouts this receiver runs or
// ran (its live gauges): with etcd's feed, the store mirrors the other
// receivers' too.
func (s *Server) ownRecords() []fleetroll.Report {
	all := s.store.List("")
	if s.durable == nil {
		return all
	}
	own := all[:0]
	for _, r := range all {
		if r.By == s.opt.Owner {
			own = append(own, r)
		}
	}
	return own
}

package hook

import (
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// Status is where a rollout is.
type Status string

const (
	StatusQueued     Status = "queued"
	StatusRunning    Status = "running"
	StatusSucceeded  Status = "succeeded"
	StatusFailed     Status = "failed"
	StatusSuperseded Status = "superseded" // a newer trigger took its place in the queue
	StatusCancelled  Status = "cancelled"  // fleetroll shut down before it ran
)

// Final reports whether the status will not change any more.
func (s Status) Final() bool { return s != StatusQueued && s != StatusRunning }

// TriggerInfo is what asked for a rollout.
type TriggerInfo struct {
	Source    Source    `json:"source"`
	Event     Event     `json:"event"`
	RequestID string    `json:"request_id"`
	Received  time.Time `json:"received"`
}

// key identifies a push: the same key twice is the same push delivered twice.
func (t TriggerInfo) key() string {
	e := t.Event
	return string(t.Source) + "|" + e.Repository + "|" + e.Tag + "|" + e.Digest + "|" + e.PushedAt
}

// UnitProgress is one unit's place in a rollout.
type UnitProgress struct {
	Unit  string `json:"unit"`
	Phase string `json:"phase"` // pending, stopping, starting, running, restarted, failed, interrupted, untouched
	// Seconds of the stop and the start, once known.
	Stop  fleetroll.Seconds `json:"stop_seconds"`
	Start fleetroll.Seconds `json:"start_seconds"`
	State string            `json:"last_state,omitempty"`
	Error string            `json:"error,omitempty"`
	// LeftStopped: fleetroll stopped the unit and could not start it again.
	LeftStopped bool `json:"left_stopped,omitempty"`
	// Machine it runs on after the restart, and MovedFrom the machine it
	// ran on before when fleet placed it elsewhere (short IDs).
	Machine   string `json:"machine,omitempty"`
	MovedFrom string `json:"moved_from,omitempty"`
}

// Rollout is the record of one trigger's rollout.
type Rollout struct {
	ID           string         `json:"id"`
	Service      string         `json:"service"`
	Status       Status         `json:"status"`
	Trigger      TriggerInfo    `json:"trigger"`
	SupersededBy string         `json:"superseded_by,omitempty"`
	Supersedes   []string       `json:"supersedes,omitempty"`
	Created      time.Time      `json:"created"`
	Started      *time.Time     `json:"started,omitempty"`
	Finished     *time.Time     `json:"finished,omitempty"`
	Units        []UnitProgress `json:"units,omitempty"`
	Error        string         `json:"error,omitempty"`
	// touched is when the last trigger merged into it arrived (quiet period).
	touched time.Time
}

func (r *Rollout) clone() Rollout {
	c := *r
	c.Supersedes = append([]string(nil), r.Supersedes...)
	c.Units = append([]UnitProgress(nil), r.Units...)
	return c
}

// Store keeps the most recent rollouts in memory, newest first. Its mutex
// also guards the Queue that owns it.
type Store struct {
	mu    sync.Mutex
	byID  map[string]*Rollout
	order []string // oldest first
	limit int
}

// NewStore keeps at most limit finished rollouts (queued and running ones
// are never dropped).
func NewStore(limit int) *Store {
	return &Store{byID: map[string]*Rollout{}, limit: max(limit, 1)}
}

// addLocked records a new rollout and drops the oldest finished ones over
// the limit.
func (s *Store) addLocked(r *Rollout) {
	s.byID[r.ID] = r
	s.order = append(s.order, r.ID)
	for len(s.order) > s.limit {
		i := 0
		for i < len(s.order) && !s.byID[s.order[i]].Status.Final() {
			i++
		}
		if i == len(s.order) {
			return
		}
		delete(s.byID, s.order[i])
		s.order = append(s.order[:i], s.order[i+1:]...)
	}
}

// Get returns a copy of a rollout.
func (s *Store) Get(id string) (Rollout, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byID[id]
	if !ok {
		return Rollout{}, false
	}
	return r.clone(), true
}

// List returns copies of the rollouts, newest first, optionally of one
// service only.
func (s *Store) List(service string) []Rollout {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Rollout, 0, len(s.order))
	for i := len(s.order) - 1; i >= 0; i-- {
		r := s.byID[s.order[i]]
		if service == "" || r.Service == service {
			out = append(out, r.clone())
		}
	}
	return out
}

// Update changes a rollout under the lock and returns a copy of it.
func (s *Store) Update(id string, fn func(*Rollout)) (Rollout, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byID[id]
	if !ok {
		return Rollout{}, false
	}
	fn(r)
	return r.clone(), true
}

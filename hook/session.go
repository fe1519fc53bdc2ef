package hook

import (
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// Limits of a status page session.
const (
	DefaultSessionIdle     = 30 * time.Minute
	DefaultSessionAbsolute = 12 * time.Hour
	sessionCookie          = "fleetroll_session"
)

// sessions are the status page's logins: a random ID in an HttpOnly,
// SameSite=Strict cookie, each with its own CSRF token, ending after an
// idle and an absolute limit, or at logout. The API token never reaches
// the page: it is only compared, in constant time, at the login.
type sessions struct {
	mu             sync.Mutex
	byID           map[string]*session
	idle, absolute time.Duration
	clock          fleetroll.Clock
	ended          chan struct{} // closed (and replaced) at each logout
}

type session struct {
	id, csrf      string
	created, seen time.Time
}

func newSessions(idle, absolute time.Duration, clock fleetroll.Clock) *sessions {
	return &sessions{byID: map[string]*session{}, idle: idle, absolute: absolute, clock: clock, ended: make(chan struct{})}
}

func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// maxSessions bounds the live logins: past it, a new login ends the one
// used least recently.
const maxSessions = 1000

// create starts a session.
func (ss *sessions) create() *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	now := ss.clock.Now()
	// Drop the expired ones while here, and the least recently used one
	// when there is no room.
	var lru *session
	for id, o := range ss.byID {
		if ss.expired(o, now) {
			delete(ss.byID, id)
		} else if lru == nil || o.seen.Before(lru.seen) {
			lru = o
		}
	}
	if len(ss.byID) >= maxSessions && lru != nil {
		delete(ss.byID, lru.id)
		ss.endedLocked()
	}
	s := &session{id: randomToken(), csrf: randomToken(), created: now, seen: now}
	ss.byID[s.id] = s
	return s
}

func (ss *sessions) expired(s *session, now time.Time) bool {
	return now.Sub(s.seen) > ss.idle || now.Sub(s.created) > ss.absolute
}

// of returns the request's live session, and marks it used.
func (ss *sessions) of(r *http.Request) (session, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return session{}, false
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.byID[c.Value]
	if !ok {
		return session{}, false
	}
	now := ss.clock.Now()
	if ss.expired(s, now) {
		delete(ss.byID, s.id)
		return session{}, false
	}
	s.seen = now
	return *s, true
}

// end ends a session (logout).
func (ss *sessions) end(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.byID, id)
	ss.endedLocked()
}

// endAll ends every session: the API token they were opened with was
// replaced.
func (ss *sessions) endAll() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	clear(ss.byID)
	ss.endedLocked()
}

// endedLocked wakes the streams read through a session: one has ended.
func (ss *sessions) endedLocked() {
	close(ss.ended)
	ss.ended = make(chan struct{})
}

// alive tells whether the session id still lives (without marking it
// used), and gives a channel closed at the next logout.
func (ss *sessions) alive(id string) (bool, <-chan struct{}) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.byID[id]
	return ok && !ss.expired(s, ss.clock.Now()), ss.ended
}

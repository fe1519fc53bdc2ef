package hook

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	client "go.etcd.io/etcd/client/v2"
)

// Limits of a status page session.
const (
	DefaultSessionIdle     = 30 * time.Minute
	DefaultSessionAbsolute = 12 * time.Hour
	sessionCookie          = "fleetroll_session"
)

// sessionStore keeps the status page's logins: a random ID in an HttpOnly,
// SameSite=Strict cookie, each with its own CSRF token, ending after an
// idle and an absolute limit, or at logout. The API token never reaches
// the page: it is only compared, in constant time, at the login. A
// receiver with etcd keeps them there (etcdSessions: valid on every
// receiver, ended on all at logout), one without in its memory
// (sessions).
type sessionStore interface {
	// create starts a session.
	create(ctx context.Context) (session, error)
	// of returns the request's live session, and marks it used.
	of(r *http.Request) (session, bool)
	// end ends a session (logout).
	end(ctx context.Context, id string) error
	// endAll ends every session: the API token they were opened with was
	// replaced.
	endAll()
	// alive tells whether the session id still lives (without marking it
	// used), and gives a channel closed at the next end of a session (a
	// wake: the streams read through one look again).
	alive(id string) (bool, <-chan struct{})
	// maxAge is the absolute limit (the cookie's).
	maxAge() time.Duration
	// run does what the store needs in the background until ctx ends.
	run(ctx context.Context)
}

// sessionLimits are a session's idle and absolute limits, judged on the
// receiver's clock.
type sessionLimits struct {
	idle, absolute time.Duration
	clock          fleetroll.Clock
}

func (l sessionLimits) expired(created, seen, now time.Time) bool {
	return now.Sub(seen) > l.idle || now.Sub(created) > l.absolute
}

func (l sessionLimits) maxAge() time.Duration { return l.absolute }

// sessions keep the logins in this receiver's memory.
type sessions struct {
	sessionLimits
	mu    sync.Mutex
	byID  map[string]*session
	ended chan struct{} // closed (and replaced) at each logout
}

type session struct {
	id, csrf      string
	created, seen time.Time
}

func newSessions(idle, absolute time.Duration, clock fleetroll.Clock) *sessions {
	return &sessions{sessionLimits: sessionLimits{idle: idle, absolute: absolute, clock: clock}, byID: map[string]*session{}, ended: make(chan struct{})}
}

func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// maxSessions bounds the live logins: past it, a new login ends the one
// used least recently (a variable for the tests).
var maxSessions = coord.DefaultMaxSessions

func (ss *sessions) create(context.Context) (session, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	now := ss.clock.Now()
	// Drop the expired ones while here, and the least recently used one
	// when there is no room.
	var lru *session
	for id, o := range ss.byID {
		if ss.expired(o.created, o.seen, now) {
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
	return *s, nil
}

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
	if ss.expired(s.created, s.seen, now) {
		delete(ss.byID, s.id)
		return session{}, false
	}
	s.seen = now
	return *s, true
}

func (ss *sessions) end(_ context.Context, id string) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.byID, id)
	ss.endedLocked()
	return nil
}

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

func (ss *sessions) alive(id string) (bool, <-chan struct{}) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.byID[id]
	return ok && !ss.expired(s.created, s.seen, ss.clock.Now()), ss.ended
}

func (ss *sessions) run(context.Context) {}

// Of the sessions in etcd.
const (
	// sessionTimeout bounds each of their etcd requests.
	sessionTimeout = 3 * time.Second
	// sessionTouchEvery is how often, at most, a session's last use is
	// written: an idle session may end up to this much before its limit.
	sessionTouchEvery = time.Minute
	// maxCookie bounds the cookie value looked up (a session's is 43
	// characters).
	maxCookie = 64
)

// etcdSessions keep the logins in etcd (coord.Sessions), shared by the
// receivers of one etcd: a login is valid on each, and a logout on one
// ends it on all, and the streams read through it, which a watch of the
// sessions wakes. Without etcd, a login is refused (503) and a cookie is
// taken for no session.
type etcdSessions struct {
	sessionLimits
	store coord.Sessions
	log   *slog.Logger

	mu    sync.Mutex
	ended chan struct{} // closed (and replaced) at each end, on any receiver
	// known are the sessions alive found alive since the last end (a
	// stream looks again at each event without reading etcd each time);
	// at most the sessions in etcd.
	known map[string]coord.PageSession
	// refusedBefore: an endAll that could not reach etcd refuses here the
	// sessions begun before it.
	refusedBefore time.Time
}

func newEtcdSessions(kapi client.KeysAPI, idle, absolute time.Duration, clock fleetroll.Clock, log *slog.Logger) *etcdSessions {
	return &etcdSessions{
		sessionLimits: sessionLimits{idle: idle, absolute: absolute, clock: clock},
		store:         coord.Sessions{KAPI: kapi, TTL: idle + 2*sessionTouchEvery, Max: maxSessions},
		log:           log,
		ended:         make(chan struct{}),
		known:         map[string]coord.PageSession{},
	}
}

// judge tells whether a session read from etcd lives at now.
func (es *etcdSessions) judge(ps coord.PageSession, now time.Time) bool {
	es.mu.Lock()
	refused := ps.Created.Before(es.refusedBefore)
	es.mu.Unlock()
	return !refused && !es.expired(ps.Created, ps.Seen, now)
}

func (es *etcdSessions) create(ctx context.Context) (session, error) {
	ctx, cancel := context.WithTimeout(ctx, sessionTimeout)
	defer cancel()
	now := es.clock.Now()
	s := session{id: randomToken(), csrf: randomToken(), created: now, seen: now}
	if err := es.store.Add(ctx, s.id, coord.PageSession{CSRF: s.csrf, Created: now, Seen: now}); err != nil {
		return session{}, fmt.Errorf("hook: %w", err)
	}
	// The bound: the new session is the most recent, never the one ended.
	if n, err := es.store.Prune(ctx); err != nil {
		es.log.Warn("sessions: the least recently used could not be ended (the next login tries again)", "err", err)
	} else if n > 0 {
		es.wake()
	}
	return s, nil
}

func (es *etcdSessions) of(r *http.Request) (session, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" || len(c.Value) > maxCookie {
		return session{}, false
	}
	log := info(r).log
	ctx, cancel := context.WithTimeout(r.Context(), sessionTimeout)
	defer cancel()
	ps, err := es.store.Get(ctx, c.Value)
	if err != nil {
		log.Warn("session: etcd could not be read: taken for logged out", "err", err)
		return session{}, false
	}
	if ps == nil {
		return session{}, false
	}
	now := es.clock.Now()
	if !es.judge(*ps, now) {
		if err := es.store.End(ctx, c.Value); err != nil {
			log.Warn("session: an expired one could not be removed from etcd (its TTL will)", "err", err)
		}
		return session{}, false
	}
	if now.Sub(ps.Seen) >= sessionTouchEvery {
		ps.Seen = now
		switch err := es.store.Touch(ctx, c.Value, *ps); {
		case errors.Is(err, coord.ErrNoSession):
			return session{}, false // ended meanwhile
		case err != nil:
			log.Warn("session: its last use could not be written to etcd", "err", err)
		}
	}
	return session{id: c.Value, csrf: ps.CSRF, created: ps.Created, seen: ps.Seen}, true
}

func (es *etcdSessions) end(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, sessionTimeout)
	defer cancel()
	err := es.store.End(ctx, id)
	es.wake() // the streams here at once; the others at the watch's word
	if err != nil {
		return fmt.Errorf("hook: %w", err)
	}
	return nil
}

func (es *etcdSessions) endAll() {
	ctx, cancel := context.WithTimeout(context.Background(), sessionTimeout)
	defer cancel()
	if err := es.store.EndAll(ctx); err != nil {
		es.mu.Lock()
		es.refusedBefore = es.clock.Now()
		es.mu.Unlock()
		es.log.Error("sessions: the API token was replaced but etcd could not be told to end the sessions: this receiver refuses them; the others may take them until their own reload or the sessions' limits", "err", err)
	}
	es.wake()
}

// wake wakes the streams read through a session: one has ended.
func (es *etcdSessions) wake() {
	es.mu.Lock()
	defer es.mu.Unlock()
	close(es.ended)
	es.ended = make(chan struct{})
	clear(es.known)
}

func (es *etcdSessions) alive(id string) (bool, <-chan struct{}) {
	es.mu.Lock()
	ended := es.ended
	ps, known := es.known[id]
	es.mu.Unlock()
	if id == "" || len(id) > maxCookie {
		return false, ended
	}
	now := es.clock.Now()
	if known && es.judge(ps, now) {
		return true, ended
	}
	// Not known since the last end, or past its limits as last read (it
	// may have been used since, on any receiver): etcd says.
	ctx, cancel := context.WithTimeout(context.Background(), sessionTimeout)
	defer cancel()
	got, err := es.store.Get(ctx, id)
	if err != nil {
		es.log.Warn("session: etcd could not be read: its stream ends", "err", err)
		return false, ended
	}
	if got == nil || !es.judge(*got, now) {
		return false, ended
	}
	es.mu.Lock()
	if es.ended == ended { // no end since: still current
		es.known[id] = *got
	}
	es.mu.Unlock()
	return true, ended
}

// run watches the sessions in etcd: an end on any receiver wakes the
// streams here.
func (es *etcdSessions) run(ctx context.Context) {
	es.store.Watch(ctx, es.wake)
}

package hook

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// Timing of the event streams: a comment keeps idle connections (and the
// proxies between) alive, and each write gets its own deadline, so a stream
// outlives the server's write timeout while a stuck client does not hold
// a handler for ever.
const (
	streamHeartbeat     = 15 * time.Second
	streamWriteDeadline = 30 * time.Second
)

// events answers GET /events: Server-Sent Events, one per change of a
// rollout's record (StreamEvent), of all rollouts or of ?rollout=ID. A
// client that reconnects with Last-Event-ID gets what it missed, or a
// "reset" event when the server no longer holds it (read the records
// again). The stream ends when the server shuts down.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	fail := func(code int, msg string) {
		code, body := problem(code, msg)
		if code == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fleetroll"`)
		}
		info(r).log.Warn("request refused", "sender", "api", "status", code, "reason", msg)
		writeJSON(w, code, withID(body, info(r).id))
	}
	if _, _, ok := bearer(r, s.secretsNow().API); !ok {
		// The page's stream (a session, or a network opened to viewing):
		// the page's Host check. The API token is no browser's.
		if code, msg := s.pageRefusal(r); code != 0 {
			fail(code, msg)
			return
		}
	}
	if !s.canRead(r) {
		// The API token, or the status page's session (or a network
		// opened to viewing).
		code, body, ok := s.authorize(r, func() (int, any, bool) { return bearer(r, s.secretsNow().API) })
		if ok {
			code, body = problem(http.StatusUnauthorized, "log in first")
		}
		fail(code, body.(map[string]any)["error"].(string))
		return
	}
	rollout := r.URL.Query().Get("rollout")
	if rollout != "" && !fleetroll.ValidRolloutID(rollout) {
		fail(http.StatusBadRequest, "rollout: want a rollout ID (12 hex digits)")
		return
	}
	var after uint64
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		n, err := strconv.ParseUint(last, 10, 64)
		if err != nil {
			fail(http.StatusBadRequest, "Last-Event-ID: want the id of an event of this stream")
			return
		}
		after = n
	}
	code, release := s.streams.take(info(r).client)
	switch code {
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "10")
		fail(code, fmt.Sprintf("too many event streams from this client (at most %d at once)", s.streams.each))
		return
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "10")
		fail(code, fmt.Sprintf("too many event streams on this receiver (at most %d at once)", s.streams.max))
		return
	}
	defer release()
	// A stream read through a page's session ends with it (logout, or its
	// idle or absolute limit); one read with the API token ends when a
	// reload replaces the token (SetSecrets ends the sessions, which wakes
	// it); one from a network opened to viewing has nothing to end.
	still := func() (bool, <-chan struct{}) { return true, nil }
	if _, _, ok := bearer(r, s.secretsNow().API); ok {
		still = func() (bool, <-chan struct{}) {
			_, ended := s.sessions.alive("") // taken before the token is read: no wake missed
			_, _, ok := bearer(r, s.secretsNow().API)
			return ok, ended
		}
	} else if sess, ok := s.sessions.of(r); ok {
		still = func() (bool, <-chan struct{}) { return s.sessions.alive(sess.id) }
	}
	sub, backlog, complete := s.store.Subscribe(after, rollout)
	defer s.store.Unsubscribe(sub)

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(id uint64, kind string, v any) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteDeadline))
		var err error
		if kind == "" {
			_, err = fmt.Fprint(w, ": ping\n\n")
		} else {
			b, merr := json.Marshal(v)
			if merr != nil {
				return false
			}
			if id > 0 {
				_, err = fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", id, kind, b)
			} else {
				_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", kind, b)
			}
		}
		return err == nil && rc.Flush() == nil
	}
	if !complete && !write(0, "reset", map[string]string{"reason": "events were missed; read the records again"}) {
		return
	}
	for _, ev := range backlog {
		if !write(ev.ID, ev.Kind, ev) {
			return
		}
	}
	if !write(0, "", nil) {
		return
	}
	beat := time.NewTicker(streamHeartbeat)
	defer beat.Stop()
	for {
		alive, loggedOut := still()
		if !alive {
			return // its session ended: the page logs in again
		}
		select {
		case ev, ok := <-sub.C:
			if !ok {
				return // shut down, or fell behind: the client reconnects
			}
			if !write(ev.ID, ev.Kind, ev) {
				return
			}
		case <-beat.C:
			if !write(0, "", nil) {
				return
			}
		case <-loggedOut:
		case <-r.Context().Done():
			return
		}
	}
}

// CloseStreams ends every event stream (and refuses new ones): call it when
// the HTTP server shuts down, so that streams do not hold up a graceful
// shutdown (http.Server.RegisterOnShutdown).
func (s *Server) CloseStreams() { s.store.CloseFeed() }

// ReadEvents reads a stream of Server-Sent Events and calls fn with each
// event's id (0 when it has none), name and data, until the stream ends
// (nil), fn returns an error, or reading fails. Comments are skipped.
func ReadEvents(r io.Reader, fn func(id uint64, kind string, data []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	var id uint64
	var kind string
	var data []byte
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if kind != "" || len(data) > 0 {
				if kind == "" {
					kind = "message"
				}
				if err := fn(id, kind, data); err != nil {
					return err
				}
			}
			id, kind, data = 0, "", nil
		case strings.HasPrefix(line, ":"):
		default:
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "id":
				id, _ = strconv.ParseUint(value, 10, 64)
			case "event":
				kind = value
			case "data":
				if data != nil {
					data = append(data, '\n')
				}
				data = append(data, value...)
			}
		}
	}
	return sc.Err()
}

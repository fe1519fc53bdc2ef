package hook

import (
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/clocktest"
)

// Live logins are bounded: past maxSessions, a new one ends the session
// used least recently (and wakes the streams read through it).
func TestSessionsAreBounded(t *testing.T) {
	clock := clocktest.New()
	ss := newSessions(time.Hour, 12*time.Hour, clock)
	first := ss.create()
	clock.Advance(time.Second)
	var last *session
	for range maxSessions - 1 {
		last = ss.create()
	}
	if alive, _ := ss.alive(first.id); !alive {
		t.Fatal("a session ended before the bound was reached")
	}
	_, ended := ss.alive(first.id)
	extra := ss.create()
	if alive, _ := ss.alive(first.id); alive {
		t.Fatal("the least recently used session outlived a login past the bound")
	}
	select {
	case <-ended:
	default:
		t.Fatal("the streams of the ended session were not woken")
	}
	for _, s := range []*session{last, extra} {
		if alive, _ := ss.alive(s.id); !alive {
			t.Fatalf("session %s ended", s.id)
		}
	}
	if n := len(ss.byID); n != maxSessions {
		t.Fatalf("%d live sessions, want %d", n, maxSessions)
	}
}

package coord

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	client "go.etcd.io/etcd/client/v2"
)

// SessionPrefix is where the status page's sessions live, shared by the
// receivers of one etcd (docs/serve.md, "The status page"):
// SessionPrefix/HEX, HEX the sha256 of the session's cookie value (a key
// never reveals the cookie), one JSON document (PageSession) each, with a
// TTL.
const SessionPrefix = "/fleetroll/sessions"

// DefaultMaxSessions bounds the live sessions (docs/serve.md, "Limits").
const DefaultMaxSessions = 1000

// ErrNoSession is why a session's last use was not written: it ended
// meanwhile (a logout, on any receiver, or its TTL).
var ErrNoSession = errors.New("no such session")

// PageSession is a login to the status page: its CSRF token, when it began
// and when it was last used (as written, at most about once a minute).
type PageSession struct {
	CSRF    string    `json:"csrf"`
	Created time.Time `json:"created"`
	Seen    time.Time `json:"seen"`
}

// Sessions keeps the status page's sessions in etcd. The receivers judge
// their idle and absolute limits on their own clock; TTL, renewed at each
// write, only removes the sessions nobody ends.
type Sessions struct {
	KAPI client.KeysAPI
	TTL  time.Duration
	Max  int // default DefaultMaxSessions
}

// SessionKey is the key of the session whose cookie value is id: the
// sha256 of it, in hex.
func SessionKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return SessionPrefix + "/" + hex.EncodeToString(sum[:])
}

func (s Sessions) ttl() *client.SetOptions {
	return &client.SetOptions{TTL: s.TTL}
}

// Add stores a new session (one of that id there already is an error).
// Prune keeps the bound.
func (s Sessions) Add(ctx context.Context, id string, ps PageSession) error {
	opts := s.ttl()
	opts.PrevExist = client.PrevNoExist
	return putJSON(ctx, s.KAPI, SessionKey(id), "session: add", ps, opts)
}

// Prune ends the sessions seen least recently beyond Max (the last written
// first among equals), and returns how many it ended.
func (s Sessions) Prune(ctx context.Context) (int, error) {
	keep := cmp.Or(s.Max, DefaultMaxSessions)
	resp, err := s.KAPI.Get(ctx, SessionPrefix, nil)
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("session: list: %w", err)
	}
	if len(resp.Node.Nodes) <= keep {
		return 0, nil
	}
	type seen struct {
		key   string
		at    time.Time
		index uint64
	}
	all := make([]seen, 0, len(resp.Node.Nodes))
	for _, n := range resp.Node.Nodes {
		var ps PageSession
		_ = json.Unmarshal([]byte(n.Value), &ps) // unreadable: seen at the zero time, ended first
		all = append(all, seen{n.Key, ps.Seen, n.ModifiedIndex})
	}
	slices.SortFunc(all, func(a, b seen) int {
		return cmp.Or(a.at.Compare(b.at), cmp.Compare(a.index, b.index))
	})
	ended := 0
	for _, o := range all[:len(all)-keep] {
		if err := deleteKey(ctx, s.KAPI, o.key, "session: end the least recently seen"); err != nil {
			return ended, err
		}
		ended++
	}
	return ended, nil
}

// Get returns the session whose cookie value is id; nil when there is
// none.
func (s Sessions) Get(ctx context.Context, id string) (*PageSession, error) {
	ps, _, err := getJSON[PageSession](ctx, s.KAPI, SessionKey(id), "session")
	return ps, err
}

// Touch writes the session's last use and renews its TTL; ErrNoSession
// when it ended meanwhile (it is not brought back).
func (s Sessions) Touch(ctx context.Context, id string, ps PageSession) error {
	opts := s.ttl()
	opts.PrevExist = client.PrevExist
	err := putJSON(ctx, s.KAPI, SessionKey(id), "session: write its last use", ps, opts)
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return fmt.Errorf("session: write its last use: %w", ErrNoSession)
	}
	return err
}

// End ends a session (one ended already is not an error).
func (s Sessions) End(ctx context.Context, id string) error {
	return deleteKey(ctx, s.KAPI, SessionKey(id), "session: end")
}

// EndAll ends every session.
func (s Sessions) EndAll(ctx context.Context) error {
	_, err := s.KAPI.Delete(ctx, SessionPrefix, &client.DeleteOptions{Recursive: true, Dir: true})
	if err != nil && !isCode(err, client.ErrorCodeKeyNotFound) {
		return fmt.Errorf("session: end all: %w", err)
	}
	return nil
}

// Watch calls ended whenever a session ends (deleted, or expired by its
// TTL), on any receiver, and after each broken watch (an end may have been
// missed), until ctx ends.
func (s Sessions) Watch(ctx context.Context, ended func()) {
	Watch(ctx, s.KAPI, SessionPrefix, func(resp *client.Response) {
		if sessionEnded(resp) {
			ended()
		}
	})
}

// sessionEnded tells whether a watch's answer may mean a session ended:
// a delete, an expiry, or none (the watch broke).
func sessionEnded(resp *client.Response) bool {
	if resp == nil {
		return true
	}
	switch resp.Action {
	case "delete", "expire", "compareAndDelete":
		return true
	}
	return false
}

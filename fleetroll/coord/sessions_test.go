package coord

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	client "go.etcd.io/etcd/client/v2"
)

// Sessions live under the sha256 of their cookie value (never the value
// itself), with a TTL; a touch does not bring back an ended session; Prune
// ends the least recently seen beyond Max; a watch hears each end, on
// whichever receiver.
func TestSessions(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	ss := Sessions{KAPI: kapi, TTL: time.Hour, Max: 2}
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

	if got, err := ss.Get(ctx, "nope"); err != nil || got != nil {
		t.Fatalf("no session: %+v %v", got, err)
	}
	if n, err := ss.Prune(ctx); err != nil || n != 0 {
		t.Fatalf("prune of nothing: %d %v", n, err)
	}
	ids := []string{"cookie-a", "cookie-b", "cookie-c"}
	for i, id := range ids {
		if err := ss.Add(ctx, id, PageSession{CSRF: "csrf-" + id, Created: at, Seen: at.Add(time.Duration(i) * time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ss.Add(ctx, "cookie-a", PageSession{CSRF: "again", Created: at, Seen: at}); err == nil {
		t.Fatal("a second session of one cookie value was stored")
	}
	resp, err := kapi.Get(ctx, SessionPrefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range resp.Node.Nodes {
		if strings.Contains(n.Key, "cookie") || len(n.Key) != len(SessionPrefix)+1+64 {
			t.Fatalf("a key reveals the cookie or is not its sha256: %s", n.Key)
		}
		if n.TTL <= 0 || n.TTL > 3600 {
			t.Fatalf("key %s has TTL %d, want at most an hour", n.Key, n.TTL)
		}
	}
	got, err := ss.Get(ctx, "cookie-b")
	if err != nil || got == nil || got.CSRF != "csrf-cookie-b" || !got.Created.Equal(at) || !got.Seen.Equal(at.Add(time.Minute)) {
		t.Fatalf("get: %+v %v", got, err)
	}

	// a, seen again, is now the most recent: b goes first.
	if err := ss.Touch(ctx, "cookie-a", PageSession{CSRF: "csrf-cookie-a", Created: at, Seen: at.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if n, err := ss.Prune(ctx); err != nil || n != 1 {
		t.Fatalf("prune: %d %v", n, err)
	}
	for id, want := range map[string]bool{"cookie-a": true, "cookie-b": false, "cookie-c": true} {
		if got, err := ss.Get(ctx, id); err != nil || (got != nil) != want {
			t.Fatalf("%s after the prune: %+v %v, want alive %v", id, got, err, want)
		}
	}
	if err := ss.Touch(ctx, "cookie-b", PageSession{CSRF: "x", Created: at, Seen: at}); !errors.Is(err, ErrNoSession) {
		t.Fatalf("touch of an ended session: %v", err)
	}
	if got, _ := ss.Get(ctx, "cookie-b"); got != nil {
		t.Fatalf("a touch brought an ended session back: %+v", got)
	}

	// The watch hears an end.
	wctx, cancel := context.WithCancel(ctx)
	ended := make(chan struct{}, 10)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		ss.Watch(wctx, func() { ended <- struct{}{} })
	}()
	defer func() { cancel(); <-watched }()
	// The watcher starts with its first request: a probe's end, heard,
	// is the sign that it listens.
	for i := 0; ; i++ {
		if err := ss.Add(ctx, fmt.Sprintf("probe-%d", i), PageSession{Created: at, Seen: at}); err != nil {
			t.Fatal(err)
		}
		if err := ss.End(ctx, fmt.Sprintf("probe-%d", i)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ended:
		case <-time.After(100 * time.Millisecond):
			if i < 50 {
				continue
			}
			t.Fatal("the watch heard no end")
		}
		break
	}
	for len(ended) > 0 {
		<-ended
	}
	if err := ss.End(ctx, "cookie-c"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the watch missed a logout")
	}
	if err := ss.End(ctx, "cookie-c"); err != nil {
		t.Fatalf("end of an ended session: %v", err)
	}
	if err := ss.EndAll(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := ss.Get(ctx, "cookie-a"); got != nil {
		t.Fatalf("a session outlived EndAll: %+v", got)
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the watch missed EndAll")
	}
	if err := ss.EndAll(ctx); err != nil {
		t.Fatalf("EndAll of none: %v", err)
	}
}

// Only a delete, an expiry or a broken watch may mean a session ended: an
// add or a touch does not wake the streams.
func TestSessionEnded(t *testing.T) {
	for action, want := range map[string]bool{
		"delete": true, "expire": true, "compareAndDelete": true,
		"set": false, "create": false, "update": false, "compareAndSwap": false, "get": false,
	} {
		if got := sessionEnded(&client.Response{Action: action}); got != want {
			t.Errorf("%s: %v, want %v", action, got, want)
		}
	}
	if !sessionEnded(nil) {
		t.Error("a broken watch (nil) is not taken for a possible end")
	}
}

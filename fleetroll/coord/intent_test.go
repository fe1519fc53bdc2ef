package coord

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/clocktest"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// The lease is trusted only while a refresh confirmed it recently enough:
// with etcd gone, the holder is fenced a margin before the key could expire.
func TestLockFencesBeforeTheLeaseCouldExpire(t *testing.T) {
	kapi, _, stop := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clock := clocktest.New()
	l := Lock{KAPI: kapi, Key: LockKey("s"), Owner: "me", TTL: 3 * time.Second, Clock: clock}
	h, err := l.Acquire(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = h.Release(context.Background()) }()
	stop() // etcd gone: no refresh succeeds from now on
	if err := h.Valid(); err != nil {
		t.Fatalf("fenced at once: %v", err)
	}
	// One refresh (at TTL/3) fails; the lease is still surely ours.
	if !clock.WaitMade(ctx, 1) {
		t.Fatal("no keep-alive")
	}
	clock.Advance(time.Second)
	if !clock.WaitMade(ctx, 2) {
		t.Fatal("the keep-alive did not go on")
	}
	if err := h.Valid(); err != nil {
		t.Fatalf("fenced with 2s of lease left: %v", err)
	}
	// Within the margin (TTL/3) of the earliest expiry: fenced.
	clock.Advance(1100 * time.Millisecond)
	if err := h.Valid(); err == nil || !strings.Contains(err.Error(), "may expire") {
		t.Fatalf("not fenced 1.9s before the lease could expire: %v", err)
	}
}

func newFleet(t *testing.T, ff *fakefleet.Fleet) fleetroll.Fleet {
	t.Helper()
	srv := httptest.NewServer(ff)
	t.Cleanup(srv.Close)
	f, err := fleetroll.Connect(srv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

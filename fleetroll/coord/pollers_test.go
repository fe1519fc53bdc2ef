package coord

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/clocktest"
)

// One poller per service: a second receiver waits on the lease, and takes
// it within a TTL once the holder stops refreshing it (a receiver gone);
// the old holder learns it lost the lease at its next refresh.
func TestPollerLeaseTakeover(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	const ttl = 2 * time.Second
	deadClock := clocktest.New() // never advanced: A stops refreshing
	a, err := PollerLease(kapi, "my-service", "receiver A", ttl, deadClock)
	if err != nil {
		t.Fatal(err)
	}
	b, err := PollerLease(kapi, "my-service", "receiver B", ttl, nil)
	if err != nil {
		t.Fatal(err)
	}
	heldA, err := a.Acquire(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, false); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "receiver A") {
		t.Fatalf("B while A polls: %v, want locked by receiver A", err)
	}
	start := time.Now()
	heldB, err := b.Acquire(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	defer heldB.Release(context.Background())
	// etcd expires keys within a second of their TTL.
	if took := time.Since(start); took > ttl+1500*time.Millisecond {
		t.Errorf("B took over after %s, want within the TTL %s (and etcd's expiry tick)", took, ttl)
	}
	resp, err := kapi.Get(ctx, PollerPrefix+"/my-service", nil)
	if err != nil || resp.Node.Value != "receiver B" {
		t.Fatalf("lease after the takeover: %v %v", resp, err)
	}
	deadClock.Advance(ttl / 3) // A's keep-alive tries its refresh
	select {
	case <-heldA.Lost():
	case <-ctx.Done():
		t.Fatal("A never learnt it lost the lease")
	}
	_ = heldA.Release(ctx) // must not delete B's key
	if resp, err := kapi.Get(ctx, PollerPrefix+"/my-service", nil); err != nil || resp.Node.Value != "receiver B" {
		t.Fatalf("A's release touched B's lease: %v %v", resp, err)
	}
	if _, err := PollerLease(kapi, "../locks/x", "me", ttl, nil); err == nil {
		t.Error("a bad service name made a lease")
	}
}

package fleetroll

import (
	"context"
	"sync"
	"testing"
	"time"
)

// alwaysAwake wakes every wait at once; it records the watches opened and
// reports each one closed.
type alwaysAwake struct {
	mu      sync.Mutex
	watched map[string]int
	closed  chan string
	ready   chan struct{}
}

func (w *alwaysAwake) Watch(ctx context.Context, unit string) <-chan struct{} {
	w.mu.Lock()
	w.watched[unit]++
	w.mu.Unlock()
	go func() {
		<-ctx.Done()
		w.closed <- unit
	}()
	return w.ready
}

// With a wake-up source, a wait polls as soon as it is woken: a roll whose
// poll interval is an hour ends at once (without one it would wait the
// hour), and each wait's watch is closed when the wait ends.
func TestWaitsWakeOnFleetsStateWrites(t *testing.T) {
	a, b := "my-service@8901.service", "my-service@8902.service"
	f := newFakeFleet(a, b)
	ready := make(chan struct{})
	close(ready)
	w := &alwaysAwake{watched: map[string]int{}, closed: make(chan string, 10), ready: ready}
	r, err := NewRoller(connectFake(t, f), Options{PollInterval: time.Hour, MaxBackoff: time.Hour, Hooks: Hooks{Wake: w}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	rep, err := r.Roll(ctx, planOf(a, b))
	if err != nil || rep.Restarted() != 2 {
		t.Fatalf("roll: %v %+v", err, rep)
	}
	w.mu.Lock()
	watched := w.watched
	w.mu.Unlock()
	// One watch per wait: the stop and the start of each unit.
	if watched[a] != 2 || watched[b] != 2 {
		t.Fatalf("watches %v", watched)
	}
	for range 4 {
		select {
		case <-w.closed:
		case <-ctx.Done():
			t.Fatal("a watch was left open")
		}
	}
}

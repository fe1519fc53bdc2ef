package hook

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func trig(n int) TriggerInfo {
	return TriggerInfo{Source: SourceRegistry, Event: Event{Repository: "demo/my-service", Tag: "latest", Digest: fmt.Sprintf("sha256:%d", n)}}
}

// gatedExec runs rollouts that block until released, and records overlap.
type gatedExec struct {
	mu       sync.Mutex
	ran      []Rollout
	active   map[string]int
	overlap  bool
	maxAll   int
	nowAll   int
	started  chan string
	release  chan struct{}
	finished chan string
}

func newGatedExec() *gatedExec {
	return &gatedExec{active: map[string]int{}, started: make(chan string, 200), release: make(chan struct{}), finished: make(chan string, 200)}
}

func (g *gatedExec) exec(ctx context.Context, r Rollout) {
	g.mu.Lock()
	g.ran = append(g.ran, r)
	g.active[r.Service]++
	if g.active[r.Service] > 1 {
		g.overlap = true
	}
	g.nowAll++
	g.maxAll = max(g.maxAll, g.nowAll)
	g.mu.Unlock()
	g.started <- r.ID
	select {
	case <-g.release:
	case <-ctx.Done():
	}
	g.mu.Lock()
	g.active[r.Service]--
	g.nowAll--
	g.mu.Unlock()
	g.finished <- r.ID
}

func runQueue(t *testing.T, q *Queue) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return cancel
}

func TestBurstCoalescesIntoOneFollowUp(t *testing.T) {
	g := newGatedExec()
	store := NewStore(1000)
	q := NewQueue(store, g.exec, 4, 0)
	runQueue(t, q)

	first, _, err := q.Submit("my-service", trig(0))
	if err != nil {
		t.Fatal(err)
	}
	if id := <-g.started; id != first.ID {
		t.Fatalf("started %s, want %s", id, first.ID)
	}
	var last Rollout
	for i := 1; i < 100; i++ {
		if last, _, err = q.Submit("my-service", trig(i)); err != nil {
			t.Fatal(err)
		}
	}
	close(g.release) // let every rollout finish
	<-g.finished
	if id := <-g.started; id != last.ID {
		t.Fatalf("follow-up %s, want the rollout of the newest trigger %s", id, last.ID)
	}
	<-g.finished

	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.ran) != 2 || g.overlap {
		t.Fatalf("%d rollouts ran (overlap %v), want 2 without overlap", len(g.ran), g.overlap)
	}
	if g.ran[1].Trigger.Event.Digest != "sha256:99" {
		t.Fatalf("the follow-up carries %s, want the newest trigger", g.ran[1].Trigger.Event.Digest)
	}
	superseded := 0
	for _, r := range store.List("my-service") {
		if r.Status == StatusSuperseded {
			superseded++
			if r.SupersededBy != last.ID {
				t.Fatalf("%s superseded by %s, want %s", r.ID, r.SupersededBy, last.ID)
			}
		}
	}
	if superseded != 98 {
		t.Fatalf("%d superseded, want 98", superseded)
	}
	if got, _ := store.Get(last.ID); len(got.Supersedes) != 98 {
		t.Fatalf("the follow-up lists %d superseded rollouts", len(got.Supersedes))
	}
}

func TestDuplicatesMerge(t *testing.T) {
	g := newGatedExec()
	store := NewStore(100)
	q := NewQueue(store, g.exec, 1, 0)
	runQueue(t, q)
	running, _, _ := q.Submit("a", trig(1))
	<-g.started
	// The same push again while it runs: merged into the running rollout.
	if r, merged, _ := q.Submit("a", trig(1)); !merged || r.ID != running.ID {
		t.Fatalf("duplicate of the running push: merged=%v id=%s", merged, r.ID)
	}
	queued, merged, _ := q.Submit("a", trig(2))
	if merged {
		t.Fatal("a new push merged")
	}
	if r, merged, _ := q.Submit("a", trig(2)); !merged || r.ID != queued.ID {
		t.Fatalf("duplicate of the queued push: merged=%v id=%s", merged, r.ID)
	}
	// Manual triggers merge while queued, but never into a running one.
	m1, _, _ := q.Submit("b", TriggerInfo{Source: SourceManual})
	m2, merged, _ := q.Submit("b", TriggerInfo{Source: SourceManual})
	if !merged || m1.ID != m2.ID {
		t.Fatal("manual duplicates did not merge while queued")
	}
	if qd, rn := q.Depth(); qd != 2 || rn != 1 {
		t.Fatalf("depth = %d queued, %d running", qd, rn)
	}
}

func TestDifferentServicesRunInParallelWithinTheBound(t *testing.T) {
	g := newGatedExec()
	q := NewQueue(NewStore(100), g.exec, 2, 0)
	runQueue(t, q)
	for _, s := range []string{"a", "b", "c"} {
		if _, _, err := q.Submit(s, trig(1)); err != nil {
			t.Fatal(err)
		}
	}
	<-g.started
	<-g.started
	if qd, rn := q.Depth(); qd != 1 || rn != 2 {
		t.Fatalf("depth = %d queued, %d running; want 1 and 2", qd, rn)
	}
	close(g.release)
	<-g.started // c starts once a slot is free
	for range 3 {
		<-g.finished
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.maxAll != 2 {
		t.Fatalf("max parallel = %d, want 2", g.maxAll)
	}
}

func TestQuietPeriodMergesABurstBeforeItStarts(t *testing.T) {
	var runs atomic.Int32
	done := make(chan Rollout, 10)
	q := NewQueue(NewStore(100), func(ctx context.Context, r Rollout) {
		runs.Add(1)
		done <- r
	}, 1, 200*time.Millisecond)
	runQueue(t, q)
	for i := range 5 {
		q.Submit("a", trig(i))
	}
	r := <-done
	if r.Trigger.Event.Digest != "sha256:4" {
		t.Fatalf("ran %s, want the newest trigger", r.Trigger.Event.Digest)
	}
	// Nothing else is queued, so no second rollout can start.
	if qd, rn := q.Depth(); qd != 0 || runs.Load() != 1 || rn > 1 {
		t.Fatalf("queued %d, runs %d", qd, runs.Load())
	}
}

func TestShutdownCancelsQueuedAndWaitsForRunning(t *testing.T) {
	g := newGatedExec()
	store := NewStore(100)
	q := NewQueue(store, g.exec, 1, 0)
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan struct{})
	go func() {
		q.Run(ctx)
		close(returned)
	}()
	running, _, _ := q.Submit("a", trig(1))
	<-g.started
	queued, _, _ := q.Submit("b", trig(1))
	cancel()
	<-g.finished // the running rollout saw ctx cancelled
	<-returned
	if r, _ := store.Get(queued.ID); r.Status != StatusCancelled {
		t.Fatalf("queued rollout %s after shutdown", r.Status)
	}
	if r, _ := store.Get(running.ID); r.Status != StatusRunning {
		t.Fatalf("running rollout %s: only its exec finishes it", r.Status)
	}
	if _, _, err := q.Submit("a", trig(2)); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("submit after shutdown: %v", err)
	}
}

func TestStoreKeepsTheNewestFinished(t *testing.T) {
	s := NewStore(3)
	s.mu.Lock()
	for i := range 5 {
		st := StatusSucceeded
		if i == 0 {
			st = StatusRunning // never dropped
		}
		s.addLocked(&Rollout{ID: fmt.Sprint(i), Status: st, Service: "a"})
	}
	s.mu.Unlock()
	var ids []string
	for _, r := range s.List("") {
		ids = append(ids, r.ID)
	}
	if fmt.Sprint(ids) != "[4 3 0]" {
		t.Fatalf("kept %v, want [4 3 0]", ids)
	}
	if len(s.List("other")) != 0 {
		t.Fatal("service filter")
	}
}

// A rollout's record turns final inside exec, before the queue lets go of
// it; a small history may drop it meanwhile. Submit must not trip over that.
func TestSubmitWhileTheRunningRecordLeftTheHistory(t *testing.T) {
	store := NewStore(1)
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	q := NewQueue(store, func(ctx context.Context, r Rollout) {
		store.Update(r.ID, func(ro *Rollout) { ro.Status = StatusSucceeded })
		started <- struct{}{}
		<-release
	}, 2, 0)
	runQueue(t, q)
	t.Cleanup(func() { close(release) }) // runs before runQueue's cleanup
	first, _, _ := q.Submit("a", trig(1))
	<-started
	q.Submit("b", trig(1)) // starts too: pushes the finished record of "a" out
	<-started
	q.Submit("c", trig(1))
	q.Submit("c", trig(2)) // a superseded (final) record, dropped as well
	if _, ok := store.Get(first.ID); ok {
		t.Fatal("test setup: the finished record is still in the history")
	}
	if _, merged, err := q.Submit("a", trig(1)); err != nil || !merged {
		t.Fatalf("duplicate of the running push: merged=%v err=%v", merged, err)
	}
}

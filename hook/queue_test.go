package hook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/clocktest"
)

func trig(n int) fleetroll.Trigger {
	return fleetroll.Trigger{Source: string(SourceRegistry), Repository: "demo/my-service", Tag: "latest", Digest: fmt.Sprintf("sha256:%d", n)}
}

// gatedExec runs rollouts that block until released, and records overlap.
type gatedExec struct {
	mu       sync.Mutex
	ran      []Job
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

func (g *gatedExec) exec(ctx context.Context, j Job) {
	g.mu.Lock()
	g.ran = append(g.ran, j)
	g.active[j.Service]++
	if g.active[j.Service] > 1 {
		g.overlap = true
	}
	g.nowAll++
	g.maxAll = max(g.maxAll, g.nowAll)
	g.mu.Unlock()
	g.started <- j.ID
	select {
	case <-g.release:
	case <-ctx.Done():
	}
	g.mu.Lock()
	g.active[j.Service]--
	g.nowAll--
	g.mu.Unlock()
	g.finished <- j.ID
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
	q := NewQueue(store, g.exec, QueueOptions{MaxParallel: 4})
	runQueue(t, q)

	first, _, err := q.Submit(t.Context(), "my-service", trig(0), "")
	if err != nil {
		t.Fatal(err)
	}
	if id := <-g.started; id != first.ID {
		t.Fatalf("started %s, want %s", id, first.ID)
	}
	var last fleetroll.Report
	for i := 1; i < 100; i++ {
		if last, _, err = q.Submit(t.Context(), "my-service", trig(i), ""); err != nil {
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
	if g.ran[1].Trigger.Digest != "sha256:99" {
		t.Fatalf("the follow-up carries %s, want the newest trigger", g.ran[1].Trigger.Digest)
	}
	superseded, pointing := 0, 0
	for _, r := range store.List("my-service") {
		if r.Status == fleetroll.StatusSuperseded {
			superseded++
			if r.Queue.SupersededBy == last.ID {
				pointing++
			}
		}
	}
	if superseded != 98 {
		t.Fatalf("%d superseded, want 98", superseded)
	}
	// The newest MaxSupersedes point at the follow-up; the follow-up names
	// them and counts the rest.
	if pointing < MaxSupersedes {
		t.Fatalf("%d superseded rollouts point at the follow-up, want at least %d", pointing, MaxSupersedes)
	}
	got, _ := store.Get(last.ID)
	if len(got.Queue.Supersedes) != MaxSupersedes || got.Queue.SupersedesDropped != 98-MaxSupersedes {
		t.Fatalf("the follow-up lists %d superseded rollouts and counts %d more", len(got.Queue.Supersedes), got.Queue.SupersedesDropped)
	}
}

// 20 000 triggers while a rollout runs: the follow-up's record stays small
// (its supersedes chain is bounded), and every Submit walks a bounded chain.
func TestSupersedesChainIsBounded(t *testing.T) {
	g := newGatedExec()
	store := NewStore(10)
	q := NewQueue(store, g.exec, QueueOptions{MaxParallel: 1})
	runQueue(t, q)
	t.Cleanup(func() { close(g.release) })
	if _, _, err := q.Submit(t.Context(), "a", trig(0), ""); err != nil {
		t.Fatal(err)
	}
	<-g.started
	var last fleetroll.Report
	for i := 1; i <= 20000; i++ {
		var err error
		if last, _, err = q.Submit(t.Context(), "a", trig(i), ""); err != nil {
			t.Fatal(err)
		}
	}
	rec, _ := store.Get(last.ID)
	b, _ := json.Marshal(rec)
	t.Logf("after 20000 triggers the follow-up's record is %d bytes (supersedes %d, dropped %d)",
		len(b), len(rec.Queue.Supersedes), rec.Queue.SupersedesDropped)
	if len(b) > 4096 || len(rec.Queue.Supersedes) != MaxSupersedes || rec.Queue.SupersedesDropped != 19999-MaxSupersedes {
		t.Fatalf("record of %d bytes, %d supersedes, %d dropped", len(b), len(rec.Queue.Supersedes), rec.Queue.SupersedesDropped)
	}
}

func TestDuplicatesMerge(t *testing.T) {
	g := newGatedExec()
	store := NewStore(100)
	q := NewQueue(store, g.exec, QueueOptions{MaxParallel: 1})
	runQueue(t, q)
	running, _, _ := q.Submit(t.Context(), "a", trig(1), "")
	<-g.started
	// The same push again while it runs: merged into the running rollout.
	if r, merged, _ := q.Submit(t.Context(), "a", trig(1), ""); !merged || r.ID != running.ID {
		t.Fatalf("duplicate of the running push: merged=%v id=%s", merged, r.ID)
	}
	queued, merged, _ := q.Submit(t.Context(), "a", trig(2), "")
	if merged {
		t.Fatal("a new push merged")
	}
	if r, merged, _ := q.Submit(t.Context(), "a", trig(2), ""); !merged || r.ID != queued.ID {
		t.Fatalf("duplicate of the queued push: merged=%v id=%s", merged, r.ID)
	}
	// Manual triggers merge while queued, but never into a running one.
	manual := fleetroll.Trigger{Source: string(SourceManual)}
	m1, _, _ := q.Submit(t.Context(), "b", manual, "")
	m2, merged, _ := q.Submit(t.Context(), "b", manual, "")
	if !merged || m1.ID != m2.ID {
		t.Fatal("manual duplicates did not merge while queued")
	}
	if qd, rn := q.Depth(); qd != 2 || rn != 1 {
		t.Fatalf("depth = %d queued, %d running", qd, rn)
	}
}

func TestDifferentServicesRunInParallelWithinTheBound(t *testing.T) {
	g := newGatedExec()
	q := NewQueue(NewStore(100), g.exec, QueueOptions{MaxParallel: 2})
	runQueue(t, q)
	for _, s := range []string{"a", "b", "c"} {
		if _, _, err := q.Submit(t.Context(), s, trig(1), ""); err != nil {
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

// clockQueue runs a queue on a manual clock; ran receives each job.
func clockQueue(t *testing.T, quiet, maxWait time.Duration) (*Queue, *clocktest.Clock, chan Job) {
	t.Helper()
	clock := clocktest.New()
	ran := make(chan Job, 10)
	q := NewQueue(NewStore(1000), func(ctx context.Context, j Job) { ran <- j }, QueueOptions{MaxParallel: 1, Quiet: quiet, MaxWait: maxWait, Clock: clock})
	runQueue(t, q)
	return q, clock, ran
}

func TestQuietPeriodMergesABurstBeforeItStarts(t *testing.T) {
	const quiet = 2 * time.Second
	q, clock, ran := clockQueue(t, quiet, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 5 {
		made := clock.Made()
		if _, _, err := q.Submit(t.Context(), "a", trig(i), ""); err != nil {
			t.Fatal(err)
		}
		// The queue re-arms its timer for the quiet period after each
		// trigger; a second passes between triggers.
		if due := clock.Now().Add(quiet); !clock.WaitTimerAt(ctx, made, due) {
			t.Fatalf("the queue armed no timer for %s after trigger %d", due.Format(time.TimeOnly), i)
		}
		clock.Advance(time.Second)
	}
	select {
	case j := <-ran:
		t.Fatalf("%s started within the quiet period", j.ID)
	default:
	}
	clock.Advance(quiet) // quiet since the last trigger
	j := <-ran
	if j.Trigger.Digest != "sha256:4" {
		t.Fatalf("ran %s, want the newest trigger", j.Trigger.Digest)
	}
	if qd, _ := q.Depth(); qd != 0 {
		t.Fatalf("%d still queued", qd)
	}
}

// A trigger every 100ms never lets the quiet period end; the maximum wait
// starts the rollout anyway.
func TestMaxWaitEndsQuietPeriodStarvation(t *testing.T) {
	const quiet, maxWait = 2 * time.Second, 30 * time.Second
	q, clock, ran := clockQueue(t, quiet, maxWait)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var started *Job
	var at time.Duration
	first := clock.Now()
	for i := 0; started == nil && i < 1000; i++ {
		made := clock.Made()
		if _, _, err := q.Submit(t.Context(), "a", trig(i), ""); err != nil {
			t.Fatal(err)
		}
		// The timer armed for this trigger: at the end of its quiet period,
		// or of the maximum wait since the first, whichever comes first.
		// (A count of timers made ran ahead when the queue's loop armed one
		// more at its start; the test then advanced the clock between the
		// queue's reading of it and its arming, the timer came 100ms late,
		// and nothing was due at the maximum wait.)
		due := clock.Now().Add(quiet)
		if limit := first.Add(maxWait); limit.Before(due) {
			due = limit
		}
		if !clock.WaitTimerAt(ctx, made, due) {
			t.Fatalf("the queue armed no timer for %s after trigger %d", due.Format(time.TimeOnly), i)
		}
		clock.Advance(100 * time.Millisecond)
		at += 100 * time.Millisecond
		// The queue starts the rollout (and arms no timer) when it is due.
		select {
		case j := <-ran:
			started = &j
		default:
			if at >= maxWait {
				select {
				case j := <-ran:
					started = &j
				case <-ctx.Done():
				}
			}
		}
	}
	if started == nil {
		t.Fatalf("no rollout started within %s of steady triggers", at)
	}
	if at != maxWait {
		t.Fatalf("started after %s of triggers, want at the maximum wait %s", at, maxWait)
	}
	t.Logf("a trigger every 100ms: the rollout started after %s (max wait %s)", at, maxWait)
}

func TestShutdownCancelsQueuedAndWaitsForRunning(t *testing.T) {
	store := NewStore(100)
	sawCancel, finish := make(chan struct{}), make(chan struct{})
	var execDone atomic.Bool
	started := make(chan struct{})
	q := NewQueue(store, func(ctx context.Context, j Job) {
		close(started)
		<-ctx.Done()
		close(sawCancel)
		<-finish // bringing the unit back up takes a while
		execDone.Store(true)
	}, QueueOptions{MaxParallel: 1})
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan struct{})
	var returnedEarly atomic.Bool
	go func() {
		q.Run(ctx)
		returnedEarly.Store(!execDone.Load())
		close(returned)
	}()
	running, _, _ := q.Submit(t.Context(), "a", trig(1), "")
	<-started
	queued, _, _ := q.Submit(t.Context(), "b", trig(1), "")
	cancel()
	<-sawCancel
	// Run must still be waiting for the running rollout. (A bounded look:
	// a Run that does not wait returns within microseconds.)
	select {
	case <-returned:
		t.Fatal("Run returned while a rollout was still running")
	case <-time.After(100 * time.Millisecond):
	}
	close(finish)
	<-returned
	if returnedEarly.Load() {
		t.Fatal("Run returned before the running rollout's exec did")
	}
	if r, _ := store.Get(queued.ID); r.Status != fleetroll.StatusCancelled || !r.Started.IsZero() {
		t.Fatalf("queued rollout %s (started %v) after shutdown", r.Status, r.Started)
	}
	if r, _ := store.Get(running.ID); r.Status != fleetroll.StatusRunning {
		t.Fatalf("running rollout %s: only its exec finishes it", r.Status)
	}
	if _, _, err := q.Submit(t.Context(), "a", trig(2), ""); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("submit after shutdown: %v", err)
	}
}

func TestStoreKeepsTheNewestFinished(t *testing.T) {
	s := NewStore(3)
	for i := range 5 {
		st := fleetroll.StatusSucceeded
		if i == 0 {
			st = fleetroll.StatusRunning // never dropped
		}
		s.Put(fleetroll.Report{ID: fmt.Sprint(i), Status: st, Service: "a"})
	}
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

// A rollout put again (the durable queue puts a record at submit, again
// when it runs, supersedes or cancels it) is held once, in its place: a
// history pruned past its limit afterwards never meets a stale ID (it
// dereferenced nil, and killed serve, when the second put appended the ID
// twice).
func TestStoreHoldsARolloutPutAgainOnce(t *testing.T) {
	s := NewStore(3)
	s.Put(fleetroll.Report{ID: "a", Status: fleetroll.StatusQueued, Service: "s"})
	s.Put(fleetroll.Report{ID: "b", Status: fleetroll.StatusQueued, Service: "s"})
	s.Put(fleetroll.Report{ID: "a", Status: fleetroll.StatusRunning, Service: "s"})
	s.Put(fleetroll.Report{ID: "a", Status: fleetroll.StatusSuperseded, Service: "s"})
	if r, _ := s.Get("a"); r.Status != fleetroll.StatusSuperseded {
		t.Fatalf("a is %s, want the last put (superseded)", r.Status)
	}
	for i := range 10 {
		s.Put(fleetroll.Report{ID: fmt.Sprint(i), Status: fleetroll.StatusSucceeded, Service: "s"})
	}
	var ids []string
	for _, r := range s.List("") {
		ids = append(ids, r.ID)
	}
	// Three in all: b is queued, never dropped; then the newest finished.
	if fmt.Sprint(ids) != "[9 8 b]" {
		t.Fatalf("kept %v, want [9 8 b]", ids)
	}
}

// A rollout's record turns final inside exec, before the queue lets go of
// it; a small history may drop it meanwhile. Submit must not trip over that.
func TestSubmitWhileTheRunningRecordLeftTheHistory(t *testing.T) {
	store := NewStore(1)
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	q := NewQueue(store, func(ctx context.Context, j Job) {
		store.Update(j.ID, func(r *fleetroll.Report) { r.Status = fleetroll.StatusSucceeded })
		started <- struct{}{}
		<-release
	}, QueueOptions{MaxParallel: 2})
	runQueue(t, q)
	t.Cleanup(func() { close(release) }) // runs before runQueue's cleanup
	first, _, _ := q.Submit(t.Context(), "a", trig(1), "")
	<-started
	q.Submit(t.Context(), "b", trig(1), "") // starts too: pushes the finished record of "a" out
	<-started
	q.Submit(t.Context(), "c", trig(1), "")
	q.Submit(t.Context(), "c", trig(2), "") // a superseded (final) record, dropped as well
	if _, ok := store.Get(first.ID); ok {
		t.Fatal("test setup: the finished record is still in the history")
	}
	if _, merged, err := q.Submit(t.Context(), "a", trig(1), ""); err != nil || !merged {
		t.Fatalf("duplicate of the running push: merged=%v err=%v", merged, err)
	}
}

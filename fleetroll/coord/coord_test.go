package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/clocktest"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/golden"
	client "go.etcd.io/etcd/client/v2"
)

// startEtcd runs a real etcd for one test.
func startEtcd(t *testing.T) (client.KeysAPI, string, func()) {
	t.Helper()
	url, stop := etcdtest.Start(t)
	kapi, err := Connect(Config{Endpoints: []string{url}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return kapi, url, stop
}

func TestLock(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clock := clocktest.New()
	const ttl = 30 * time.Second
	a := Lock{KAPI: kapi, Key: LockKey("my-service"), Owner: "fleetroll A (rollout 1)", TTL: ttl, Clock: clock}
	b := a
	b.Owner = "fleetroll B"

	held, err := a.Acquire(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, false); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "held by fleetroll A (rollout 1)") {
		t.Fatalf("second acquire: %v", err)
	}
	// Kept alive: each TTL/3 on the lock's clock refreshes the key's TTL
	// in etcd.
	first, err := kapi.Get(ctx, a.Key, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if !clock.WaitMade(ctx, i) {
			t.Fatal("the keep-alive never waited")
		}
		clock.Advance(ttl / 3)
		// Await the refresh: the key's expiry moves on.
		for {
			resp, err := kapi.Get(ctx, a.Key, nil)
			if err != nil || resp.Node.Value != a.Owner {
				t.Fatalf("lock gone: %v", err)
			}
			if resp.Node.ModifiedIndex > first.Node.ModifiedIndex {
				first = resp
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("refresh %d never happened", i)
			}
			etcdWatchOnce(ctx, kapi, a.Key, resp.Index)
		}
	}
	if held.Err() != nil {
		t.Fatalf("lock lost: %v", held.Err())
	}
	// A waiter gets it once it is released, and only then: it reports that
	// it waits for A, and A is released only after that.
	waiting := make(chan string, 1)
	b.OnWait = func(holder string) { waiting <- holder }
	got := make(chan error, 1)
	go func() {
		h, err := b.Acquire(ctx, true)
		if err == nil {
			err = h.Release(ctx)
		}
		got <- err
	}()
	select {
	case holder := <-waiting:
		if holder != a.Owner {
			t.Fatalf("the waiter waits for %q", holder)
		}
	case err := <-got:
		t.Fatalf("the waiter did not wait: %v", err)
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the waiter never got the lock: %v", err)
	}
}

// etcdWatchOnce waits for the next change of key after index, or a second.
func etcdWatchOnce(ctx context.Context, kapi client.KeysAPI, key string, index uint64) {
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, _ = kapi.Watcher(key, &client.WatcherOptions{AfterIndex: index}).Next(wctx)
}

func TestLockLostWhenTaken(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := context.Background()
	l := Lock{KAPI: kapi, Key: LockKey("s"), Owner: "me", TTL: 1500 * time.Millisecond}
	h, err := l.Acquire(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kapi.Set(ctx, l.Key, "someone else", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Lost():
		if !strings.Contains(h.Err().Error(), "lost") {
			t.Fatalf("why: %v", h.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the lock was not noticed lost")
	}
	// Release must not delete someone else's key.
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if resp, err := kapi.Get(ctx, l.Key, nil); err != nil || resp.Node.Value != "someone else" {
		t.Fatalf("someone else's lock was removed: %v", err)
	}
}

func TestLockLostWhenEtcdGoes(t *testing.T) {
	kapi, _, stop := startEtcd(t)
	l := Lock{KAPI: kapi, Key: LockKey("s"), Owner: "me", TTL: 1500 * time.Millisecond}
	h, err := l.Acquire(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	select {
	case <-h.Lost():
	case <-time.After(15 * time.Second):
		t.Fatal("losing etcd did not lose the lock")
	}
	_ = h.Release(context.Background())
}

func TestDrain(t *testing.T) {
	kapi, _, stop := startEtcd(t)
	ctx := context.Background()
	d := Drain{KAPI: kapi, Prefix: "/services/my-service", DrainPrefix: "/fleetroll/drain/my-service", BackTimeout: 5 * time.Second}
	unit := "my-service@8901.service"
	if _, err := kapi.Set(ctx, "/services/my-service/8901", "10.0.0.1:8901", nil); err != nil {
		t.Fatal(err)
	}
	if err := d.Out(ctx, unit); err != nil {
		t.Fatal(err)
	}
	if _, err := kapi.Get(ctx, "/services/my-service/8901", nil); !isCode(err, client.ErrorCodeKeyNotFound) {
		t.Fatalf("announcement still there: %v", err)
	}
	if _, err := kapi.Get(ctx, "/fleetroll/drain/my-service/8901", nil); err != nil {
		t.Fatalf("no drain key: %v", err)
	}
	// The sidekick announces again once the drain key is gone.
	go func() {
		for {
			if _, err := kapi.Get(ctx, "/fleetroll/drain/my-service/8901", nil); isCode(err, client.ErrorCodeKeyNotFound) {
				time.Sleep(200 * time.Millisecond)
				_, _ = kapi.Set(ctx, "/services/my-service/8901", "10.0.0.1:8901", nil)
				return
			}
			time.Sleep(20 * time.Millisecond) // a sidekick polls too
		}
	}()
	if err := d.In(ctx, unit); err != nil {
		t.Fatal(err)
	}
	// Not back in time.
	d.BackTimeout = 300 * time.Millisecond
	if err := d.In(ctx, "my-service@8902.service"); err == nil || !strings.Contains(err.Error(), "not announced again") {
		t.Fatalf("err = %v", err)
	}
	// etcd unreachable: Out fails, so nothing is stopped.
	stop()
	if err := d.Out(ctx, unit); err == nil {
		t.Fatal("drain succeeded without etcd")
	}
}

func TestHistory(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := context.Background()
	h := History{KAPI: kapi, Keep: 3}
	t0 := time.Date(2026, 11, 28, 5, 0, 0, 0, time.UTC)
	for i := range 5 {
		r := fleetroll.Report{ID: fmt.Sprintf("00000000000%d", i), Service: "a", Status: fleetroll.StatusSucceeded, Started: t0.Add(time.Duration(i) * time.Minute)}
		if err := h.Save(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Save(ctx, fleetroll.Report{ID: "0000000000b1", Service: "b", Status: fleetroll.StatusFailed, Started: t0}); err != nil {
		t.Fatal(err)
	}
	got, err := h.List(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range got {
		ids = append(ids, r.ID)
	}
	if strings.Join(ids, ",") != "000000000004,000000000003,000000000002" {
		t.Fatalf("history of a = %v, want the newest 3, newest first", ids)
	}
	all, _ := h.List(ctx, "")
	if len(all) != 4 {
		t.Fatalf("all services: %d records", len(all))
	}
	if r, ok, err := h.Get(ctx, "0000000000b1"); err != nil || !ok || r.Status != fleetroll.StatusFailed {
		t.Fatalf("get b1: %+v %v %v", r, ok, err)
	}
	// Names that would leave the service's directory never reach etcd.
	for _, bad := range []string{"../..", "..", "a/b", "/", ".hidden", "a\x00"} {
		if recs, err := h.List(ctx, bad); err == nil {
			t.Fatalf("List(%q) = %d records, want an error", bad, len(recs))
		}
	}
	if _, ok, err := h.Get(ctx, "../../x"); ok || err != nil {
		t.Fatalf("Get of a bad ID: %v %v", ok, err)
	}
	if err := h.Save(ctx, fleetroll.Report{ID: "000000000009", Service: "../a"}); err == nil {
		t.Fatal("Save of a record with a bad service name succeeded")
	}
	// A record read back from etcd is the document that was saved.
	rec := fleetroll.Report{Version: fleetroll.SchemaVersion, ID: "0123456789ab", Service: "c", Status: fleetroll.StatusSucceeded,
		Trigger: fleetroll.Trigger{Source: "cli"}, By: "fleetroll restart c on h (pid 1)", Started: t0, Finished: t0.Add(5 * time.Second),
		Units: []fleetroll.UnitReport{{Unit: "c@1.service", Outcome: fleetroll.OutcomeRestarted, Stop: fleetroll.Seconds(2 * time.Second),
			Phases: []fleetroll.Span{{Phase: fleetroll.PhaseStop, Started: t0, Finished: t0.Add(2 * time.Second)}}}}}
	if err := h.Save(ctx, rec); err != nil {
		t.Fatal(err)
	}
	back, ok, err := h.Get(ctx, rec.ID)
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	saved, _ := json.Marshal(rec)
	read, _ := json.Marshal(back)
	if string(saved) != string(read) {
		t.Fatalf("read back:\n%s\nsaved:\n%s", read, saved)
	}
	golden.Check(t, "history.golden.json", read)
	if none, err := (History{KAPI: kapi}).List(ctx, "nothing"); err != nil || len(none) != 0 {
		t.Fatalf("empty history: %v %v", none, err)
	}
}

// A sidekick that checked the drain key just before it appeared announces
// the instance once more: Out removes that announcement too and waits the
// whole delay again from there.
func TestDrainUndoesAnAnnouncementThatRacedIt(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const delay = 5 * time.Second
	clock := clocktest.New()
	d := Drain{KAPI: kapi, Prefix: "/services/s", DrainPrefix: "/fleetroll/drain/s", Delay: delay, Clock: clock}
	key := "/services/s/8901"
	set, err := kapi.Set(ctx, key, "10.0.0.1:8901", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Re-announce once, right after the first delete.
	w := kapi.Watcher(key, &client.WatcherOptions{AfterIndex: set.Index})
	reannounced := make(chan struct{})
	go func() {
		for {
			resp, err := w.Next(ctx)
			if err != nil {
				return
			}
			if resp.Action == "delete" {
				_, _ = kapi.Set(ctx, key, "10.0.0.1:8901", nil)
				close(reannounced)
				return
			}
		}
	}()
	out := make(chan error, 1)
	go func() { out <- d.Out(ctx, "s@8901.service") }()
	<-reannounced
	// Out saw the announcement come back: it removed it and started the
	// delay over (a second timer), and it waits for the whole delay.
	if !clock.WaitMade(ctx, 2) {
		t.Fatal("the delay did not start again after the raced announcement")
	}
	clock.Advance(delay - time.Millisecond)
	select {
	case err := <-out:
		t.Fatalf("Out returned before the whole delay had passed since the last announcement: %v", err)
	default:
	}
	clock.Advance(time.Millisecond)
	if err := <-out; err != nil {
		t.Fatal(err)
	}
	if _, err := kapi.Get(ctx, key, nil); !isCode(err, client.ErrorCodeKeyNotFound) {
		t.Fatalf("the raced announcement is still there: %v", err)
	}
	d.Clock = nil
	d.Delay = 600 * time.Millisecond

	// A sidekick that ignores the drain key is named.
	stop := make(chan struct{})
	defer close(stop)
	set, err = kapi.Set(ctx, key, "10.0.0.1:8901", nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		w := kapi.Watcher(key, &client.WatcherOptions{AfterIndex: set.Index})
		for {
			resp, err := w.Next(ctx)
			if err != nil {
				return
			}
			select {
			case <-stop:
				return
			default:
			}
			if resp.Action == "delete" {
				_, _ = kapi.Set(ctx, key, "10.0.0.1:8901", nil)
			}
		}
	}()
	if err := d.Out(ctx, "s@8901.service"); err == nil || !strings.Contains(err.Error(), "announced again") {
		t.Fatalf("err = %v, want the stubborn announcement named", err)
	}
}

// A rollout has one record: a Save of it under another start time replaces
// it where it is, and writers that each amend a part of it at once all
// land (compare-and-swap, merged again after a lost race).
func TestHistoryOneRecordPerRollout(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	h := History{KAPI: kapi}
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	queued := fleetroll.Report{ID: "0000000000a1", Service: "s", Status: fleetroll.StatusSuperseded, Queue: &fleetroll.QueueInfo{Queued: t0}}
	if err := h.Save(ctx, queued); err != nil {
		t.Fatal(err)
	}
	started := fleetroll.Report{ID: "0000000000a1", Service: "s", Status: fleetroll.StatusInterrupted, Started: t0.Add(time.Minute)}
	if err := h.Save(ctx, started); err != nil {
		t.Fatal(err)
	}
	recs, err := h.List(ctx, "s")
	if err != nil || len(recs) != 1 || recs[0].Status != fleetroll.StatusInterrupted || recs[0].Queue != nil {
		t.Fatalf("after two saves of one rollout: %+v %v", recs, err)
	}

	// Writers amend one record at once, each adding its unit, with the
	// same start time or each its own (then each may create a record of
	// its own key, and they are folded into one).
	addUnits := func(stored, r fleetroll.Report) fleetroll.Report {
		for _, u := range stored.Units {
			if !slices.ContainsFunc(r.Units, func(o fleetroll.UnitReport) bool { return o.Unit == u.Unit }) {
				r.Units = append(r.Units, u)
			}
		}
		return r
	}
	for round, started := range []func(i int) time.Time{
		func(int) time.Time { return t0 },
		func(i int) time.Time { return t0.Add(time.Duration(i) * time.Millisecond) },
	} {
		id := fmt.Sprintf("0000000000b%d", round)
		writers := 6 - 3*round // folds make more writes: fewer writers at once
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for i := range writers {
			wg.Go(func() {
				part := fleetroll.Report{ID: id, Service: "s", Status: fleetroll.StatusInterrupted, Started: started(i),
					Units: []fleetroll.UnitReport{{Unit: fmt.Sprintf("s@%d.service", i), Outcome: fleetroll.OutcomeInterrupted}}}
				errs <- h.Amend(ctx, part, addUnits)
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		if units := unitsOf(t, h, id); len(units) != writers {
			t.Fatalf("round %d: the records of %s hold units %v, want each of the %d writers' once, in one record", round, id, units, writers)
		}
	}

	// Two records left under two keys (two writers' creates, before this
	// kind of fold): the next amend folds them into the earlier key's.
	for i, at := range []time.Time{t0, t0.Add(time.Second)} {
		part := fleetroll.Report{ID: "0000000000c1", Service: "s", Status: fleetroll.StatusInterrupted, Started: at,
			Units: []fleetroll.UnitReport{{Unit: fmt.Sprintf("s@%d.service", i)}}}
		b, _ := json.Marshal(part)
		if _, err := kapi.Set(ctx, fmt.Sprintf("%s/s/%020d-%s", HistoryPrefix, at.UnixNano(), part.ID), string(b), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Amend(ctx, fleetroll.Report{ID: "0000000000c1", Service: "s", Started: t0.Add(time.Minute),
		Units: []fleetroll.UnitReport{{Unit: "s@2.service"}}}, addUnits); err != nil {
		t.Fatal(err)
	}
	if units := unitsOf(t, h, "0000000000c1"); !slices.Equal(units, []string{"s@0.service", "s@1.service", "s@2.service"}) {
		t.Fatalf("after the fold: %v, want the three units in one record", units)
	}
}

// unitsOf is the units of a rollout's record, sorted; it fails the test
// unless the history holds exactly one record of it.
func unitsOf(t *testing.T, h History, id string) []string {
	t.Helper()
	all, err := h.List(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	var units []string
	n := 0
	for _, r := range all {
		if r.ID != id {
			continue
		}
		n++
		for _, u := range r.Units {
			units = append(units, u.Unit)
		}
	}
	if n != 1 {
		t.Fatalf("%d records of %s, want 1", n, id)
	}
	slices.Sort(units)
	return units
}

package hook

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	client "go.etcd.io/etcd/client/v2"
)

// onGet is a KeysAPI that calls hook before each Get of a key.
type onGet struct {
	client.KeysAPI
	hook func(key string)
}

func (o onGet) Get(ctx context.Context, key string, opts *client.GetOptions) (*client.Response, error) {
	o.hook(key)
	return o.KeysAPI.Get(ctx, key, opts)
}

// A newer push takes the place of the entry a receiver is about to run,
// between its read of the queue and its taking of the entry. The rollout
// that runs is the newer push's; it carries what the entries it superseded
// carried, and their records name it (not the push whose place it took).
func TestSupersededNameTheRolloutThatTookTheEntry(t *testing.T) {
	url, _ := etcdtest.Start(t)
	raw, err := coord.Connect(coord.Config{Endpoints: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	q := coord.Triggers{KAPI: raw}
	now := time.Now().UTC()
	record := func(id, pushed string, supersedes ...string) fleetroll.Report {
		return fleetroll.Report{Version: fleetroll.SchemaVersion, ID: id, Service: "my-service", Status: fleetroll.StatusQueued,
			Trigger: fleetroll.Trigger{Source: "dockerhub", Repository: "demo/my-service", Tag: "latest", PushedAt: pushed},
			Queue:   &fleetroll.QueueInfo{Queued: now, Supersedes: supersedes}, Units: []fleetroll.UnitReport{}}
	}
	add := func(r fleetroll.Report) coord.Added {
		t.Helper()
		a, err := q.Add(ctx, "my-service", triggerKey(r.Trigger), false, func() fleetroll.Report { return r }, "",
			func(old coord.QueuedTrigger, e *coord.QueuedTrigger) { handOn(old).carry(e) })
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	// x: put back by a receiver that stopped (it had superseded a1); y:
	// queued meanwhile, on a key of its own.
	x := add(record("0000000000aa", "1", "0000000000a1"))
	if _, err := q.Update(ctx, x.Entry.Key, func(e *coord.QueuedTrigger) { e.Runner = "receiver A" }); err != nil {
		t.Fatal(err)
	}
	y := add(record("0000000000bb", "2"))
	if _, err := q.Update(ctx, x.Entry.Key, func(e *coord.QueuedTrigger) { e.Runner = "" }); err != nil {
		t.Fatal(err)
	}

	// z takes y's place as the receiver goes to take y.
	var once sync.Once
	kapi := onGet{KeysAPI: raw, hook: func(key string) {
		if key == y.Entry.Key {
			once.Do(func() {
				if a := add(record("0000000000cc", "3")); a.Superseded == nil || a.Superseded.Record.ID != "0000000000bb" {
					t.Errorf("z did not take y's place: %+v", a)
				}
			})
		}
	}}
	store := NewStore(100)
	d := newDurable(kapi, store, QueueOptions{}, "receiver B", 3*time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var ran []Job
	d.exec = func(_ context.Context, j Job) bool { ran = append(ran, j); return true }
	d.services = func() []string { return []string{"my-service"} }
	d.runOne(ctx, "my-service", nil)

	if len(ran) != 1 || ran[0].ID != "0000000000cc" {
		t.Fatalf("ran %+v, want z", ran)
	}
	rec, ok := store.Get("0000000000cc")
	if !ok || rec.Queue == nil {
		t.Fatalf("z's record: %+v", rec)
	}
	got := slices.Sorted(slices.Values(rec.Queue.Supersedes))
	if want := []string{"0000000000a1", "0000000000aa", "0000000000bb"}; !slices.Equal(got, want) {
		t.Errorf("z supersedes %v, want %v", got, want)
	}
	hx, ok, err := coord.History{KAPI: raw}.Get(ctx, "0000000000aa")
	if err != nil || !ok || hx.Queue == nil || hx.Queue.SupersededBy != "0000000000cc" {
		t.Errorf("x's record in the history: %+v %v %v, want superseded by z", hx.Queue, ok, err)
	}
}

// PutNew leaves a record the store holds as it is.
func TestStorePutNewKeepsTheNewerAccount(t *testing.T) {
	s := NewStore(10)
	running := fleetroll.Report{ID: "0000000000cc", Service: "s", Status: fleetroll.StatusRunning,
		Queue: &fleetroll.QueueInfo{Supersedes: []string{"0000000000aa"}}}
	s.Put(running)
	s.PutNew(fleetroll.Report{ID: "0000000000cc", Service: "s", Status: fleetroll.StatusQueued})
	if got, _ := s.Get("0000000000cc"); got.Status != fleetroll.StatusRunning || got.Queue == nil || len(got.Queue.Supersedes) != 1 {
		t.Fatalf("after PutNew: %+v", got)
	}
	s.PutNew(fleetroll.Report{ID: "0000000000dd", Service: "s", Status: fleetroll.StatusQueued})
	if _, ok := s.Get("0000000000dd"); !ok {
		t.Fatal("PutNew of a new record did not put it")
	}
}

// The feed brings writes of a queue entry after the fact: the push's own
// write of an entry this receiver has since taken up and runs does not
// take its store's account back (what it superseded, its status); one it
// does not run is taken as etcd has it.
func TestFeedKeepsTheAccountOfARolloutThisReceiverRuns(t *testing.T) {
	d := newDurable(nil, NewStore(10), QueueOptions{}, "receiver A", 3*time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	d.services = func() []string { return []string{"my-service"} }
	for _, runs := range []bool{true, false} {
		id := "0000000000c1"
		if !runs {
			id = "0000000000c2"
		}
		account := fleetroll.Report{ID: id, Service: "my-service", Status: fleetroll.StatusRunning, By: "receiver A",
			Queue: &fleetroll.QueueInfo{Supersedes: []string{"0000000000aa", "0000000000bb"}}}
		if runs {
			d.store.Take(account)
		} else {
			d.store.Put(account)
		}
		stale := fleetroll.Report{ID: id, Service: "my-service", Status: fleetroll.StatusQueued, Queue: &fleetroll.QueueInfo{Supersedes: []string{"0000000000bb"}}}
		d.feedEntry(7, coord.QueuedTrigger{Record: stale}, nil)
		got, _ := d.store.Get(id)
		kept := got.Status == fleetroll.StatusRunning && len(got.Queue.Supersedes) == 2
		if kept != runs {
			t.Errorf("runs %v: the store holds %s, superseding %v", runs, got.Status, got.Queue.Supersedes)
		}
	}
	// Another receiver that took it over writes its entry as runner: that
	// is taken, taken up here or not.
	other := fleetroll.Report{ID: "0000000000c1", Service: "my-service", Status: fleetroll.StatusRunning, By: "receiver B"}
	d.feedEntry(8, coord.QueuedTrigger{Record: other, Runner: "receiver B"}, nil)
	if got, _ := d.store.Get("0000000000c1"); got.By != "receiver B" {
		t.Errorf("a takeover's write not taken: %+v", got)
	}
	// Once released, a write from before a runner is taken again.
	d.store.Release("0000000000c1")
	d.feedEntry(9, coord.QueuedTrigger{Record: fleetroll.Report{ID: "0000000000c1", Service: "my-service", Status: fleetroll.StatusQueued}}, nil)
	if got, _ := d.store.Get("0000000000c1"); got.Status != fleetroll.StatusQueued {
		t.Errorf("after Release: %+v", got)
	}
}

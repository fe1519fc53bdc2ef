package hook

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
)

// The feed of etcd holds events without an ID (a waiting rollout that a
// newer push took the place of). One of them first in the feed once it is
// trimmed does not make every later Last-Event-ID a reset; the floor is
// the last ID trimmed.
func TestFeedTrimmedAtAnEventWithoutID(t *testing.T) {
	s := NewStore(10)
	s.FeedFromEtcd()
	s.restartFeed(100, false)
	rec := fleetroll.Report{ID: "0123456789ab", Service: "my-service", Status: fleetroll.StatusRunning}
	id := uint64(100)
	for i := range 2 * feedSize {
		if i == feedSize { // the first event kept by the trim below
			s.mirror(0, change{}, "", rec, false, false)
			continue
		}
		id += 2 // etcd's indexes of the feed's writes are not consecutive
		s.mirror(id, change{kind: "progress"}, fleetroll.StatusRunning, rec, false, false)
	}
	s.mirror(id+2, change{kind: "progress"}, fleetroll.StatusRunning, rec, false, false) // trims
	lastDropped := uint64(100 + 2*feedSize)
	if _, backlog, complete := s.Subscribe(id, ""); !complete || len(backlog) != 1 || backlog[0].ID != id+2 {
		t.Fatalf("after %d (held): complete %v, backlog %d", id, complete, len(backlog))
	}
	if _, _, complete := s.Subscribe(lastDropped, ""); !complete {
		t.Fatalf("after %d (the last event trimmed): want the rest, not a reset", lastDropped)
	}
	if _, _, complete := s.Subscribe(lastDropped-2, ""); complete {
		t.Fatalf("after %d (an event trimmed follows): want a reset", lastDropped-2)
	}
}

// When the feed starts again from the present (etcd's window passed), the
// records it holds are brought up to date: a rollout another receiver
// runs as etcd holds it now, and one that ended meanwhile as the history
// holds it (its end is not left as running for ever).
func TestFeedRestartBringsRecordsUpToDate(t *testing.T) {
	url, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	d := newDurable(kapi, NewStore(10), QueueOptions{}, "receiver A", 3*time.Second, discardLogger())
	d.services = func() []string { return []string{"my-service"} }
	d.store.FeedFromEtcd()

	ended := fleetroll.Report{ID: "0123456789ab", Service: "my-service", Status: fleetroll.StatusRunning, By: "receiver B",
		Started: time.Now().Add(-time.Minute)}
	d.store.mirror(5, change{}, fleetroll.StatusQueued, ended, false, false)
	ended.Status, ended.Finished = fleetroll.StatusSucceeded, time.Now()
	if err := (coord.History{KAPI: kapi}).Save(t.Context(), ended); err != nil {
		t.Fatal(err)
	}

	runs := fleetroll.Report{ID: "aaaaaaaaaaaa", Service: "my-service", Status: fleetroll.StatusQueued, Trigger: fleetroll.Trigger{Tag: "v2"}}
	d.store.mirror(6, change{kind: "queued"}, "", runs, false, false)
	q := coord.Triggers{KAPI: kapi}
	add, err := q.Add(t.Context(), "my-service", "push v2", false, func() fleetroll.Report { return runs }, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Update(t.Context(), add.Entry.Key, func(e *coord.QueuedTrigger) {
		e.Runner, e.Record.By, e.Record.Status = "receiver B", "receiver B", fleetroll.StatusRunning
	}); err != nil {
		t.Fatal(err)
	}

	if _, err := d.loadFeed(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r, _ := d.store.Get(ended.ID); r.Status != fleetroll.StatusSucceeded {
		t.Errorf("a rollout that ended while the feed was not read: %s", r.Status)
	}
	if r, _ := d.store.Get(runs.ID); r.Status != fleetroll.StatusRunning || r.By != "receiver B" {
		t.Errorf("a rollout another receiver began meanwhile: %s by %q", r.Status, r.By)
	}
}

// A receiver's live gauges tell of the rollouts it runs (docs: aggregate
// across receivers with sum or max): another receiver's rollout, which
// its feed mirrors, is not counted again.
func TestLiveGaugesCountOnlyTheReceiversOwn(t *testing.T) {
	rs := newReceivers(t)
	a := rs.start(t, "receiver A")
	rec := fleetroll.Report{ID: "0123456789ab", Service: "my-service", Status: fleetroll.StatusPaused, By: "receiver B",
		Started: time.Now().Add(-time.Hour), Units: []fleetroll.UnitReport{}}
	a.srv.durable.feedEntry(7, coord.QueuedTrigger{Record: rec, Runner: "receiver B"}, nil)
	if r, ok := a.srv.Store().Get(rec.ID); !ok || r.Status != fleetroll.StatusPaused {
		t.Fatalf("the feed did not mirror B's rollout: %+v", r)
	}
	req := mustRequest(t, "GET", a.http.URL+"/metrics", map[string]string{"Authorization": "Bearer " + testToken})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, name := range []string{"fleetroll_rollouts_paused", "fleetroll_rollout_running_seconds"} {
		if v := metricValue(t, string(b), name+`{service="my-service"}`); v != 0 {
			t.Errorf("%s on A = %v; B runs that rollout", name, v)
		}
	}
}

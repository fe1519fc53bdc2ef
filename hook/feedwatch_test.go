package hook

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
)

// steps is what a test compares of a stream: each event's id, kind, unit
// and status.
func steps(evs []StreamEvent, rollout string) []string {
	var out []string
	for _, ev := range evs {
		if ev.Rollout == rollout {
			out = append(out, fmt.Sprintf("%d %s %s %s", ev.ID, ev.Kind, ev.Unit, ev.Status))
		}
	}
	return out
}

// Two receivers over one etcd stream the same events of a rollout, with
// the same IDs, whichever of them runs it (the one that ran it and the one
// that did not show the same). A client that read part of the stream on one resumes on
// the other where it left off (Last-Event-ID).
func TestEveryReceiverStreamsEveryRollout(t *testing.T) {
	rs := newReceivers(t)
	a, b := rs.start(t, "receiver A"), rs.start(t, "receiver B")
	auth := map[string]string{"Authorization": "Bearer " + testToken}

	onA, onB := stream(t, a.http.URL, "", auth), stream(t, b.http.URL, "", auth)
	defer onA.Body.Close()
	defer onB.Body.Close()
	resp, body := a.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, rs.push(t), jsonHeaders())
	if resp.StatusCode != 202 {
		t.Fatalf("A: %d %v", resp.StatusCode, body)
	}
	id := body["id"].(string)
	gotA := readUntil(t, onA, id, string(fleetroll.StatusSucceeded))
	gotB := readUntil(t, onB, id, string(fleetroll.StatusSucceeded))
	sa, sb := steps(gotA, id), steps(gotB, id)
	if strings.Join(sa, "\n") != strings.Join(sb, "\n") {
		t.Fatalf("the receivers' streams differ:\nA:\n%s\nB:\n%s", strings.Join(sa, "\n"), strings.Join(sb, "\n"))
	}
	for _, u := range testUnits[:3] {
		for _, kind := range []string{"stopping", "stopped", "starting", "running"} {
			if !strings.Contains(strings.Join(sa, "\n"), " "+kind+" "+u+" ") {
				t.Errorf("no %s event of %s:\n%s", kind, u, strings.Join(sa, "\n"))
			}
		}
	}
	final := waitFinal(t, a, id)
	if !strings.HasPrefix(final.By, "receiver ") || final.Status != fleetroll.StatusSucceeded {
		t.Fatalf("record %+v", final)
	}

	// Half of A's stream read; the rest read from B.
	half := gotA[len(gotA)/2]
	rest := stream(t, b.http.URL, "?rollout="+id, map[string]string{"Authorization": "Bearer " + testToken,
		"Last-Event-ID": strconv.FormatUint(half.ID, 10)})
	defer rest.Body.Close()
	tail := readUntil(t, rest, id, string(fleetroll.StatusSucceeded))
	var want []StreamEvent
	for _, ev := range gotA {
		if ev.ID > half.ID {
			want = append(want, ev)
		}
	}
	if got, exp := strings.Join(steps(tail, id), "\n"), strings.Join(steps(want, id), "\n"); got != exp {
		t.Fatalf("resumed on B after %d:\n%s\nwant:\n%s", half.ID, got, exp)
	}
}

// An event ID that a receiver's watch has not reached yet (the client read
// it on a receiver ahead of this one) is not a reason to reset: the events
// after it follow. One older than what the feed holds is.
func TestSubscribeToEtcdIndexes(t *testing.T) {
	s := NewStore(10)
	s.FeedFromEtcd()
	s.restartFeed(100, false)
	rec := fleetroll.Report{ID: "0123456789ab", Service: "my-service", Status: fleetroll.StatusQueued}
	s.mirror(101, change{kind: "queued"}, "", rec, false, false)

	if _, _, complete := s.Subscribe(99, ""); complete {
		t.Error("an ID before the feed began: want a reset")
	}
	sub, backlog, complete := s.Subscribe(100, "")
	if !complete || len(backlog) != 1 || backlog[0].ID != 101 {
		t.Fatalf("after 100: %v %v", backlog, complete)
	}
	s.Unsubscribe(sub)
	ahead, backlog, complete := s.Subscribe(105, "")
	if !complete || len(backlog) != 0 {
		t.Fatalf("after 105 (not seen here yet): %v %v", backlog, complete)
	}
	rec.Status = fleetroll.StatusRunning
	s.mirror(104, change{}, fleetroll.StatusQueued, rec, false, false) // the client has it already
	s.mirror(106, change{kind: "stopping", unit: "my-service@8901.service"}, fleetroll.StatusRunning, rec, false, false)
	select {
	case ev := <-ahead.C:
		if ev.ID != 106 || ev.Kind != "stopping" {
			t.Fatalf("after 105: got %d %s first", ev.ID, ev.Kind)
		}
	default:
		t.Fatal("after 105: event 106 not sent")
	}
	// The feed starts again (etcd's window passed): every subscriber is
	// cut off, and the IDs before are gone.
	s.restartFeed(500, true)
	if _, ok := <-ahead.C; ok {
		t.Fatal("a subscriber outlived the feed's restart")
	}
	if _, _, complete := s.Subscribe(106, ""); complete {
		t.Error("after the restart, 106 is gone: want a reset")
	}
	// Local changes make no events of their own: etcd numbers them.
	sub, _, _ = s.Subscribe(0, "")
	s.Update(rec.ID, func(r *fleetroll.Report) { r.Status = fleetroll.StatusSucceeded })
	select {
	case ev := <-sub.C:
		t.Fatalf("a local change made event %d %s", ev.ID, ev.Kind)
	default:
	}
}

// What each write of a queue entry is in the stream: a new rollout, a
// status the record entered, the step its Event names, and a waiting
// rollout a newer push took the place of.
func TestFeedChangeKinds(t *testing.T) {
	d := &durable{store: NewStore(10), owner: "receiver B", services: func() []string { return []string{"my-service"} },
		opt: QueueOptions{Clock: fleetroll.SystemClock{}}}
	d.store.FeedFromEtcd()
	d.store.restartFeed(10, false)
	sub, _, _ := d.store.Subscribe(0, "")
	rec := fleetroll.Report{ID: "0123456789ab", Service: "my-service", Status: fleetroll.StatusQueued}
	e := coord.QueuedTrigger{Record: rec}
	d.feedEntry(11, e, nil)
	prev := e
	e.Runner, e.Record.Status = "receiver B", fleetroll.StatusRunning
	d.feedEntry(12, e, &prev)
	prev = e
	e.Event = &coord.EntryEvent{Kind: "stopping", Unit: "my-service@8901.service", Phase: fleetroll.PhaseStop}
	d.feedEntry(13, e, &prev)
	// A newer push takes the waiting entry's place: the old rollout is
	// superseded, the new one queued.
	waiting := coord.QueuedTrigger{Record: fleetroll.Report{ID: "aaaaaaaaaaaa", Service: "my-service", Status: fleetroll.StatusQueued}}
	newer := coord.QueuedTrigger{Record: fleetroll.Report{ID: "bbbbbbbbbbbb", Service: "my-service", Status: fleetroll.StatusQueued}}
	d.feedEntry(14, newer, &waiting)
	want := []string{"11 queued 0123456789ab queued", "12 running 0123456789ab running", "13 stopping 0123456789ab running my-service@8901.service",
		"0 superseded aaaaaaaaaaaa superseded", "14 queued bbbbbbbbbbbb queued"}
	for _, w := range want {
		select {
		case ev := <-sub.C:
			got := strings.TrimSpace(fmt.Sprintf("%d %s %s %s %s", ev.ID, ev.Kind, ev.Rollout, ev.Status, ev.Unit))
			if got != w {
				t.Fatalf("event %q, want %q", got, w)
			}
		default:
			t.Fatalf("no event; want %q", w)
		}
	}
	// The store keeps the runner's own record while it runs.
	if _, ok := d.store.Get("0123456789ab"); !ok {
		t.Fatal("the mirrored record is not held")
	}
	if r, _ := d.store.Get("aaaaaaaaaaaa"); r.Status != fleetroll.StatusSuperseded || r.Queue.SupersededBy != "bbbbbbbbbbbb" {
		t.Fatalf("superseded record %+v", r)
	}
}

// A receiver that lost a rollout to another (its claim lapsed) writes no
// more progress into its entry: such a write would be an event of nothing
// on every receiver's stream.
func TestProgressWritesOnlyItsOwnEntry(t *testing.T) {
	rs := newReceivers(t)
	rec := fleetroll.Report{Version: fleetroll.SchemaVersion, ID: fleetroll.NewID(), Service: "my-service", Status: fleetroll.StatusRunning,
		Trigger: fleetroll.Trigger{Source: "manual"}, Units: []fleetroll.UnitReport{}}
	q := coord.Triggers{KAPI: rs.kapi}
	add, err := q.Add(t.Context(), "my-service", "push", false, func() fleetroll.Report { return rec }, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	d := newDurable(rs.kapi, NewStore(10), QueueOptions{}, "receiver B", time.Second, slog.New(slog.DiscardHandler))
	d.store.Put(rec)
	j := Job{ID: rec.ID, Service: "my-service", entry: add.Entry.Key}
	index := func() uint64 {
		resp, err := rs.kapi.Get(t.Context(), add.Entry.Key, nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Node.ModifiedIndex
	}
	for _, c := range []struct {
		runner string
		writes bool
	}{{"receiver A", false}, {"receiver B", true}} {
		if _, err := q.Update(t.Context(), add.Entry.Key, func(e *coord.QueuedTrigger) { e.Runner = c.runner }); err != nil {
			t.Fatal(err)
		}
		before := index()
		d.progress(t.Context(), j, &coord.EntryEvent{Kind: "stopping", Unit: "my-service@8901.service"})
		if wrote := index() != before; wrote != c.writes {
			t.Errorf("entry run by %s: written %v, want %v", c.runner, wrote, c.writes)
		}
	}
}

// A rollout another receiver ran reads as ended once the feed brought its
// end, though its queue entry is still there (the runner removes it after
// the history write): the API never answers "running" after the stream
// said "succeeded".
func TestAnEndedRolloutReadsEndedBeforeItsEntryGoes(t *testing.T) {
	s := NewStore(10)
	running := fleetroll.Report{ID: "0123456789ab", Service: "my-service", Status: fleetroll.StatusRunning, By: "receiver B"}
	ended := running
	ended.Status = fleetroll.StatusSucceeded
	s.Put(ended)
	m := records{store: s, owner: "receiver A", config: func() *Config { return &Config{} },
		live: func(context.Context) (map[string]fleetroll.Report, error) {
			return map[string]fleetroll.Report{running.ID: running}, nil
		}}
	if r, ok, err := m.Get(t.Context(), running.ID); err != nil || !ok || r.Status != fleetroll.StatusSucceeded {
		t.Fatalf("get: %s %v %v", r.Status, ok, err)
	}
	for _, r := range m.merged(s.List(""), map[string]fleetroll.Report{running.ID: running}, nil, "") {
		if r.ID == running.ID && r.Status != fleetroll.StatusSucceeded {
			t.Fatalf("listed as %s", r.Status)
		}
	}
}

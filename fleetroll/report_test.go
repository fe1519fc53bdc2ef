package fleetroll

import (
	"reflect"
	"testing"
	"time"
)

// The queue's record of a rollout whose receiver stopped, and the
// recovery's of the intent it left, joined in either order: one record
// that says what each knew.
func TestJoinInterrupted(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 36, 0, 0, time.UTC)
	trig := Trigger{Source: "dockerhub", Repository: "demo/s", Tag: "latest", PushedAt: "1"}
	queue := Report{Version: SchemaVersion, ID: "08b5c23b2a27", Service: "s", Status: StatusInterrupted, Trigger: trig, By: "receiver B",
		Started: t0, Finished: t0.Add(40 * time.Second),
		Queue: &QueueInfo{Queued: t0.Add(-time.Second), SupersededBy: "a871aaa498ed"},
		Units: []UnitReport{
			{Unit: "s@1.service", Outcome: OutcomeRestarted},
			{Unit: "s@2.service", Outcome: OutcomeInProgress, Phase: PhaseStart},
			{Unit: "s@3.service", Outcome: OutcomePending},
		},
		Error: "the receiver running it stopped; a newer trigger (a871aaa498ed) took its place"}
	recovery := Report{Version: SchemaVersion, ID: "08b5c23b2a27", Service: "s", Status: StatusInterrupted, Trigger: trig, By: "receiver B",
		Started: t0, Finished: t0.Add(45 * time.Second),
		Units: []UnitReport{{Unit: "s@2.service", Outcome: OutcomeInterrupted, Phase: PhaseStart, Error: "restored by receiver A"}},
		Error: "interrupted: the fleetroll running it stopped with s@2.service in phase start in flight"}
	wantUnits := []UnitReport{
		{Unit: "s@1.service", Outcome: OutcomeRestarted},
		{Unit: "s@2.service", Outcome: OutcomeInterrupted, Phase: PhaseStart, Error: "restored by receiver A"},
		{Unit: "s@3.service", Outcome: OutcomePending},
	}
	for _, tc := range []struct {
		name            string
		stored, later   Report
		wantError       string
		wantSupersedeBy string
	}{
		{"the queue's first", queue, recovery,
			"interrupted: the fleetroll running it stopped with s@2.service in phase start in flight; the receiver running it stopped; a newer trigger (a871aaa498ed) took its place",
			"a871aaa498ed"},
		{"the recovery's first", recovery, queue,
			"the receiver running it stopped; a newer trigger (a871aaa498ed) took its place; interrupted: the fleetroll running it stopped with s@2.service in phase start in flight",
			"a871aaa498ed"},
		{"the same twice", queue, queue, queue.Error, "a871aaa498ed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stored, later := tc.stored.Clone(), tc.later.Clone()
			got := JoinInterrupted(tc.stored, tc.later)
			if got.Status != StatusInterrupted || got.ID != queue.ID || got.Trigger != trig || !got.Started.Equal(t0) {
				t.Errorf("status %s, id %s, trigger %v, started %v", got.Status, got.ID, got.Trigger, got.Started)
			}
			if got.Queue == nil || got.Queue.SupersededBy != tc.wantSupersedeBy {
				t.Errorf("queue %+v, want superseded by %s", got.Queue, tc.wantSupersedeBy)
			}
			if got.Error != tc.wantError {
				t.Errorf("error\n%q, want\n%q", got.Error, tc.wantError)
			}
			if tc.name != "the same twice" && !reflect.DeepEqual(got.Units, wantUnits) {
				t.Errorf("units\n%+v, want\n%+v", got.Units, wantUnits)
			}
			if !got.Finished.Equal(t0.Add(45*time.Second)) && tc.name != "the same twice" {
				t.Errorf("finished %v, want the later end", got.Finished)
			}
			// The records joined are not changed.
			if !reflect.DeepEqual(stored, tc.stored) || !reflect.DeepEqual(later, tc.later) {
				t.Error("JoinInterrupted changed a record it was given")
			}
		})
	}
	// A rollout that ended before its receiver died (its queue entry left
	// behind) keeps its record, in either order, with its superseder added.
	done := Report{Version: SchemaVersion, ID: queue.ID, Service: "s", Status: StatusSucceeded, Trigger: trig, Started: t0,
		Finished: t0.Add(30 * time.Second), Units: []UnitReport{{Unit: "s@1.service", Outcome: OutcomeRestarted}}}
	for _, got := range []Report{JoinInterrupted(done, queue), JoinInterrupted(queue, done)} {
		if got.Status != StatusSucceeded || got.Error != "" || len(got.Units) != 1 || got.Queue == nil || got.Queue.SupersededBy != "a871aaa498ed" {
			t.Errorf("a succeeded rollout joined with the queue's record: %+v, queue %+v", got, got.Queue)
		}
	}
	// A record that only one of them has a field of keeps it.
	onlyQueue := JoinInterrupted(recovery, Report{ID: queue.ID, Service: "s", Queue: queue.Queue, Units: []UnitReport{}})
	if onlyQueue.Trigger != trig || onlyQueue.By != "receiver B" || onlyQueue.Status != StatusInterrupted || len(onlyQueue.Units) != 1 {
		t.Errorf("fields of the stored record lost: %+v", onlyQueue)
	}
}

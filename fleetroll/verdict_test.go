package fleetroll

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coreos/fleet/schema"
	"github.com/fleetroll/fleetroll/internal/golden"
)

func TestVerdict(t *testing.T) {
	stopErr := errors.New("timed out after 2m")
	startErr := errors.New("unit failed")
	cases := []struct {
		name        string
		stop        stopResult
		start       error
		phase       Phase
		leftStopped bool
		msg         string // "" for no error
	}{
		{"restarted", stopResult{}, nil, "", false, ""},
		{"start failed after a clean stop", stopResult{}, startErr, PhaseStart, true, "unit failed"},
		{"stop failed, brought back", stopResult{err: stopErr}, nil, PhaseStop, false, "timed out after 2m; the unit was brought back up"},
		{"stop failed and could not be brought back", stopResult{err: stopErr}, startErr, PhaseStop, true, "timed out after 2m; bringing it back up: unit failed"},
		{"interrupted during the stop, restarted", stopResult{interrupted: context.Canceled}, nil, PhaseStop, false, "context canceled; the stop had begun, so the unit was restarted"},
		{"interrupted, then the start failed", stopResult{interrupted: context.Canceled}, startErr, PhaseStart, true, "unit failed"},
		{"someone else changed the target during the start", stopResult{}, ErrTargetChanged, PhaseStart, false, ErrTargetChanged.Error()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			phase, left, err := verdict(c.stop, c.start)
			if phase != c.phase || left != c.leftStopped {
				t.Fatalf("verdict = (%q, %v), want (%q, %v)", phase, left, c.phase, c.leftStopped)
			}
			switch {
			case c.msg == "" && err != nil:
				t.Fatalf("err = %v, want none", err)
			case c.msg != "" && (err == nil || err.Error() != c.msg):
				t.Fatalf("err = %v, want %q", err, c.msg)
			}
			// The causes stay reachable for errors.Is.
			for _, cause := range []error{c.stop.err, c.start} {
				if cause != nil && !errors.Is(err, cause) {
					t.Fatalf("%v does not wrap %v", err, cause)
				}
			}
		})
	}
}

func TestReportRecordsEachPhaseWithItsTimes(t *testing.T) {
	a, b := "s@1.service", "s@2.service"
	f := newFakeFleet(a, b)
	var progress []UnitReport
	r, clock, _ := newTestRoller(t, f, Options{Grace: time.Second})
	r.opt.OnEvent = func(e Event) {
		if e.Progress.Unit != e.Unit {
			t.Errorf("event of %s carries the record of %s", e.Unit, e.Progress.Unit)
		}
		progress = append(progress, e.Progress)
	}
	start := clock.Now()
	rep, err := r.Roll(context.Background(), planOf(a, b))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Version != SchemaVersion || rep.Status != StatusSucceeded || !rep.Started.Equal(start) {
		t.Fatalf("report = %+v", rep)
	}
	var got []Phase
	for _, s := range rep.Units[0].Phases {
		got = append(got, s.Phase)
		if s.Finished.Before(s.Started) || s.Finished.IsZero() {
			t.Fatalf("span %+v", s)
		}
	}
	if want := []Phase{PhaseStop, PhaseStart, PhaseGrace}; !reflect.DeepEqual(got, want) {
		t.Fatalf("phases of %s = %v, want %v", a, got, want)
	}
	// Spans follow each other and the next unit starts after the grace.
	p := rep.Units[0].Phases
	if !p[1].Started.Equal(p[0].Finished) || p[2].Finished.Sub(p[2].Started) != time.Second ||
		rep.Units[1].Phases[0].Started.Before(p[2].Finished) {
		t.Fatalf("spans do not follow each other: %+v then %+v", p, rep.Units[1].Phases)
	}
	if len(rep.Units[1].Phases) != 2 { // no grace after the last unit
		t.Fatalf("phases of %s = %+v", b, rep.Units[1].Phases)
	}
	// While it ran, the unit was in progress; the last event has its final
	// record.
	if progress[0].Outcome != OutcomeInProgress || progress[0].Phase != PhaseStop {
		t.Fatalf("first event's record = %+v", progress[0])
	}
	last := progress[len(progress)-1]
	if last.Unit != b || last.Outcome != OutcomeRestarted {
		t.Fatalf("last event's record = %+v", last)
	}
}

func TestRecordWrittenBeforeVersionsStillReads(t *testing.T) {
	// The shape of a history record before the schema had a version.
	old := `{"id":"0123456789ab","service":"my-service","status":"cancelled","trigger":"dockerhub demo/my-service:latest",
	"by":"fleetroll serve on h (pid 1)","started":"2026-01-01T00:00:00Z","finished":"2026-01-01T00:00:09Z",
	"units":[{"unit":"my-service@8901.service","outcome":"interrupted","phase":"stop","stop_seconds":1.5,"start_seconds":2,"total_seconds":3.5}]}`
	var r Report
	if err := jsonUnmarshal(old, &r); err != nil {
		t.Fatal(err)
	}
	if r.Version != SchemaVersion || r.Status != StatusInterrupted {
		t.Fatalf("version %d status %q: a rollout that started is interrupted, not cancelled", r.Version, r.Status)
	}
	want := Trigger{Source: "dockerhub", Repository: "demo/my-service", Tag: "latest"}
	if r.Trigger != want || r.Units[0].Stop != Seconds(1500*time.Millisecond) {
		t.Fatalf("record = %+v", r)
	}
	var cli Report
	if err := jsonUnmarshal(`{"id":"a","service":"s","status":"succeeded","trigger":"cli"}`, &cli); err != nil || cli.Trigger.Source != "cli" || cli.Units == nil {
		t.Fatalf("cli record = %+v, %v", cli, err)
	}
	if err := jsonUnmarshal(`{"id":"a","trigger":42}`, &cli); err == nil || !strings.Contains(err.Error(), "trigger") && !strings.Contains(err.Error(), "number") {
		t.Fatalf("bad trigger: %v", err)
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// The roller's record of a roll that halts in the health gate: the golden
// shape of a report.
func TestReportGolden(t *testing.T) {
	a, b, c := "s@1.service", "s@2.service", "s@3.service"
	f := newFakeFleet(a, b, c)
	gated := 0
	r, _, _ := newTestRoller(t, f, Options{Grace: time.Second, RolloutID: "0123456789ab", Hooks: Hooks{
		BeforeStop: func(ctx context.Context, u string) error { return nil },
		AfterRunning: func(ctx context.Context, u string, st *schema.UnitState) error {
			if gated++; gated == 2 {
				return errors.New("instance not healthy")
			}
			return nil
		},
	}})
	rep, err := r.Roll(context.Background(), planOf(a, b, c))
	if err == nil {
		t.Fatal("the roll did not halt")
	}
	doc, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "report-halted.golden.json", doc)
}

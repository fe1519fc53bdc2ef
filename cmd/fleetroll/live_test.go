package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// On a terminal, restart redraws one line per unit in place; elsewhere it
// prints a line per event.
func TestLiveViewRedrawsInPlace(t *testing.T) {
	var out bytes.Buffer
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	v := newLiveView(&out, []string{"s@1.service", "s@2.service"}, func() time.Time { return now })
	v.mu.Lock()
	v.drawLocked()
	v.mu.Unlock()
	v.event(fleetroll.Event{Unit: "s@1.service", Kind: fleetroll.EventStopping, Phase: fleetroll.PhaseStop})
	now = now.Add(3 * time.Second)
	v.event(fleetroll.Event{Unit: "s@1.service", Kind: fleetroll.EventFailed, Phase: fleetroll.PhaseStart, Elapsed: 3 * time.Second, Err: errors.New("unit failed")})
	v.event(fleetroll.Event{RolloutID: "abc", Kind: fleetroll.EventPaused, Canary: &fleetroll.CanaryReport{Units: []string{"s@1.service"}}})
	s := out.String()
	if n := strings.Count(s, "\x1b[2A"); n < 3 {
		t.Fatalf("redrawn in place %d times:\n%q", n, s)
	}
	frames := strings.Split(s, "\x1b[2A")
	last := frames[len(frames)-1]
	if !strings.Contains(last, "s@1.service  FAILED: unit failed 3s") || !strings.Contains(last, "s@2.service  pending") {
		t.Fatalf("last frame:\n%q", last)
	}
	if !strings.Contains(s, "rollout abc paused after its canaries s@1.service") {
		t.Fatalf("the rollout's own event is not printed above the view:\n%q", s)
	}
	// Not a terminal: line by line.
	var lines bytes.Buffer
	onEvent, say, stop := progress(context.Background(), &lines, &fleetroll.Plan{Units: []fleetroll.PlannedUnit{{Name: "s@1.service"}}})
	onEvent(fleetroll.Event{Unit: "s@1.service", Kind: fleetroll.EventStopping})
	say("a note")
	stop()
	if lines.String() != "s@1.service: stopping\na note\n" {
		t.Fatalf("not a terminal: %q", lines.String())
	}
}

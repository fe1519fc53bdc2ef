package hook

import (
	"strings"
	"testing"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// What goes to Docker Hub is a short outcome: the unit and phase of a
// halt, never the error's text (fleet URLs, dial errors).
func TestOutcomeSaysWhereNotWhy(t *testing.T) {
	secretish := "dial tcp 10.1.2.3:49153: connect: connection refused; http://10.1.2.3:49153/fleet/v1/state"
	cases := []struct {
		rep  fleetroll.Report
		want string
	}{
		{fleetroll.Report{Service: "s", Status: fleetroll.StatusSucceeded, Units: []fleetroll.UnitReport{{Outcome: fleetroll.OutcomeRestarted}, {Outcome: fleetroll.OutcomeRestarted}}},
			"s: 2 unit(s) restarted"},
		{fleetroll.Report{Service: "s", Status: fleetroll.StatusFailed, Error: secretish, Units: []fleetroll.UnitReport{
			{Unit: "s@1.service", Outcome: fleetroll.OutcomeRestarted},
			{Unit: "s@2.service", Outcome: fleetroll.OutcomeFailed, Phase: fleetroll.PhaseHealth, Error: secretish},
			{Unit: "s@3.service", Outcome: fleetroll.OutcomeUntouched}}},
			"s: rollout failed at s@2.service (health); 1 unit(s) restarted"},
		{fleetroll.Report{Service: "s", Status: fleetroll.StatusFailed, Error: secretish},
			"s: rollout failed before any unit was touched"},
		{fleetroll.Report{Service: "s", Status: fleetroll.StatusCancelled, Error: secretish}, "s: rollout cancelled"},
	}
	for _, c := range cases {
		got := Outcome(c.rep)
		if got != c.want {
			t.Errorf("Outcome = %q, want %q", got, c.want)
		}
		if strings.Contains(got, "10.1.2.3") {
			t.Errorf("Outcome leaks an address: %q", got)
		}
	}
}

package hook

import (
	"testing"

	"github.com/fleetroll/fleetroll/fleetroll"
)

func TestProgressFromReportKeepsWhereAUnitRuns(t *testing.T) {
	rep := &fleetroll.Report{Units: []fleetroll.UnitReport{
		{Unit: "s@1.service", Outcome: fleetroll.OutcomeRestarted, Machine: "bbbbbbbb", MovedFrom: "aaaaaaaa"},
		{Unit: "s@2.service", Outcome: fleetroll.OutcomeFailed, LastState: "no state", LeftStopped: true},
	}}
	got := progressFromReport(rep)
	if got[0].Phase != "restarted" || got[0].Machine != "bbbbbbbb" || got[0].MovedFrom != "aaaaaaaa" {
		t.Fatalf("moved unit: %+v", got[0])
	}
	if got[1].Phase != "failed" || got[1].State != "no state" || !got[1].LeftStopped || got[1].MovedFrom != "" {
		t.Fatalf("failed unit: %+v", got[1])
	}
}

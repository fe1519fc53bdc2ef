package fleetroll

import (
	"errors"
	"fmt"

	"github.com/coreos/fleet/schema"
)

// ErrUnitFailed is returned when systemd reports a unit failed while it was
// being started.
var ErrUnitFailed = errors.New("unit failed")

// DescribeState renders a unit state as "active/running on 3d1219c7" or
// "no state".
func DescribeState(st *schema.UnitState) string {
	if st == nil {
		return "no state"
	}
	s := fmt.Sprintf("%s/%s", orDash(st.SystemdActiveState), orDash(st.SystemdSubState))
	if st.MachineID != "" {
		s += " on " + shortID(st.MachineID)
	}
	return s
}

// StoppedStatus judges whether a unit being stopped has stopped: systemd has
// left "active" and is not on its way back or still deactivating, that is
// "inactive" or "failed". A nil state (fleet publishes none) proves nothing:
// with the target state "loaded" fleet keeps the unit loaded and publishes
// "inactive" once it stopped, and a state goes missing while fleet restarts,
// when a unit that never stopped would pass for stopped.
func StoppedStatus(st *schema.UnitState) (msg string, done bool, err error) {
	if st == nil {
		return "waiting for stop (no state)", false, nil
	}
	switch st.SystemdActiveState {
	case "inactive", "failed":
		return "stopped (" + DescribeState(st) + ")", true, nil
	default:
		return "waiting for stop (" + DescribeState(st) + ")", false, nil
	}
}

// RunningStatus judges whether a unit being started runs: fleet reports it
// on a machine and systemd reports it active/running. A "failed" state is an
// error wrapping ErrUnitFailed.
func RunningStatus(st *schema.UnitState) (msg string, done bool, err error) {
	if st == nil {
		return "waiting for start (no state)", false, nil
	}
	if st.SystemdActiveState == "failed" {
		return "failed (" + DescribeState(st) + ")", false, fmt.Errorf("%w (%s)", ErrUnitFailed, DescribeState(st))
	}
	if st.MachineID != "" && st.SystemdActiveState == "active" && st.SystemdSubState == "running" {
		return "running (" + DescribeState(st) + ")", true, nil
	}
	return "waiting for start (" + DescribeState(st) + ")", false, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

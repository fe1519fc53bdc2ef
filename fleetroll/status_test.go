package fleetroll

import (
	"errors"
	"testing"

	"github.com/coreos/fleet/schema"
)

func st(machine, active, sub string) *schema.UnitState {
	return &schema.UnitState{Name: "my-service@8901.service", MachineID: machine, SystemdActiveState: active, SystemdSubState: sub}
}

func TestStoppedStatus(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state *schema.UnitState
		done  bool
	}{
		{"no state proves nothing", nil, false},
		{"inactive dead", st("m1", "inactive", "dead"), true},
		{"failed", st("m1", "failed", "failed"), true},
		{"still running", st("m1", "active", "running"), false},
		{"deactivating", st("m1", "deactivating", "stop-sigterm"), false},
		{"activating again", st("m1", "activating", "start-pre"), false},
		{"reloading", st("m1", "reloading", "reload"), false},
		{"empty state", st("", "", ""), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, done, err := StoppedStatus(tc.state)
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if done != tc.done {
				t.Fatalf("done = %v, want %v (%s)", done, tc.done, msg)
			}
			if msg == "" {
				t.Fatal("empty message")
			}
		})
	}
}

func TestRunningStatus(t *testing.T) {
	for _, tc := range []struct {
		name   string
		state  *schema.UnitState
		done   bool
		failed bool
	}{
		{"no state yet", nil, false, false},
		{"running on a machine", st("m1", "active", "running"), true, false},
		{"running but no machine", st("", "active", "running"), false, false},
		{"active but exited", st("m1", "active", "exited"), false, false},
		{"activating", st("m1", "activating", "start-pre"), false, false},
		{"auto-restart", st("m1", "activating", "auto-restart"), false, false},
		{"inactive", st("m1", "inactive", "dead"), false, false},
		{"failed", st("m1", "failed", "failed"), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, done, err := RunningStatus(tc.state)
			if done != tc.done {
				t.Fatalf("done = %v, want %v (%s)", done, tc.done, msg)
			}
			if got := errors.Is(err, ErrUnitFailed); got != tc.failed {
				t.Fatalf("failed = %v (err %v), want %v", got, err, tc.failed)
			}
		})
	}
}

func TestDescribeState(t *testing.T) {
	if got, want := DescribeState(nil), "no state"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got, want := DescribeState(st("3d1219c7c4c5404a", "active", "running")), "active/running on 3d1219c7"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got, want := DescribeState(st("", "", "")), "-/-"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

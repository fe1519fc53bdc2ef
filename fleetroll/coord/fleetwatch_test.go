package coord

import (
	"testing"
	"time"

	client "go.etcd.io/etcd/client/v2"
)

func TestNewState(t *testing.T) {
	running := &client.Node{Value: `{"activeState":"active","subState":"running"}`}
	dead := &client.Node{Value: `{"activeState":"inactive","subState":"dead"}`}
	for _, c := range []struct {
		name string
		resp *client.Response
		want bool
	}{
		{"first state", &client.Response{Action: "set", Node: running}, true},
		{"a new state", &client.Response{Action: "set", Node: dead, PrevNode: running}, true},
		{"the same state written again", &client.Response{Action: "set", Node: running, PrevNode: running}, false},
		{"expired", &client.Response{Action: "expire", Node: &client.Node{}, PrevNode: running}, true},
		{"a watch set up again", nil, true},
	} {
		if got := newState(c.resp); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// A state fleet publishes under PREFIX/states/UNIT/MACHINE wakes the watch
// of that unit, not of another; the watch ends with its context.
func TestFleetStatesWake(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	key := DefaultFleetPrefix + "states/s@1.service/m1"
	if _, err := kapi.Set(ctx, key, "running", nil); err != nil {
		t.Fatal(err)
	}
	mine := FleetStates{KAPI: kapi}.Watch(ctx, "s@1.service")
	other := FleetStates{KAPI: kapi}.Watch(ctx, "s@2.service")
	deadline := time.After(10 * time.Second)
	// The watch may start after a first write: write until it wakes.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-mine:
			select {
			case <-other:
				t.Fatal("another unit's state woke this one")
			default:
			}
			return
		case <-tick.C:
			if _, err := kapi.Set(ctx, key, []string{"stopped", "running"}[i%2], nil); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("no wake-up")
		}
	}
}

package coord

import (
	"context"
	"strings"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// DefaultFleetPrefix is where fleet keeps its state in etcd (its
// etcd_key_prefix).
const DefaultFleetPrefix = "/_coreos.com/fleet/"

// FleetStates wakes the roller's waits when fleet publishes a new state of
// a unit: fleet's agents write each unit's systemd state to
// PREFIX/states/UNIT/MACHINE, and fleet's API answers from there. Only a
// changed value wakes (an agent also rewrites an unchanged state).
type FleetStates struct {
	KAPI   client.KeysAPI
	Prefix string // DefaultFleetPrefix when empty
}

var _ fleetroll.Waker = FleetStates{}

// Watch implements fleetroll.Waker. The watch ends with ctx; when etcd is
// out of reach it stops waking and the roller polls on.
func (f FleetStates) Watch(ctx context.Context, unit string) <-chan struct{} {
	ch := make(chan struct{}, 1)
	if unit == "" || strings.Contains(unit, "/") || strings.Contains(unit, "..") {
		return ch // never wakes: a name that is not one key stays out of the path
	}
	prefix := f.Prefix
	if prefix == "" {
		prefix = DefaultFleetPrefix
	}
	key := strings.TrimSuffix(prefix, "/") + "/states/" + unit
	go Watch(ctx, f.KAPI, key, func(resp *client.Response) {
		if !newState(resp) {
			return
		}
		select {
		case ch <- struct{}{}:
		default:
		}
	})
	return ch
}

// newState tells whether a change under a unit's states may be a new
// state: anything but a rewrite of the same value (nil, a broken watch set
// up again, may have missed one).
func newState(resp *client.Response) bool {
	return resp == nil || resp.PrevNode == nil || resp.Node == nil || resp.PrevNode.Value != resp.Node.Value
}

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

// FleetOwn tells whether etcd is the one of the fleet cluster whose API is
// fleet: fleet's machines are registered in it (PREFIX/machines) and the
// units fleet's API lists are its jobs (PREFIX/job). When not, why says
// what was found ("does not answer", "no fleet machines in it", ...).
func FleetOwn(ctx context.Context, kapi client.KeysAPI, fleet fleetroll.Fleet) (own bool, why string) {
	children := func(dir string) (map[string]bool, error) {
		resp, err := kapi.Get(ctx, DefaultFleetPrefix+dir, &client.GetOptions{Quorum: true})
		if err != nil {
			if client.IsKeyNotFound(err) {
				return map[string]bool{}, nil
			}
			return nil, err
		}
		out := map[string]bool{}
		for _, n := range resp.Node.Nodes {
			out[n.Key[strings.LastIndex(n.Key, "/")+1:]] = true
		}
		return out, nil
	}
	machines, err := children("machines")
	if err != nil {
		return false, "it does not answer: " + firstLine(err.Error())
	}
	if len(machines) == 0 {
		return false, "no fleet machine is registered in it"
	}
	ips, err := fleet.MachineIPs(ctx)
	if err != nil {
		return false, "fleet's machine list: " + err.Error()
	}
	shared := false
	for id := range ips {
		shared = shared || machines[id]
	}
	if !shared {
		return false, "its fleet machines are not this cluster's"
	}
	// Machines alone do not tell two clusters of one host apart: fleet's
	// API answers its units from its etcd's jobs.
	for try := 0; ; try++ {
		jobs, err := children("job")
		if err != nil {
			return false, "it does not answer: " + firstLine(err.Error())
		}
		units, err := fleet.Units(ctx)
		if err != nil {
			return false, "fleet's unit list: " + err.Error()
		}
		same := len(units) == len(jobs)
		for _, u := range units {
			same = same && jobs[u.Name]
		}
		switch {
		case same:
			return true, ""
		case try == 2:
			return false, "its fleet units are not this cluster's"
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

package coord

import (
	"context"
	"fmt"
	"strings"
	"time"

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
// units fleet's API lists are its jobs (PREFIX/job). When it is not, why
// says what was found ("it does not answer", "no fleet machine is
// registered in it", ...). err is for what keeps it from telling: fleet's
// API did not answer.
func FleetOwn(ctx context.Context, kapi client.KeysAPI, fleet fleetroll.Fleet) (own bool, why string, err error) {
	children := func(dir string) (map[string]bool, error) {
		resp, err := kapi.Get(ctx, DefaultFleetPrefix+dir, &client.GetOptions{Quorum: true})
		if err != nil {
			if client.IsKeyNotFound(err) {
				return map[string]bool{}, nil
			}
			return nil, err
		}
		out := map[string]bool{}
		if resp.Node != nil {
			for _, n := range resp.Node.Nodes {
				if n != nil {
					out[n.Key[strings.LastIndex(n.Key, "/")+1:]] = true
				}
			}
		}
		return out, nil
	}
	machines, err := children("machines")
	if err != nil {
		return false, "it does not answer: " + firstLine(err.Error()), nil
	}
	if len(machines) == 0 {
		return false, "no fleet machine is registered in it", nil
	}
	ips, err := fleet.MachineIPs(ctx)
	if err != nil {
		return false, "", fmt.Errorf("fleet's machine list: %w", err)
	}
	shared := false
	for id := range ips {
		shared = shared || machines[id]
	}
	if !shared {
		return false, "its fleet machines are not this cluster's", nil
	}
	// Machines alone do not tell two clusters of one host apart: fleet's
	// API answers its units from its etcd's jobs. Units come and go while
	// this looks (fleetroll's own pulls, other rollouts): a few looks, a
	// pause apart, and one that agrees is enough.
	for try := 1; ; try++ {
		jobs, err := children("job")
		if err != nil {
			return false, "it does not answer: " + firstLine(err.Error()), nil
		}
		units, err := fleet.Units(ctx)
		if err != nil {
			return false, "", fmt.Errorf("fleet's unit list: %w", err)
		}
		same := true
		n := 0
		for _, u := range units {
			if u != nil {
				n++
				same = same && jobs[u.Name]
			}
		}
		if same && n == len(jobs) {
			return true, "", nil
		}
		if try == 5 {
			return false, "its fleet units are not this cluster's", nil
		}
		select {
		case <-ctx.Done():
			return false, "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

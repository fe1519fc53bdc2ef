package coord

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
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
	key, ok := statesKey(f.Prefix, unit)
	if !ok {
		return ch // never wakes: a name that is not one key stays out of the path
	}
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

// statesKey is where fleet (its etcd prefix; DefaultFleetPrefix when
// empty) publishes a unit's states, PREFIX/states/UNIT; false for a name
// that is not one key.
func statesKey(prefix, unit string) (string, bool) {
	if unit == "" || strings.Contains(unit, "/") || strings.Contains(unit, "..") {
		return "", false
	}
	if prefix == "" {
		prefix = DefaultFleetPrefix
	}
	return strings.TrimSuffix(prefix, "/") + "/states/" + unit, true
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

// fleet's default agent TTL (agent_ttl): the TTL of the unit states its
// agents publish; an agent republishes every unit's state every 4/5 of it.
const (
	fleetAgentTTL        = 30 * time.Second
	fleetRepublishPeriod = fleetAgentTTL * 4 / 5
)

// FleetRepublish tells when fleet's agent on a unit's machine next
// republishes its units' states (fleetroll.Republish). Every state an agent
// publishes carries its agent TTL, and a republish writes all of its
// machine's states at once: states that share their expiration, the
// earliest of that machine's, were written by the last republish (a change
// since rewrote the others). Once seen, a machine's republish is known to
// come every period after; it is remembered for the next writes of the
// rollout, whose changes may leave no state of the republish. It assumes
// fleet's default agent TTL, and says it cannot tell when the states do not
// fit it. Make one with NewFleetRepublish; it is safe for concurrent use.
type FleetRepublish struct {
	KAPI   client.KeysAPI
	Prefix string // DefaultFleetPrefix when empty

	mu   sync.Mutex
	seen map[string]time.Time // by machine: a republish seen
}

// NewFleetRepublish reads fleet's states in etcd (kapi).
func NewFleetRepublish(kapi client.KeysAPI) *FleetRepublish {
	return &FleetRepublish{KAPI: kapi, seen: map[string]time.Time{}}
}

var _ fleetroll.Republish = (*FleetRepublish)(nil)

// Next implements fleetroll.Republish.
func (f *FleetRepublish) Next(ctx context.Context, unit string) (time.Time, bool) {
	key, ok := statesKey(f.Prefix, unit)
	if !ok {
		return time.Time{}, false
	}
	states := path.Dir(key)
	// Asked before a write: an etcd slow to answer only costs the hold.
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := f.KAPI.Get(ctx, key, nil)
	if err != nil || len(resp.Node.Nodes) != 1 {
		return time.Time{}, false // not published, or on several machines
	}
	machine := path.Base(resp.Node.Nodes[0].Key)
	all, err := f.KAPI.Get(ctx, states, &client.GetOptions{Recursive: true})
	if err != nil {
		return time.Time{}, false
	}
	exps := expirations(all.Node, machine)
	now := time.Now()
	last, ok := LastRepublish(exps, now)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen == nil {
		f.seen = map[string]time.Time{}
	}
	if !ok {
		last, ok = f.seen[machine]
	}
	if !ok {
		// Every state changed since (a rollout just ran): etcd's recent
		// changes hold the republish, a rewrite of a state unchanged.
		last, ok = f.fromHistory(ctx, states, machine, all.Index)
	}
	if !ok {
		return time.Time{}, false
	}
	f.seen[machine] = last
	return NextRepublish(last, now), true
}

// expirations are those of the keys named name in each unit's directory
// under dir (fleet's PREFIX/states/UNIT/MACHINE, PREFIX/job/UNIT/job-state):
// fleet's agents write them with their TTL.
func expirations(dir *client.Node, name string) []time.Time {
	var out []time.Time
	for _, u := range dir.Nodes {
		for _, n := range u.Nodes {
			if path.Base(n.Key) == name && n.Expiration != nil {
				out = append(out, *n.Expiration)
			}
		}
	}
	return out
}

// fromHistory finds the machine's last republish among etcd's recent
// changes of fleet's states (etcd v2 keeps the last 1000 changes), up to
// index: a state written again with the value it had. It reads them one
// by one, as a watch from the past does, and stops at the first wait.
func (f *FleetRepublish) fromHistory(ctx context.Context, states, machine string, index uint64) (time.Time, bool) {
	after := uint64(1) // 0 would be "from now on"
	if index > 1000 {
		after = index - 1000
	}
	w := f.KAPI.Watcher(states, &client.WatcherOptions{AfterIndex: after, Recursive: true})
	var last time.Time
	for range 2000 {
		nctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		resp, err := w.Next(nctx)
		cancel()
		if err != nil || resp.Node == nil {
			break // no more past changes (a wait), or the history is gone
		}
		n := resp.Node
		if resp.PrevNode != nil && resp.PrevNode.Value == n.Value && path.Base(n.Key) == machine && n.Expiration != nil {
			last = n.Expiration.Add(-fleetAgentTTL)
		}
		if n.ModifiedIndex >= index {
			break
		}
	}
	if last.IsZero() {
		return time.Time{}, false
	}
	if now := time.Now(); last.After(now.Add(time.Second)) || now.Sub(last) > 10*fleetRepublishPeriod {
		return time.Time{}, false
	}
	return last, true
}

// LastRepublish dates a machine's last republish from the expirations of
// its states, at now: at least two share the earliest (within 10 ms), one
// agent TTL after it. False when they do not show one that fits fleet's
// default agent TTL.
func LastRepublish(exps []time.Time, now time.Time) (time.Time, bool) {
	if len(exps) < 2 {
		return time.Time{}, false
	}
	exps = slices.Clone(exps)
	slices.SortFunc(exps, func(a, b time.Time) int { return a.Compare(b) })
	if exps[1].Sub(exps[0]) > 10*time.Millisecond {
		return time.Time{}, false // the earliest is a change of one unit
	}
	last := exps[0].Add(-fleetAgentTTL)
	if last.After(now.Add(time.Second)) || now.Sub(last) > fleetRepublishPeriod+2*time.Second {
		return time.Time{}, false // another TTL, or an agent gone
	}
	return last, true
}

// NextRepublish is the republish of an agent that republished at last, one
// period after another, that comes next after now, or that passed within
// the last 2 s (fleetroll.Republish).
func NextRepublish(last, now time.Time) time.Time {
	next := last
	for next.Before(now.Add(-2 * time.Second)) {
		next = next.Add(fleetRepublishPeriod)
	}
	return next
}

// fleetAgentSleep is how long fleet v1.0.0's agent sleeps after a change of
// its jobs before it watches them again (registry/event.go).
const fleetAgentSleep = time.Second

// FleetAgents follows what fleet's agents hear (fleetroll.Hearing). Each
// agent watches PREFIX/job in etcd; on a change there it sleeps a second,
// then reconciles (on a change of a target or target-state: reading every
// unit's target, so a target written in that second is acted on at its
// end), and only then watches again, from the present: any other change
// in that second is never seen by it. Every agent watches the same keys,
// so one change deafens every agent that listened, fleetroll's own writes
// and the agents' heartbeats alike. A change it did not hear is told from
// one it heard by the time alone, so an agent's own act is taken as a
// fresh start: when it stops or launches a unit (its job-state deleted,
// or set anew) it has just watched again, and hears that write of its
// own, which is no target: its second ends with no reconcile. Make one
// with WatchFleetAgents; it is safe for concurrent use.
type FleetAgents struct {
	mu   sync.Mutex
	ear  AgentsEar
	done chan struct{}
}

var _ fleetroll.Hearing = (*FleetAgents)(nil)

// WatchFleetAgents follows fleet's jobs in etcd (kapi, under
// DefaultFleetPrefix) until ctx ends; Done is closed once it has stopped.
// It starts from the agents' last act it can date: a unit launched within
// the last second (a rollout that just ended) deafens them still. The
// date is etcd's clock (the TTL's expiration) read by fleetroll's: a skew
// between them only costs a nudge or a longer hold, once.
func WatchFleetAgents(ctx context.Context, kapi client.KeysAPI) *FleetAgents {
	a := &FleetAgents{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		at, index, ok := lastJobState(ctx, kapi)
		if ok {
			a.Changed(at, AgentActed)
		}
		WatchFrom(ctx, kapi, DefaultFleetPrefix+"job", index, func(resp *client.Response) { a.Changed(time.Now(), KindOfJobChange(resp)) })
	}()
	return a
}

// lastJobState dates the last write of a unit's job-state (an agent's
// launch, or its heartbeat), when it was within the last second: each is
// written with fleet's agent TTL, so its expiration tells when. index is
// etcd's index of the read (0 when it failed), to watch on from.
func lastJobState(ctx context.Context, kapi client.KeysAPI) (at time.Time, index uint64, ok bool) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := kapi.Get(ctx, DefaultFleetPrefix+"job", &client.GetOptions{Recursive: true})
	if err != nil || resp.Node == nil {
		return time.Time{}, 0, false
	}
	var last time.Time
	if exps := expirations(resp.Node, "job-state"); len(exps) > 0 {
		last = slices.MaxFunc(exps, time.Time.Compare)
	}
	at, now := last.Add(-fleetAgentTTL), time.Now()
	if last.IsZero() || at.Before(now.Add(-fleetAgentSleep)) || at.After(now.Add(100*time.Millisecond)) {
		return time.Time{}, resp.Index, false
	}
	return at, resp.Index, true
}

// Done is closed when the watch has stopped.
func (a *FleetAgents) Done() <-chan struct{} { return a.done }

// JobChange is what a change of fleet's jobs tells of its agents.
type JobChange int

const (
	// JobWrite: a write that agents hear when they listen, and that ends
	// their second with no reconcile (a heartbeat, a unit's object).
	JobWrite JobChange = iota
	// TargetWrite: a unit's target or target-state written: the agents
	// that hear it reconcile at the end of their second.
	TargetWrite
	// AgentActed: an agent stopped or launched a unit, just after it
	// watched again: it hears this write of its own.
	AgentActed
	// WatchBroken: the watch broke and changes may have been missed; the
	// agents are then taken to listen (a write they miss is nudged again).
	WatchBroken
)

// KindOfJobChange tells what a change under fleet's jobs is (nil: the
// watch broke). An agent that acts on a unit deletes its job-state, or
// sets it where there was none; its heartbeat sets it again unchanged.
func KindOfJobChange(resp *client.Response) JobChange {
	if resp == nil || resp.Node == nil {
		return WatchBroken
	}
	switch path.Base(resp.Node.Key) {
	case "target", "target-state":
		if resp.Action == "delete" || resp.Action == "expire" {
			return JobWrite
		}
		return TargetWrite
	case "job-state":
	default:
		return JobWrite
	}
	switch resp.Action {
	case "delete":
		return AgentActed
	case "set", "create", "update", "compareAndSwap":
		if resp.PrevNode == nil || resp.PrevNode.Value != resp.Node.Value {
			return AgentActed
		}
	}
	return JobWrite
}

// AgentsEar is what fleet's agents do with a write: deaf until Until;
// when Reconcile, one made before then is still acted on then.
type AgentsEar struct {
	Until     time.Time
	Reconcile bool
}

// Changed takes a change of fleet's jobs seen at at.
func (a *FleetAgents) Changed(at time.Time, c JobChange) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ear = AgentsAfter(a.ear, at, c)
}

// Deaf implements fleetroll.Hearing.
func (a *FleetAgents) Deaf(string) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ear.Until, a.ear.Reconcile
}

// AgentsAfter is what fleet's agents do with a write after a change c of
// their jobs at at, when they did ear before: a change they heard
// deafens them for their sleep (which ends with a reconcile after a
// target written), and an agent hears its own act; another change in
// their sleep is not heard, and changes nothing. After a broken watch
// they are taken to listen.
func AgentsAfter(ear AgentsEar, at time.Time, c JobChange) AgentsEar {
	switch {
	case c == WatchBroken:
		return AgentsEar{}
	case c != AgentActed && at.Before(ear.Until):
		return ear
	}
	return AgentsEar{Until: at.Add(fleetAgentSleep), Reconcile: c == TargetWrite}
}

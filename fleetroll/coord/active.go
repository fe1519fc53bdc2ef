package coord

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// ActiveRollout is a rollout that has not ended: queued in serve's queue,
// running (a receiver's, or a CLI's that holds the service's lock), or
// paused after its canaries.
type ActiveRollout struct {
	ID      string           `json:"id,omitempty"` // unknown for a CLI's between two units
	Service string           `json:"service"`
	Status  fleetroll.Status `json:"status"` // queued, running or paused
	// Runner is who runs it: the receiver, or the lock's holder.
	Runner  string    `json:"runner,omitempty"`
	Trigger string    `json:"trigger,omitempty"`
	Started time.Time `json:"started,omitzero"`
	// Done and Units count its units restarted so far, and all.
	Done  int `json:"done"`
	Units int `json:"units"`
	// Paused: since when, the canaries, and the decision taken, if any.
	PausedSince time.Time           `json:"paused_since,omitzero"`
	Canaries    []string            `json:"canaries,omitempty"`
	Decision    *fleetroll.Decision `json:"decision,omitempty"`
}

// Active lists the rollouts in progress of one service (all for ""), from
// serve's queue, the canary pauses and the services' locks: a lock that no
// queued rollout explains is a CLI's (restart, deploy, rollback), named by
// its holder and, while it has a unit in flight or a pause, its rollout.
// Running ones come first, then paused, then queued; by service and start.
func Active(ctx context.Context, kapi client.KeysAPI, service string) ([]ActiveRollout, error) {
	if service != "" {
		if err := fleetroll.ValidateServiceName(service); err != nil {
			return nil, fmt.Errorf("active rollouts: %w", err)
		}
	}
	wanted := func(s string) bool { return service == "" || s == service }
	queued, err := Triggers{KAPI: kapi}.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("active rollouts: %w", err)
	}
	pauses, err := listPauses(ctx, kapi)
	if err != nil {
		return nil, err
	}
	locks, err := listDirValues(ctx, kapi, LockPrefix)
	if err != nil {
		return nil, fmt.Errorf("active rollouts: locks: %w", err)
	}
	var out []ActiveRollout
	seen := map[string]bool{} // rollout IDs listed
	running := map[string]bool{}
	for svc, es := range queued {
		if !wanted(svc) {
			continue
		}
		for _, e := range es {
			r := e.Record
			a := ActiveRollout{ID: r.ID, Service: svc, Status: fleetroll.StatusQueued, Trigger: r.Trigger.String(), Started: r.Started}
			a.Done, a.Units = r.Done()
			if e.Runner != "" {
				a.Status, a.Runner = fleetroll.StatusRunning, e.Runner
				running[svc] = true
			}
			if ps, ok := pauses[r.ID]; ok {
				a.Status, a.PausedSince, a.Canaries, a.Decision = fleetroll.StatusPaused, ps.Since, ps.Canaries, ps.Decision
			}
			seen[r.ID] = true
			out = append(out, a)
		}
	}
	for svc, holder := range locks {
		if !wanted(svc) || running[svc] {
			continue
		}
		a := ActiveRollout{Service: svc, Status: fleetroll.StatusRunning, Runner: holder}
		in, err := Intents{KAPI: kapi}.Get(ctx, svc)
		if err != nil {
			return nil, fmt.Errorf("active rollouts: %w", err)
		}
		if in != nil {
			a.ID, a.Trigger, a.Started = in.Rollout, in.Trigger.String(), in.Started
		}
		for _, ps := range pauses {
			if ps.Service == svc && (a.ID == "" || a.ID == ps.Rollout) {
				a.ID, a.Status, a.PausedSince, a.Canaries, a.Decision = ps.Rollout, fleetroll.StatusPaused, ps.Since, ps.Canaries, ps.Decision
			}
		}
		if a.ID != "" {
			seen[a.ID] = true
		}
		out = append(out, a)
	}
	// A pause whose rollout holds no lock and is in no queue (a CLI's
	// with the lock off): still waiting for a decision.
	for _, ps := range pauses {
		if wanted(ps.Service) && !seen[ps.Rollout] {
			out = append(out, ActiveRollout{ID: ps.Rollout, Service: ps.Service, Status: fleetroll.StatusPaused,
				PausedSince: ps.Since, Canaries: ps.Canaries, Decision: ps.Decision})
		}
	}
	rank := map[fleetroll.Status]int{fleetroll.StatusRunning: 0, fleetroll.StatusPaused: 1, fleetroll.StatusQueued: 2}
	slices.SortStableFunc(out, func(a, b ActiveRollout) int {
		return cmp.Or(cmp.Compare(rank[a.Status], rank[b.Status]), cmp.Compare(a.Service, b.Service), a.Started.Compare(b.Started), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// listPauses reads every open pause, by rollout.
func listPauses(ctx context.Context, kapi client.KeysAPI) (map[string]Pause, error) {
	vals, err := listDirValues(ctx, kapi, PausePrefix)
	if err != nil {
		return nil, fmt.Errorf("active rollouts: pauses: %w", err)
	}
	out := map[string]Pause{}
	for _, v := range vals {
		var ps Pause
		if json.Unmarshal([]byte(v), &ps) == nil && ps.Rollout != "" {
			out[ps.Rollout] = ps
		}
	}
	return out, nil
}

// listDirValues reads the keys right under dir: name to value (none when
// dir does not exist).
func listDirValues(ctx context.Context, kapi client.KeysAPI, dir string) (map[string]string, error) {
	resp, err := kapi.Get(ctx, dir, nil)
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, n := range resp.Node.Nodes {
		if !n.Dir {
			out[path.Base(n.Key)] = n.Value
		}
	}
	return out, nil
}

package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/coreos/fleet/schema"
)

// Restore brings back units that a fleetroll which died left in flight
// (its intent record): a unit whose target is not launched has its stop
// observed first (fleet's states lag systemd's), then it is started and
// waited for, then the AfterRunning hook (health gate, announcement) and
// Done (drain key cleared) run, as after a restart. Each unit's record says
// what happened; the error names the units that could not be restored.
func (r *Roller) Restore(ctx context.Context, units []string) ([]UnitReport, error) {
	var out []UnitReport
	var errs []error
	for _, name := range units {
		ur := UnitReport{Unit: name, Outcome: OutcomeInProgress}
		err := r.restore(ctx, &ur)
		if err != nil {
			errs = append(errs, err)
		} else {
			ur.Outcome = OutcomeRestarted
		}
		out = append(out, ur)
	}
	return out, errors.Join(errs...)
}

func (r *Roller) restore(ctx context.Context, ur *UnitReport) error {
	clock := r.opt.Clock
	t0 := clock.Now()
	name := ur.Unit
	if done := r.opt.Hooks.Done; done != nil {
		defer done(context.WithoutCancel(ctx), name)
	}
	desired, _, err := r.fleet.TargetState(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return r.failed(ur, PhaseStart, nil, false, fmt.Errorf("fleet no longer knows it: %w", err), t0)
	}
	if err != nil {
		return r.failed(ur, PhaseStart, nil, false, fmt.Errorf("restore %s: %w", name, err), t0)
	}
	var last *schema.UnitState
	if desired != "launched" {
		// It was being stopped: see the stop through before the start.
		r.begin(ur, PhaseStop)
		err := r.waitState(ctx, name, t0.Add(r.opt.StopTimeout), r.opt.StopTimeout, StoppedStatus, &last, nil)
		r.end(ur)
		if err != nil && ctx.Err() != nil {
			return r.failed(ur, PhaseStop, last, true, err, t0)
		}
	}
	r.holdForFleet(ctx, ur, PhaseStart)
	last, err = r.start(ctx, ur, stopResult{}, last)
	if err != nil {
		return r.failed(ur, PhaseStart, last, true, err, t0)
	}
	ur.Machine = shortID(last.MachineID)
	if h := r.opt.Hooks.AfterRunning; h != nil {
		if err := r.gate(ctx, ur, h, last); err != nil {
			return r.failed(ur, PhaseHealth, last, false, err, t0)
		}
	}
	ur.Total = Seconds(clock.Now().Sub(t0))
	ur.Phase = ""
	r.emit(ur, Event{Kind: EventHealthy, Elapsed: time.Duration(ur.Total), State: DescribeState(last)})
	return nil
}

// Package naive is the baseline that benchmarks measure fleetroll against:
// the loop operators write around the fleet API, one unit at a time: stop,
// poll until fleet reports it stopped, start, poll until it runs. No drain,
// no health gate, no retries, no grace.
package naive

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/coreos/fleet/schema"
	"github.com/fleetroll/fleetroll/fleetroll"
)

// Roll restarts units in order, polling every poll.
func Roll(ctx context.Context, f fleetroll.Fleet, units []string, poll time.Duration) error {
	wait := func(name string, judge func(*schema.UnitState) (string, bool, error)) error {
		tick := time.NewTicker(poll)
		defer tick.Stop()
		for {
			st, err := f.UnitState(ctx, name)
			if err != nil && !errors.Is(err, fleetroll.ErrNotFound) {
				return err
			}
			if _, done, jerr := judge(st); done || jerr != nil {
				return jerr
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
		}
	}
	for _, u := range units {
		if err := f.SetUnitTargetState(ctx, u, "loaded"); err != nil {
			return fmt.Errorf("stop %s: %w", u, err)
		}
		if err := wait(u, fleetroll.StoppedStatus); err != nil {
			return fmt.Errorf("stop %s: %w", u, err)
		}
		if err := f.SetUnitTargetState(ctx, u, "launched"); err != nil {
			return fmt.Errorf("start %s: %w", u, err)
		}
		if err := wait(u, fleetroll.RunningStatus); err != nil {
			return fmt.Errorf("start %s: %w", u, err)
		}
	}
	return nil
}

// Package fleetcount wraps a fleetroll.Fleet to count the API calls made
// through it, for the benchmarks.
package fleetcount

import (
	"context"
	"sync/atomic"

	"github.com/coreos/fleet/schema"
	"github.com/fleetroll/fleetroll/fleetroll"
)

// Fleet counts fleet API reads and writes.
type Fleet struct {
	fleetroll.Fleet
	reads, writes atomic.Int64
}

// Reset returns the counts so far and starts again from zero.
func (c *Fleet) Reset() (reads, writes int) {
	return int(c.reads.Swap(0)), int(c.writes.Swap(0))
}

func (c *Fleet) Units(ctx context.Context) ([]*schema.Unit, error) {
	c.reads.Add(1)
	return c.Fleet.Units(ctx)
}

func (c *Fleet) UnitState(ctx context.Context, name string) (*schema.UnitState, error) {
	c.reads.Add(1)
	return c.Fleet.UnitState(ctx, name)
}

func (c *Fleet) UnitStates(ctx context.Context) ([]*schema.UnitState, error) {
	c.reads.Add(1)
	return c.Fleet.UnitStates(ctx)
}

func (c *Fleet) TargetState(ctx context.Context, name string) (string, string, error) {
	c.reads.Add(1)
	return c.Fleet.TargetState(ctx, name)
}

func (c *Fleet) MachineIPs(ctx context.Context) (map[string]string, error) {
	c.reads.Add(1)
	return c.Fleet.MachineIPs(ctx)
}

func (c *Fleet) SetUnitTargetState(ctx context.Context, name, target string) error {
	c.writes.Add(1)
	return c.Fleet.SetUnitTargetState(ctx, name, target)
}

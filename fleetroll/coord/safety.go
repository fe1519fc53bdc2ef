package coord

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/coreos/fleet/schema"
	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// Safety carries out a roll policy: the cluster lock and drain through etcd,
// and the health gate through fleet's machine list.
type Safety struct {
	// KAPI is etcd; needed for the lock and drain.
	KAPI   client.KeysAPI
	Policy fleetroll.Policy
	Owner  string // who holds the lock, for the others to see
	Fleet  fleetroll.Fleet
	// OnLockWait, when set, is told who holds the lock each time the roll
	// starts waiting for it (lock mode wait).
	OnLockWait func(holder string)
}

// Validate checks the policy and that etcd is there when it is needed.
func (s Safety) Validate() error {
	if err := s.Policy.Validate(); err != nil {
		return err
	}
	if s.Policy.NeedsEtcd() && s.KAPI == nil {
		return errors.New("drain, the lock and releases (image) need etcd")
	}
	if s.Policy.Health != nil && s.Fleet == nil {
		return errors.New("the health gate needs fleet's machine list")
	}
	return nil
}

// Owner describes this process for the lock: host, PID and what it does.
func Owner(what string) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s on %s (pid %d) since %s", what, host, os.Getpid(), time.Now().UTC().Format(time.RFC3339))
}

// Prepare checks etcd, takes the lock, and returns the roll's hooks and a
// release function to call when the roll is over. When etcd is needed and
// cannot be reached, it fails before anything is touched.
func (s Safety) Prepare(ctx context.Context, service string) (fleetroll.Hooks, func(), error) {
	var hooks fleetroll.Hooks
	release := func() {}
	p := s.Policy.WithDefaults(service)
	if err := s.Validate(); err != nil {
		return hooks, release, err
	}
	if p.NeedsEtcd() {
		if err := Ping(ctx, s.KAPI); err != nil {
			return hooks, release, fmt.Errorf("etcd unreachable, nothing was touched: %w", err)
		}
	}
	if p.Lock == fleetroll.LockFail || p.Lock == fleetroll.LockWait {
		held, err := Lock{KAPI: s.KAPI, Key: LockKey(service), Owner: s.Owner, TTL: p.LockTTL, OnWait: s.OnLockWait}.Acquire(ctx, p.Lock == fleetroll.LockWait)
		if err != nil {
			return hooks, release, err
		}
		release = func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = held.Release(rctx)
		}
		hooks.Continue = held.Err
	}
	var gate func(context.Context, string, *schema.UnitState) error
	if p.Health != nil {
		g := p.Health.Gate()
		gate = func(ctx context.Context, unit string, st *schema.UnitState) error {
			return s.gate(ctx, g, unit, st)
		}
	}
	if p.Drain != nil {
		d := Drain{KAPI: s.KAPI, Prefix: p.Drain.Prefix, DrainPrefix: "/fleetroll/drain/" + service,
			Delay: p.Drain.Delay, BackTimeout: p.Drain.Timeout}
		hooks.BeforeStop = d.Out
		hooks.Done = func(ctx context.Context, unit string) {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_ = d.Clear(cctx, unit)
		}
		hooks.AfterRunning = func(ctx context.Context, unit string, st *schema.UnitState) error {
			if gate != nil {
				if err := gate(ctx, unit, st); err != nil {
					return err
				}
			}
			return d.In(ctx, unit)
		}
	} else {
		hooks.AfterRunning = gate
	}
	return hooks, release, nil
}

// gate runs the health gate against the unit's machine and port.
func (s Safety) gate(ctx context.Context, g *fleetroll.HealthGate, unit string, st *schema.UnitState) error {
	if st == nil {
		return fmt.Errorf("health gate of %s: cannot tell its machine", unit)
	}
	ips, err := s.Fleet.MachineIPs(ctx)
	if err != nil {
		return fmt.Errorf("health gate of %s: list machines: %w", unit, err)
	}
	ip := ips[st.MachineID]
	if ip == "" {
		return fmt.Errorf("health gate of %s: machine %s has no public IP", unit, st.MachineID)
	}
	_, port, _ := strings.Cut(strings.TrimSuffix(unit, ".service"), "@")
	return g.Wait(ctx, g.URL(ip, port))
}

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

// Lock modes.
const (
	LockOff  = "off"
	LockFail = "fail" // refuse when another fleetroll holds the service's lock
	LockWait = "wait" // wait until it is free
)

// Safety is what a roll does besides stopping and starting: the cluster
// lock, drain through etcd, and the health gate.
type Safety struct {
	// KAPI is etcd; needed for the lock and drain.
	KAPI    client.KeysAPI
	Lock    string // off, fail or wait
	LockTTL time.Duration
	Owner   string // who holds the lock, for the others to see

	Drain        bool
	DrainPrefix  string // "/services/{service}"
	DrainDelay   time.Duration
	DrainTimeout time.Duration // for the announcement to come back

	// Gate, when set, must pass after each start.
	Gate  *fleetroll.HealthGate
	Fleet fleetroll.Fleet
}

// Validate checks the settings.
func (s Safety) Validate() error {
	switch s.Lock {
	case "", LockOff, LockFail, LockWait:
	default:
		return fmt.Errorf("lock mode %q: want off, fail or wait", s.Lock)
	}
	if (s.Drain || s.lockOn()) && s.KAPI == nil {
		return errors.New("drain and the lock need etcd")
	}
	if s.Drain && !strings.HasPrefix(s.DrainPrefix, "/") {
		return fmt.Errorf("drain prefix %q must start with /", s.DrainPrefix)
	}
	if s.Gate != nil && s.Gate.Path == "" {
		return errors.New("health gate without a path")
	}
	return nil
}

func (s Safety) lockOn() bool { return s.Lock == LockFail || s.Lock == LockWait }

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
	if s.KAPI != nil && (s.Drain || s.lockOn()) {
		if err := Ping(ctx, s.KAPI); err != nil {
			return hooks, release, fmt.Errorf("etcd unreachable, nothing was touched: %w", err)
		}
	}
	if s.lockOn() {
		held, err := Lock{KAPI: s.KAPI, Key: LockKey(service), Owner: s.Owner, TTL: s.LockTTL}.Acquire(ctx, s.Lock == LockWait)
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
	if s.Drain {
		d := Drain{KAPI: s.KAPI, Prefix: strings.ReplaceAll(s.DrainPrefix, "{service}", service),
			DrainPrefix: "/fleetroll/drain/" + service, Delay: s.DrainDelay, BackTimeout: s.DrainTimeout}
		hooks.BeforeStop = d.Out
		hooks.Done = func(ctx context.Context, unit string) {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_ = d.Clear(cctx, unit)
		}
		hooks.AfterRunning = func(ctx context.Context, unit string, st *schema.UnitState) error {
			if err := s.gate(ctx, unit, st); err != nil {
				return err
			}
			return d.In(ctx, unit)
		}
	} else if s.Gate != nil {
		hooks.AfterRunning = s.gate
	}
	return hooks, release, nil
}

// gate runs the health gate against the unit's machine and port.
func (s Safety) gate(ctx context.Context, unit string, st *schema.UnitState) error {
	if s.Gate == nil {
		return nil
	}
	ml, ok := s.Fleet.(fleetroll.MachineLister)
	if !ok || st == nil {
		return fmt.Errorf("health gate of %s: cannot tell its machine", unit)
	}
	ips, err := ml.MachineIPs(ctx)
	if err != nil {
		return fmt.Errorf("health gate of %s: list machines: %w", unit, err)
	}
	ip := ips[st.MachineID]
	if ip == "" {
		return fmt.Errorf("health gate of %s: machine %s has no public IP", unit, st.MachineID)
	}
	_, port, _ := strings.Cut(strings.TrimSuffix(unit, ".service"), "@")
	return s.Gate.Wait(ctx, s.Gate.URL(ip, port))
}

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
	// Rollout is the rollout the hooks serve: its intent record is written
	// under this ID (a fresh one when empty), with its trigger.
	Rollout string
	Trigger fleetroll.Trigger
	// Roll tunes the recovery of another rollout's units (timeouts, poll,
	// logger, clock); the hooks and rollout ID are Safety's.
	Roll fleetroll.Options
	// OnRecover, when set, is told what the recovery of a dead holder's
	// rollout did, one message at a time.
	OnRecover func(msg string)
	// OnRestored, when set, is given a dead holder's intent and what the
	// restore of each of its units did. When the intent is of Rollout
	// itself (a receiver resuming the rollout of one that stopped), the
	// rollout is not recorded as interrupted: the resumed one records it.
	OnRestored func(in Intent, restored []fleetroll.UnitReport)
	// Instances are the rollout's target instances (empty: every launched
	// one); blue-green resolves the live and spare sets against them.
	Instances []string
}

// Validate checks the policy and that etcd is there when it is needed.
func (s Safety) Validate() error {
	if err := s.Policy.Validate(); err != nil {
		return err
	}
	if s.Policy.NeedsEtcd() && s.KAPI == nil {
		return errors.New("drain, the lock, releases (image) and --watch need etcd")
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
	if p.Watch && s.KAPI != nil {
		// Waits wake on fleet's own state writes; polling stays the
		// fallback when etcd is out of reach.
		hooks.Wake = FleetStates{KAPI: s.KAPI}
	}
	if p.Lock == fleetroll.LockFail || p.Lock == fleetroll.LockWait {
		held, err := Lock{KAPI: s.KAPI, Key: LockKey(service), Owner: s.Owner, TTL: p.LockTTL, OnWait: s.OnLockWait}.Acquire(ctx, p.Lock == fleetroll.LockWait)
		if err != nil {
			return hooks, release, err
		}
		if s.Rollout == "" {
			s.Rollout = fleetroll.NewID()
		}
		intents := Intents{KAPI: s.KAPI}
		rec := &recorder{store: intents, service: service, clock: clockOr(s.Roll.Clock),
			intent: Intent{Rollout: s.Rollout, Trigger: s.Trigger, Owner: s.Owner, Started: clockOr(s.Roll.Clock).Now()}}
		release = func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			// This fleetroll saw its roll to the end (and brought back what
			// it could): nothing of its own is left for another to restore.
			// Another's intent that could not be restored stays.
			if in, err := intents.Get(rctx, service); err == nil && in != nil && in.Rollout == s.Rollout && held.Valid() == nil {
				_ = intents.Delete(rctx, service)
			}
			_ = held.Release(rctx)
		}
		hooks.Continue = held.Valid
		hooks.Fence = held.Valid
		hooks.Intent = rec.phase
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
	if p.Strategy == fleetroll.StrategyBlueGreen {
		lives := Lives{KAPI: s.KAPI}
		live, next, err := lives.Resolve(ctx, service, s.Instances, p.SparePorts)
		if err != nil {
			release()
			return fleetroll.Hooks{}, func() {}, fmt.Errorf("%w; nothing was touched", err)
		}
		hooks.BlueGreen = &fleetroll.BlueGreen{Live: live, Spare: next, Sidekick: p.Sidekick, PlacementTimeout: p.PlacementTimeout,
			Swapped: func(ctx context.Context, live, spare []string) error {
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				return lives.Put(wctx, service, LiveSets{Live: live, Spare: spare, Rollout: s.Rollout, At: clockOr(s.Roll.Clock).Now()})
			}}
	}
	if p.Canary > 0 {
		hooks.Canary = &fleetroll.Canary{N: p.Canary, Decide: func(ctx context.Context, rollout string, canaries []string, ready func()) (fleetroll.Decision, error) {
			return s.decide(ctx, service, p, gate, rollout, canaries, ready)
		}}
	}
	if hooks.Intent != nil {
		if err := s.recoverDead(ctx, service, hooks); err != nil {
			release()
			return fleetroll.Hooks{}, func() {}, err
		}
	}
	return hooks, release, nil
}

// clockOr is c, or the real clock.
func clockOr(c fleetroll.Clock) fleetroll.Clock {
	if c == nil {
		return fleetroll.SystemClock{}
	}
	return c
}

// ErrRecoveryFailed is returned when units a dead holder left in flight
// could not all be restored: nothing else is touched.
var ErrRecoveryFailed = errors.New("recovery failed")

// recoverDead restores the units of an intent left by a holder that is gone
// (this fleetroll holds the lock now), records that rollout in the history
// as interrupted, and deletes the intent.
func (s Safety) recoverDead(ctx context.Context, service string, hooks fleetroll.Hooks) error {
	intents := Intents{KAPI: s.KAPI}
	in, err := intents.Get(ctx, service)
	if err != nil {
		return fmt.Errorf("read the intent of %s: %w; nothing was touched", service, err)
	}
	if in == nil {
		return nil
	}
	resumed := in.Rollout == s.Rollout
	say := func(format string, a ...any) {
		if s.OnRecover != nil {
			s.OnRecover(fmt.Sprintf(format, a...))
		}
	}
	var names []string
	for _, u := range in.Units {
		names = append(names, u.Unit)
	}
	say("recovering rollout %s of %s, left by %s: restoring %s", in.Rollout, service, in.Owner, strings.Join(names, ", "))
	opt := s.Roll
	opt.RolloutID, opt.OnEvent = s.Rollout, nil
	opt.Hooks = fleetroll.Hooks{AfterRunning: hooks.AfterRunning, Done: hooks.Done, Fence: hooks.Fence, Wake: hooks.Wake}
	roller, err := fleetroll.NewRoller(s.Fleet, opt)
	if err != nil {
		return err
	}
	restored, rerr := roller.Restore(ctx, names)
	if s.OnRestored != nil {
		s.OnRestored(*in, restored)
	}
	clock := clockOr(s.Roll.Clock)
	rep := fleetroll.Report{Version: fleetroll.SchemaVersion, ID: in.Rollout, Service: service, Status: fleetroll.StatusInterrupted,
		Trigger: in.Trigger, By: in.Owner, Started: in.Started, Finished: clock.Now(), Units: []fleetroll.UnitReport{}}
	var where []string
	for i, u := range in.Units {
		ur := fleetroll.UnitReport{Unit: u.Unit, Outcome: fleetroll.OutcomeInterrupted, Phase: u.Phase}
		ur.Error = fmt.Sprintf("the fleetroll running it (%s) stopped in phase %s; restored by %s", in.Owner, u.Phase, s.Owner)
		if i < len(restored) && restored[i].Outcome != fleetroll.OutcomeRestarted {
			ur.Error = fmt.Sprintf("the fleetroll running it (%s) stopped in phase %s; %s could not restore it: %s", in.Owner, u.Phase, s.Owner, restored[i].Error)
			ur.LeftStopped = restored[i].LeftStopped
		}
		rep.Units = append(rep.Units, ur)
		where = append(where, fmt.Sprintf("%s in phase %s", u.Unit, u.Phase))
	}
	rep.Error = fmt.Sprintf("interrupted: the fleetroll running it stopped with %s in flight", strings.Join(where, ", "))
	if fleetroll.ValidRolloutID(in.Rollout) && !resumed {
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if err := (History{KAPI: s.KAPI}).Save(hctx, rep); err != nil {
			say("the interrupted rollout %s was not recorded: %v", in.Rollout, err)
		}
		cancel()
	}
	if rerr != nil {
		say("recovery of %s failed: %v", service, rerr)
		return fmt.Errorf("%s: %w: %w; nothing else was touched (fleetroll recover %s tries again)", service, ErrRecoveryFailed, rerr, service)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := intents.Delete(dctx, service); err != nil {
		return fmt.Errorf("%s: restored, but the intent could not be cleared: %w", service, err)
	}
	if resumed {
		say("recovered rollout %s of %s: %s running again; resuming it", in.Rollout, service, strings.Join(names, ", "))
	} else {
		say("recovered rollout %s of %s: %s running again; recorded as interrupted", in.Rollout, service, strings.Join(names, ", "))
	}
	return nil
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

// decide holds a rollout paused after its canaries: the pause is recorded
// in etcd, where fleetroll promote, fleetroll abort and serve's API decide
// it. With a canary wait, once the wait is over the canaries are checked
// (running, and through the health gate): all well promotes, anything else
// aborts, unless a decision came first.
func (s Safety) decide(ctx context.Context, service string, p fleetroll.Policy, gate func(context.Context, string, *schema.UnitState) error,
	rollout string, canaries []string, ready func()) (fleetroll.Decision, error) {
	pauses := Pauses{KAPI: s.KAPI}
	clock := clockOr(s.Roll.Clock)
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := pauses.Open(octx, Pause{Rollout: rollout, Service: service, Canaries: canaries, Since: clock.Now()})
	cancel()
	if err != nil {
		return fleetroll.Decision{}, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = pauses.Close(cctx, rollout)
	}()
	ready()
	type result struct {
		d   fleetroll.Decision
		err error
	}
	wctx, stop := context.WithCancel(ctx)
	got := make(chan result, 1)
	go func() {
		d, err := pauses.Await(wctx, rollout, pauseResync)
		got <- result{d, err}
	}()
	defer func() { stop(); <-got }()
	var waited <-chan time.Time
	if p.CanaryWait > 0 {
		waited = clock.After(p.CanaryWait)
	}
	select {
	case r := <-got:
		got <- r // for the deferred drain
		return r.d, r.err
	case <-ctx.Done():
		return fleetroll.Decision{}, ctx.Err()
	case <-waited:
	}
	d := fleetroll.Decision{Kind: fleetroll.DecisionPromote, By: "canary wait",
		Reason: fmt.Sprintf("every canary running and healthy after %s", p.CanaryWait)}
	if why := s.checkCanaries(ctx, canaries, gate); why != "" {
		d = fleetroll.Decision{Kind: fleetroll.DecisionAbort, By: "canary wait", Reason: why}
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if ps, err := pauses.Decide(dctx, rollout, d); errors.Is(err, ErrDecided) && ps != nil {
		return *ps.Decision, nil // someone decided as the wait ended
	}
	return d, nil
}

// pauseResync bounds how late a decision is seen when the watch on the
// pause broke.
const pauseResync = 5 * time.Second

// checkCanaries says what is wrong with the canaries ("" when nothing):
// one that fleet does not report running, or that fails the health gate.
func (s Safety) checkCanaries(ctx context.Context, canaries []string, gate func(context.Context, string, *schema.UnitState) error) string {
	for _, unit := range canaries {
		st, err := s.Fleet.UnitState(ctx, unit)
		if err != nil && !errors.Is(err, fleetroll.ErrNotFound) {
			return fmt.Sprintf("state of %s: %v", unit, err)
		}
		if msg, running, _ := fleetroll.RunningStatus(st); !running {
			return fmt.Sprintf("%s is not running (%s)", unit, msg)
		}
		if gate != nil {
			if err := gate(ctx, unit, st); err != nil {
				return fmt.Sprintf("%s is not healthy: %v", unit, err)
			}
		}
	}
	return ""
}

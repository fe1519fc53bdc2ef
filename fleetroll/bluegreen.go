package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/coreos/fleet/schema"
)

// DefaultPlacementTimeout bounds how long blue-green waits for fleet to
// schedule a new instance on a machine.
const DefaultPlacementTimeout = time.Minute

// BlueGreen makes a roll start the new instances beside the old ones
// instead of restarting them: new template instances on the spare
// instances (ports), with their sidekicks, each running, healthy and
// announced before any old one is drained; then the old ones are drained,
// stopped and destroyed. If any new one cannot be placed or fails, the new
// ones are destroyed and the old ones never stopped serving.
type BlueGreen struct {
	// Live are the instances that serve now, as recorded (empty: the
	// target's); the plan is made of them.
	Live []string
	// Spare are the instances the new units take (as many as the plan's).
	Spare []string
	// Sidekick, when set, is the template of each instance's sidekick
	// (my-service-sidekick: my-service-sidekick@PORT.service), launched
	// and destroyed with it.
	Sidekick string
	// PlacementTimeout bounds the wait until fleet reports a new unit on a
	// machine: fleet gives no "cannot be placed" answer (Conflicts=, no
	// capacity). DefaultPlacementTimeout when zero.
	PlacementTimeout time.Duration
	// Swapped, when set, is told once the new units serve and before the
	// old ones are drained: it records which instances are live (etcd).
	Swapped func(ctx context.Context, live, spare []string) error
	// Record, when set, records where the rollout stands (the intent
	// record): the old instances it replaces and the new ones, before the
	// new units are created (BlueGreenLaunching: an error touches
	// nothing), once the switch is made (BlueGreenSwitched), and once no
	// unit of the other set is left behind (BlueGreenDone).
	Record func(ctx context.Context, old, new []string, stage BlueGreenStage) error
}

// BlueGreenStage is where a blue-green rollout stands.
type BlueGreenStage string

const (
	BlueGreenLaunching BlueGreenStage = "launching"
	BlueGreenSwitched  BlueGreenStage = "switched"
	BlueGreenDone      BlueGreenStage = "done"
)

const (
	// StrategyBlueGreen names blue-green in the record.
	StrategyBlueGreen = "blue-green"
)

// ErrNotPlaced is why a new unit failed: fleet did not schedule it on a
// machine in time.
var ErrNotPlaced = errors.New("not placed on any machine")

// blueGreen runs the plan's units as the old (blue) instances and
// b.Spare as the new (green) ones.
func (r *Roller) blueGreen(ctx context.Context, plan *Plan, b *BlueGreen) (*Report, error) {
	clock := r.opt.Clock
	rep := &Report{Version: SchemaVersion, ID: r.opt.RolloutID, Service: plan.Service, Status: StatusRunning,
		Started: clock.Now(), Strategy: StrategyBlueGreen, Units: []UnitReport{}}
	fail := func(err error) (*Report, error) {
		rep.Finished, rep.Status, rep.Error = clock.Now(), StatusFailed, err.Error()
		var ue *UnitError
		if errors.As(err, &ue) {
			rep.Phase = ue.Phase
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			rep.Status = StatusInterrupted
		}
		for i := range rep.Units {
			if rep.Units[i].Outcome == OutcomePending {
				rep.Units[i].Outcome = OutcomeUntouched
			}
		}
		return rep, err
	}
	var old, spare []string
	for _, u := range plan.Units {
		old = append(old, u.Name)
	}
	for _, in := range b.Spare {
		spare = append(spare, UnitName(plan.Service, in))
	}
	if len(spare) != len(old) {
		return fail(fmt.Errorf("blue-green of %s: %d spare instances for %d live ones; give as many", plan.Service, len(spare), len(old)))
	}
	for _, n := range append(append([]string(nil), old...), spare...) {
		rep.Units = append(rep.Units, UnitReport{Unit: n, Outcome: OutcomePending})
	}
	olds, news := rep.Units[:len(old)], rep.Units[len(old):]
	// Every new unit waits at once: one listing of fleet's states per poll.
	r.states = &stateReader{fleet: r.fleet}

	// The new units take the options of the old ones (and their
	// sidekicks'): a spare that fleet already knows is not ours to replace.
	units, err := r.fleet.Units(ctx)
	if err != nil {
		return fail(fmt.Errorf("blue-green of %s: list units: %w; nothing was touched", plan.Service, err))
	}
	byName := map[string]*schema.Unit{}
	for _, u := range units {
		if u != nil {
			byName[u.Name] = u
		}
	}
	tmpl := byName[old[0]]
	if tmpl == nil {
		return fail(fmt.Errorf("blue-green of %s: %s: %w", plan.Service, old[0], ErrNotFound))
	}
	var sideTmpl *schema.Unit
	if b.Sidekick != "" {
		_, in, _ := splitInstance(old[0])
		if sideTmpl = byName[UnitName(b.Sidekick, in)]; sideTmpl == nil {
			return fail(fmt.Errorf("blue-green of %s: sidekick %s: %w; nothing was touched", plan.Service, UnitName(b.Sidekick, in), ErrNotFound))
		}
	}
	for i, n := range spare {
		if byName[n] != nil {
			return fail(fmt.Errorf("blue-green of %s: spare %s already exists in fleet; nothing was touched", plan.Service, n))
		}
		if b.Sidekick != "" && byName[UnitName(b.Sidekick, b.Spare[i])] != nil {
			return fail(fmt.Errorf("blue-green of %s: spare sidekick %s already exists in fleet; nothing was touched", plan.Service, UnitName(b.Sidekick, b.Spare[i])))
		}
	}

	record := func(ctx context.Context, stage BlueGreenStage) error {
		if b.Record == nil {
			return nil
		}
		return b.Record(ctx, instancesOf(old), b.Spare, stage)
	}
	// done: no unit of the other set is left behind (a recovery has
	// nothing to do).
	done := func() {
		if err := record(context.WithoutCancel(ctx), BlueGreenDone); err != nil {
			r.opt.Logger.Warn("blue-green: intent not cleared", "rollout_id", r.opt.RolloutID, "error", err.Error())
		}
	}
	if err := record(ctx, BlueGreenLaunching); err != nil {
		return fail(fmt.Errorf("blue-green of %s: record the intent: %w; nothing was touched", plan.Service, err))
	}
	// Green: launch every new unit, then wait for each to be placed,
	// running, healthy and announced.
	var wg sync.WaitGroup
	errs := make([]error, len(news))
	for i := range news {
		wg.Go(func() { errs[i] = r.launchGreen(ctx, &news[i], b, b.Spare[i], tmpl, sideTmpl) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		// The old ones never stopped: take the new ones away again.
		dctx := context.WithoutCancel(ctx)
		if r.destroyGreens(dctx, news, b) {
			done()
		}
		return fail(fmt.Errorf("blue-green of %s: %w; the new instances were destroyed, the old ones kept serving", plan.Service, firstErr(errs)))
	}
	if b.Swapped != nil {
		if err := b.Swapped(ctx, b.Spare, instancesOf(old)); err != nil {
			dctx := context.WithoutCancel(ctx)
			if r.destroyGreens(dctx, news, b) {
				done()
			}
			return fail(fmt.Errorf("blue-green of %s: record the live instances: %w; the new instances were destroyed, the old ones kept serving", plan.Service, err))
		}
	}
	if err := record(ctx, BlueGreenSwitched); err != nil {
		// The live record is written: a recovery goes by it.
		r.opt.Logger.Warn("blue-green: intent not updated after the switch", "rollout_id", r.opt.RolloutID, "error", err.Error())
	}

	// Blue: drain, stop and destroy every old unit. The new ones serve;
	// a failure here leaves an old unit behind, never a gap.
	for i := range olds {
		wg.Go(func() { errs[i] = r.retireBlue(ctx, &olds[i], b) })
	}
	wg.Wait()
	rep.Finished = clock.Now()
	if err := firstErr(errs[:len(olds)]); err != nil {
		// An old unit is left: the intent stays, for a recovery to
		// retire it.
		return fail(fmt.Errorf("blue-green of %s: the new instances serve, but: %w", plan.Service, err))
	}
	done()
	rep.Status = StatusSucceeded
	return rep, nil
}

// launchGreen creates one new unit (and its sidekick) and waits until it is
// placed, running, healthy and announced.
func (r *Roller) launchGreen(ctx context.Context, ur *UnitReport, b *BlueGreen, instance string, tmpl, sideTmpl *schema.Unit) error {
	clock := r.opt.Clock
	t0 := clock.Now()
	ur.Outcome = OutcomeInProgress
	if err := r.fenced(); err != nil {
		return r.failed(ur, PhaseStart, nil, false, err, t0)
	}
	r.begin(ur, PhaseStart)
	if r.digest != "" {
		ur.ImageDigest = r.digest
	}
	r.emit(ur, Event{Kind: EventStarting})
	if err := r.fleet.CreateUnit(ctx, &schema.Unit{Name: ur.Unit, Options: tmpl.Options, DesiredState: "launched"}); err != nil {
		r.end(ur)
		return r.failed(ur, PhaseStart, nil, false, err, t0)
	}
	if sideTmpl != nil {
		side := UnitName(b.Sidekick, instance)
		if err := r.fleet.CreateUnit(ctx, &schema.Unit{Name: side, Options: sideTmpl.Options, DesiredState: "launched"}); err != nil {
			r.end(ur)
			return r.failed(ur, PhaseStart, nil, false, err, t0)
		}
	}
	placement := b.PlacementTimeout
	if placement <= 0 {
		placement = DefaultPlacementTimeout
	}
	var last *schema.UnitState
	err := r.waitState(ctx, ur.Unit, t0.Add(placement), placement, placed, &last, nil)
	if err != nil && !errors.Is(err, context.Canceled) {
		err = fmt.Errorf("%w within %s (fleet cannot schedule it: Conflicts=, MachineOf= or no machine with room): %w", ErrNotPlaced, placement, err)
	}
	if err == nil {
		err = r.waitState(ctx, ur.Unit, t0.Add(r.opt.StartTimeout), r.opt.StartTimeout, RunningStatus, &last, nil)
	}
	r.end(ur)
	ur.Start = Seconds(clock.Now().Sub(t0))
	ur.LastState = DescribeState(last)
	if err != nil {
		return r.failed(ur, PhaseStart, last, false, err, t0)
	}
	ur.Machine = shortID(last.MachineID)
	if h := r.opt.Hooks.AfterRunning; h != nil {
		r.emit(ur, Event{Kind: EventRunning, Elapsed: time.Duration(ur.Start), State: DescribeState(last)})
		if err := r.gate(ctx, ur, h, last); err != nil {
			return r.failed(ur, PhaseHealth, last, false, err, t0)
		}
	}
	// Watched for its minimum healthy time before the switch: a new
	// instance that crashes keeps the old ones serving.
	ur.Total = Seconds(clock.Now().Sub(t0))
	if err := r.watchAfterStart(ctx, ur); err != nil {
		if errors.As(err, new(*UnitError)) {
			return err
		}
		return r.failed(ur, PhaseWatch, last, false, err, t0)
	}
	ur.Outcome, ur.Phase = OutcomeLaunched, ""
	ur.Total = Seconds(clock.Now().Sub(t0))
	r.emit(ur, Event{Kind: EventHealthy, Elapsed: time.Duration(ur.Total), State: DescribeState(last)})
	return nil
}

// placed judges the placement: fleet publishes a state once a machine's
// agent has the unit.
func placed(st *schema.UnitState) (string, bool, error) {
	if st == nil || st.MachineID == "" {
		return "waiting for fleet to place it on a machine", false, nil
	}
	return "placed on " + shortID(st.MachineID), true, nil
}

// destroyGreens removes the new units and their sidekicks; it tells
// whether every one is gone.
func (r *Roller) destroyGreens(ctx context.Context, news []UnitReport, b *BlueGreen) bool {
	all := true
	for i := range news {
		all = r.destroyGreen(ctx, &news[i], b, b.Spare[i]) && all
	}
	return all
}

// destroyGreen removes a new unit and its sidekick (best effort: a unit
// fleet no longer knows is gone already); it tells whether both are gone.
func (r *Roller) destroyGreen(ctx context.Context, ur *UnitReport, b *BlueGreen, instance string) bool {
	gone := true
	if b.Sidekick != "" {
		if err := r.fleet.DestroyUnit(ctx, UnitName(b.Sidekick, instance)); err != nil && !errors.Is(err, ErrNotFound) {
			r.opt.Logger.Warn("sidekick not destroyed", "rollout_id", r.opt.RolloutID, "unit", UnitName(b.Sidekick, instance), "error", err.Error())
			gone = false
		}
	}
	if err := r.fleet.DestroyUnit(ctx, ur.Unit); err != nil && !errors.Is(err, ErrNotFound) {
		r.opt.Logger.Warn("new unit not destroyed", "rollout_id", r.opt.RolloutID, "unit", ur.Unit, "error", err.Error())
		ur.Error = strings.TrimPrefix(ur.Error+"; not destroyed: "+err.Error(), "; ")
		return false
	}
	if ur.Outcome != OutcomeFailed {
		ur.Outcome = OutcomeDestroyed
	}
	return gone
}

// retireBlue drains an old unit, stops it, then destroys it and its
// sidekick.
func (r *Roller) retireBlue(ctx context.Context, ur *UnitReport, b *BlueGreen) error {
	clock := r.opt.Clock
	t0 := clock.Now()
	ur.Outcome = OutcomeInProgress
	if h := r.opt.Hooks.BeforeStop; h != nil {
		if done := r.opt.Hooks.Done; done != nil {
			defer done(context.WithoutCancel(ctx), ur.Unit)
		}
		r.begin(ur, PhaseDrain)
		err := h(ctx, ur.Unit)
		r.end(ur)
		if err != nil {
			return r.failed(ur, PhaseDrain, nil, false, fmt.Errorf("%w; the old unit was left as it is", err), t0)
		}
	}
	if r.holdForFleet(ctx, ur, PhaseStop) {
		return r.failed(ur, PhaseStop, nil, false, fmt.Errorf("%w; the old unit was left as it is", ctx.Err()), t0)
	}
	stop, last := r.stop(ctx, ur)
	if stop.err != nil {
		return r.failed(ur, PhaseStop, last, false, fmt.Errorf("%w; the old unit was left as it is", stop.err), t0)
	}
	_, in, _ := splitInstance(ur.Unit)
	if b.Sidekick != "" {
		if err := r.fleet.DestroyUnit(ctx, UnitName(b.Sidekick, in)); err != nil && !errors.Is(err, ErrNotFound) {
			return r.failed(ur, PhaseStop, last, false, fmt.Errorf("destroy sidekick %s: %w", UnitName(b.Sidekick, in), err), t0)
		}
	}
	if err := r.fleet.DestroyUnit(ctx, ur.Unit); err != nil && !errors.Is(err, ErrNotFound) {
		return r.failed(ur, PhaseStop, last, false, err, t0)
	}
	ur.Outcome, ur.Phase = OutcomeRetired, ""
	ur.Total = Seconds(clock.Now().Sub(t0))
	return nil
}

func firstErr(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// instancesOf returns the instances of unit names (my-service@8901.service:
// 8901).
func instancesOf(units []string) []string {
	out := make([]string, 0, len(units))
	for _, u := range units {
		_, in, _ := splitInstance(u)
		out = append(out, in)
	}
	return out
}

// Target is the target a rollout plans with these hooks: with blue-green,
// the instances that serve now as recorded (the port sets swap at each
// rollout); otherwise t.
func (h Hooks) Target(t Target) Target {
	if b := h.BlueGreen; b != nil && len(b.Live) > 0 && len(t.Units) == 0 {
		t.Instances = b.Live
	}
	return t
}

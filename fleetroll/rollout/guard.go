package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/coreos/fleet/schema"
	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	client "go.etcd.io/etcd/client/v2"
)

// guard carries out a rollout's settings around the roller: the lock, the
// intent record and drain through etcd, the health gate through fleet's
// machine list, the canary pause and the blue-green live sets.
type guard struct {
	etcd     client.KeysAPI
	fleet    fleetroll.Fleet
	service  string
	settings Settings // complete
	lock     LockMode // resolved: off, fail or wait
	owner    string
	rollout  string
	trigger  fleetroll.Trigger
	roll     fleetroll.Options // tunes the recovery (timeouts, poll, logger, clock)
	say      func(format string, a ...any)
	// onEvent is told the steps of a restore that resumes this very
	// rollout (its units are the rollout's): the receivers' streams show
	// the takeover's restore as they show the roll.
	onEvent func(fleetroll.Event)
	// onRestored, when set, is given a dead holder's intent and what the
	// restore of each of its units did. When the intent is of this rollout
	// itself (a receiver resuming the rollout of one that stopped), the
	// rollout is not recorded as interrupted: the resumed one records it.
	onRestored func(in coord.Intent, restored []fleetroll.UnitReport)
	recovered  bool // a dead holder's intent was found
	record     *coord.Recorder
	// switched: the intent was this rollout's own, a blue-green switched
	// before the takeover; the recovery finished it (the old set retired).
	switched *switchedSets
}

// switchedSets are a blue-green rollout's sets, once switched: the new
// serve, the old are gone.
type switchedSets struct{ new, old []string }

// ErrRecoveryFailed is returned when units a dead holder left in flight
// could not all be restored: nothing else is touched.
var ErrRecoveryFailed = errors.New("recovery failed")

// prepare checks etcd, takes the lock, restores what a dead holder left in
// flight, and returns the roll's hooks and a release function to call when
// the roll is over. When etcd is needed and cannot be reached, it fails
// before anything is touched.
func (g *guard) prepare(ctx context.Context) (_ fleetroll.Hooks, _ func(), err error) {
	var hooks fleetroll.Hooks
	release := func() {}
	stopHearing := func() {}
	defer func() {
		if err != nil {
			stopHearing()
		}
	}()
	p, service := g.settings, g.service
	if g.etcd != nil {
		if err := coord.Ping(ctx, g.etcd); err != nil {
			return hooks, release, fmt.Errorf("etcd unreachable, nothing was touched: %w", err)
		}
	}
	if p.Watches(g.etcd != nil) {
		// Waits wake on fleet's own state writes; polling stays the
		// fallback when etcd is out of reach.
		hooks.Wake = coord.FleetStates{KAPI: g.etcd}
	}
	if g.etcd != nil {
		// A stop or start that would meet fleet's periodic republish is
		// written once it has passed (fleet's etcd: its states say when).
		hooks.Republish = coord.NewFleetRepublish(g.etcd)
		// ... and once fleet's agents can hear it: they are deaf for a
		// second after each change of their jobs (the same etcd).
		hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		agents := coord.WatchFleetAgents(hctx, g.etcd)
		hooks.Hearing = agents
		stopHearing = func() { cancel(); <-agents.Done() }
	}
	if g.lock == LockFail || g.lock == LockWait {
		held, err := coord.Lock{KAPI: g.etcd, Key: coord.LockKey(service), Owner: g.owner, TTL: p.LockTTL,
			OnWait: func(holder string) { g.say("waiting for the lock of %s, held by %s", service, holder) }}.Acquire(ctx, g.lock == LockWait)
		if err != nil {
			return hooks, release, err
		}
		intents := coord.Intents{KAPI: g.etcd}
		record := intents.Recorder(service, coord.Intent{Rollout: g.rollout, Trigger: g.trigger, Owner: g.owner, Started: g.clock().Now()}, g.clock())
		release = func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			// This fleetroll saw its roll to the end (and brought back what
			// it could): nothing of its own is left for another to restore.
			// Another's intent that could not be restored stays.
			// A blue-green rollout that left a unit of the other set
			// behind keeps its intent, for the next fleetroll to finish.
			if in, err := intents.Get(rctx, service); err == nil && in != nil && in.Rollout == g.rollout && in.BlueGreen == nil && held.Valid() == nil {
				_ = intents.Delete(rctx, service)
			}
			_ = held.Release(rctx)
		}
		hooks.Continue = held.Valid
		hooks.Fence = held.Valid
		hooks.Intent = record.Phase
		g.record = record
	}
	var gate func(context.Context, string, *schema.UnitState) error
	if p.Health != nil {
		hg := p.Health.Gate()
		gate = func(ctx context.Context, unit string, st *schema.UnitState) error {
			return g.gate(ctx, hg, unit, st)
		}
		// The watch after the start checks the health once per poll.
		hooks.Probe = func(ctx context.Context, unit string, st *schema.UnitState) error {
			url, err := g.healthURL(ctx, hg, unit, st)
			if err != nil {
				// fleet's API failing is not the unit failing.
				return fmt.Errorf("%w: %w", fleetroll.ErrNotProbed, err)
			}
			return hg.Check(ctx, url)
		}
	}
	if p.Drain != nil {
		d := coord.Drain{KAPI: g.etcd, Prefix: p.Drain.Prefix, DrainPrefix: "/fleetroll/drain/" + service,
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
	if p.BlueGreen() {
		lives := coord.Lives{KAPI: g.etcd}
		live, next, err := lives.Resolve(ctx, service, p.Ports, p.SparePorts)
		if err != nil {
			release()
			return fleetroll.Hooks{}, func() {}, fmt.Errorf("%w; nothing was touched", err)
		}
		hooks.BlueGreen = &fleetroll.BlueGreen{Live: live, Spare: next, Sidekick: p.Sidekick, PlacementTimeout: p.PlacementTimeout,
			Swapped: func(ctx context.Context, live, spare []string) error {
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				return lives.Put(wctx, service, coord.LiveSets{Live: live, Spare: spare, Rollout: g.rollout, At: g.clock().Now()})
			}}
		if rec := g.record; rec != nil {
			hooks.BlueGreen.Record = func(ctx context.Context, old, new []string, stage fleetroll.BlueGreenStage) error {
				if stage == fleetroll.BlueGreenDone {
					return rec.BlueGreen(ctx, nil)
				}
				return rec.BlueGreen(ctx, &coord.BlueGreenIntent{Live: old, New: new, Sidekick: p.Sidekick, Switched: stage == fleetroll.BlueGreenSwitched})
			}
		}
	}
	if p.Canary > 0 {
		hooks.Canary = &fleetroll.Canary{N: p.Canary, Decide: func(ctx context.Context, rollout string, canaries []string, ready func()) (fleetroll.Decision, error) {
			return g.decide(ctx, gate, rollout, canaries, ready)
		}}
	}
	if hooks.Intent != nil {
		if err := g.recoverDead(ctx, hooks); err != nil {
			release()
			return fleetroll.Hooks{}, func() {}, err
		}
	}
	return hooks, func() { release(); stopHearing() }, nil
}

func (g *guard) clock() fleetroll.Clock { return clockOr(g.roll.Clock) }

// clockOr is c, or the real clock.
func clockOr(c fleetroll.Clock) fleetroll.Clock {
	if c == nil {
		return fleetroll.SystemClock{}
	}
	return c
}

// recoverDead restores the units of an intent left by a holder that is gone
// (this fleetroll holds the lock now), records that rollout in the history
// as interrupted, and deletes the intent.
func (g *guard) recoverDead(ctx context.Context, hooks fleetroll.Hooks) error {
	service := g.service
	intents := coord.Intents{KAPI: g.etcd}
	in, err := intents.Get(ctx, service)
	if err != nil {
		return fmt.Errorf("read the intent of %s: %w; nothing was touched", service, err)
	}
	if in == nil {
		return nil
	}
	g.recovered = true
	if in.BlueGreen != nil {
		return g.recoverBlueGreen(ctx, in, hooks)
	}
	resumed := in.Rollout == g.rollout
	var names []string
	for _, u := range in.Units {
		names = append(names, u.Unit)
	}
	g.say("recovering rollout %s of %s, left by %s: restoring %s", in.Rollout, service, in.Owner, strings.Join(names, ", "))
	restored, rerr := g.restore(ctx, hooks, names, resumed)
	if g.onRestored != nil {
		g.onRestored(*in, restored)
	}
	rep := fleetroll.Report{Version: fleetroll.SchemaVersion, ID: in.Rollout, Service: service, Status: fleetroll.StatusInterrupted,
		Trigger: in.Trigger, By: in.Owner, Started: in.Started, Finished: g.clock().Now(), Units: []fleetroll.UnitReport{}}
	var where []string
	for i, u := range in.Units {
		ur := fleetroll.UnitReport{Unit: u.Unit, Outcome: fleetroll.OutcomeInterrupted, Phase: u.Phase}
		ur.Error = fmt.Sprintf("the fleetroll running it (%s) stopped in phase %s; restored by %s", in.Owner, u.Phase, g.owner)
		if i < len(restored) && restored[i].Outcome != fleetroll.OutcomeRestarted {
			ur.Error = fmt.Sprintf("the fleetroll running it (%s) stopped in phase %s; %s could not restore it: %s", in.Owner, u.Phase, g.owner, restored[i].Error)
			ur.LeftStopped = restored[i].LeftStopped
		}
		rep.Units = append(rep.Units, ur)
		where = append(where, fmt.Sprintf("%s in phase %s", u.Unit, u.Phase))
	}
	rep.Error = fmt.Sprintf("interrupted: the fleetroll running it stopped with %s in flight", strings.Join(where, ", "))
	if !resumed {
		g.recordInterrupted(ctx, rep)
	}
	if rerr != nil {
		g.say("recovery of %s failed: %v", service, rerr)
		return fmt.Errorf("%s: %w: %w; nothing else was touched (fleetroll recover %s tries again)", service, ErrRecoveryFailed, rerr, service)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := intents.Delete(dctx, service); err != nil {
		return fmt.Errorf("%s: restored, but the intent could not be cleared: %w", service, err)
	}
	if resumed {
		g.say("recovered rollout %s of %s: %s running again; resuming it", in.Rollout, service, strings.Join(names, ", "))
	} else {
		g.say("recovered rollout %s of %s: %s running again; recorded as interrupted", in.Rollout, service, strings.Join(names, ", "))
	}
	return nil
}

// restore brings units back with the recovery's hooks (the health gate,
// the announcement, fencing; no drain, no pause). The steps of the restore
// of this rollout's own units (own) are reported as its roll's are.
func (g *guard) restore(ctx context.Context, hooks fleetroll.Hooks, units []string, own bool) ([]fleetroll.UnitReport, error) {
	opt := g.roll
	opt.RolloutID, opt.OnEvent = g.rollout, nil
	if own {
		opt.OnEvent = g.onEvent
	}
	opt.Hooks = fleetroll.Hooks{AfterRunning: hooks.AfterRunning, Done: hooks.Done, Fence: hooks.Fence, Wake: hooks.Wake}
	roller, err := fleetroll.NewRoller(g.fleet, opt)
	if err != nil {
		return nil, err
	}
	return roller.Restore(ctx, units)
}

// recordInterrupted saves a dead holder's rollout in the history, joined
// with the record a receiver's queue may have made of it (a newer push
// took its place: fleetroll.JoinInterrupted).
func (g *guard) recordInterrupted(ctx context.Context, rep fleetroll.Report) {
	if !fleetroll.ValidRolloutID(rep.ID) {
		return
	}
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := (coord.History{KAPI: g.etcd}).Amend(hctx, rep, fleetroll.JoinInterrupted); err != nil {
		g.say("the interrupted rollout %s was not recorded: %v", rep.ID, err)
	}
}

// recoverBlueGreen finishes or undoes a blue-green rollout left by a holder
// that is gone, so that one full set serves: before the switch (the live
// record still names the old set), the new units and their sidekicks are
// destroyed; after it, the old ones are. The set kept is brought back up
// (started, healthy, announced) where it is not. The rollout is recorded
// as interrupted.
func (g *guard) recoverBlueGreen(ctx context.Context, in *coord.Intent, hooks fleetroll.Hooks) error {
	service, bg := g.service, in.BlueGreen
	lives := coord.Lives{KAPI: g.etcd}
	rec, err := lives.Get(ctx, service)
	if err != nil {
		return fmt.Errorf("read the live sets of %s: %w; nothing was touched", service, err)
	}
	// The live record is the truth: written at the switch, before the
	// intent says so.
	switched := bg.Switched || (rec != nil && slices.Equal(rec.Live, bg.New))
	keep, drop := bg.Live, bg.New
	if switched {
		keep, drop = bg.New, bg.Live
	}
	units := func(instances []string) []string {
		var out []string
		for _, i := range instances {
			out = append(out, fleetroll.UnitName(service, i))
		}
		return out
	}
	stage := "before the switch"
	if switched {
		stage = "after the switch"
	}
	g.say("recovering blue-green rollout %s of %s, left by %s %s: keeping %s, removing %s", in.Rollout, service, in.Owner, stage,
		strings.Join(units(keep), ", "), strings.Join(units(drop), ", "))
	var errs []error
	for _, i := range drop {
		names := []string{fleetroll.UnitName(service, i)}
		if bg.Sidekick != "" {
			names = append([]string{fleetroll.UnitName(bg.Sidekick, i)}, names...)
		}
		for _, n := range names {
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := g.fleet.DestroyUnit(dctx, n)
			cancel()
			if err != nil && !errors.Is(err, fleetroll.ErrNotFound) {
				errs = append(errs, fmt.Errorf("destroy %s: %w", n, err))
			}
		}
		if hooks.Done != nil {
			hooks.Done(ctx, fleetroll.UnitName(service, i)) // its drain key, if it was draining
		}
	}
	if !switched {
		if err := g.undoRelease(ctx, in.Rollout); err != nil {
			errs = append(errs, err)
		}
	}
	if !switched && rec == nil && len(errs) == 0 {
		// A first blue-green rollout: the old set is the live one.
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := lives.Put(wctx, service, coord.LiveSets{Live: bg.Live, Spare: bg.New, Rollout: g.rollout, At: g.clock().Now()})
		cancel()
		if err != nil {
			errs = append(errs, err)
		}
	}
	restored, rerr := g.restore(ctx, hooks, units(keep), in.Rollout == g.rollout)
	if rerr != nil {
		errs = append(errs, rerr)
	}
	rep := fleetroll.Report{Version: fleetroll.SchemaVersion, ID: in.Rollout, Service: service, Status: fleetroll.StatusInterrupted,
		Trigger: in.Trigger, By: in.Owner, Started: in.Started, Finished: g.clock().Now(), Strategy: fleetroll.StrategyBlueGreen,
		Units: []fleetroll.UnitReport{}}
	for i, u := range units(keep) {
		ur := fleetroll.UnitReport{Unit: u, Outcome: fleetroll.OutcomeInterrupted,
			Error: fmt.Sprintf("the fleetroll running it (%s) stopped %s; kept by %s", in.Owner, stage, g.owner)}
		if i < len(restored) && restored[i].Outcome != fleetroll.OutcomeRestarted {
			ur.Error, ur.LeftStopped = fmt.Sprintf("the fleetroll running it (%s) stopped %s; %s could not bring it back: %s", in.Owner, stage, g.owner, restored[i].Error), restored[i].LeftStopped
		}
		rep.Units = append(rep.Units, ur)
	}
	for _, u := range units(drop) {
		rep.Units = append(rep.Units, fleetroll.UnitReport{Unit: u, Outcome: fleetroll.OutcomeDestroyed,
			Error: fmt.Sprintf("the fleetroll running it (%s) stopped %s; removed by %s", in.Owner, stage, g.owner)})
	}
	rep.Error = fmt.Sprintf("interrupted: the fleetroll running it stopped %s", stage)
	if in.Rollout != g.rollout {
		g.recordInterrupted(ctx, rep)
	}
	if err := errors.Join(errs...); err != nil {
		g.say("recovery of %s failed: %v", service, err)
		return fmt.Errorf("%s: %w: %w; nothing else was touched (fleetroll recover %s tries again)", service, ErrRecoveryFailed, err, service)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := (coord.Intents{KAPI: g.etcd}).Delete(dctx, service); err != nil {
		return fmt.Errorf("%s: recovered, but the intent could not be cleared: %w", service, err)
	}
	if in.Rollout == g.rollout {
		if switched {
			g.switched = &switchedSets{new: units(keep), old: units(drop)}
		}
		g.say("recovered blue-green rollout %s of %s, taken over: %s serve", in.Rollout, service, strings.Join(units(keep), ", "))
		return nil
	}
	g.say("recovered blue-green rollout %s of %s: %s serve; recorded as interrupted", in.Rollout, service, strings.Join(units(keep), ", "))
	return nil
}

// undoRelease writes back the release before the one rollout wrote, when
// it is still the current one (a blue-green deploy stopped before its
// switch: the old set serves the release before it); a first deploy's
// release is cleared.
func (g *guard) undoRelease(ctx context.Context, rollout string) error {
	store := coord.ReleaseStore{KAPI: g.etcd}
	cur, err := store.Current(ctx, g.service)
	if err != nil || cur == nil || cur.Rollout != rollout {
		return err
	}
	hist, err := store.History(ctx, g.service)
	if err != nil {
		return err
	}
	var prev *fleetroll.Release
	for i, rel := range hist { // newest first
		if rel.Rollout == rollout && i+1 < len(hist) {
			prev = &hist[i+1]
			break
		}
	}
	if prev == nil {
		g.say("%s: clearing the release %s of the stopped rollout (a first deploy)", g.service, cur.Image)
		return store.Clear(ctx, g.service, *cur)
	}
	back := *prev
	back.Rollout, back.Created, back.Trigger = g.rollout, g.clock().Now(), fleetroll.Trigger{Source: fleetroll.TriggerRollback}
	g.say("%s: writing back the release %s (the stopped rollout had written %s)", g.service, prev.Image, cur.Image)
	return store.Set(ctx, g.service, back, cur)
}

// gate runs the health gate against the unit's machine and port.
func (g *guard) gate(ctx context.Context, hg *fleetroll.HealthGate, unit string, st *schema.UnitState) error {
	url, err := g.healthURL(ctx, hg, unit, st)
	if err != nil {
		return err
	}
	return hg.Wait(ctx, url)
}

// healthURL is the URL of a unit's health check on the machine its state
// names.
func (g *guard) healthURL(ctx context.Context, hg *fleetroll.HealthGate, unit string, st *schema.UnitState) (string, error) {
	if st == nil {
		return "", fmt.Errorf("health gate of %s: cannot tell its machine", unit)
	}
	ips, err := g.fleet.MachineIPs(ctx)
	if err != nil {
		return "", fmt.Errorf("health gate of %s: list machines: %w", unit, err)
	}
	ip := ips[st.MachineID]
	if ip == "" {
		return "", fmt.Errorf("health gate of %s: machine %s has no public IP", unit, st.MachineID)
	}
	_, port, _ := strings.Cut(strings.TrimSuffix(unit, ".service"), "@")
	return hg.URL(ip, port), nil
}

// decide holds a rollout paused after its canaries: the pause is recorded
// in etcd, where fleetroll promote, fleetroll abort and serve's API decide
// it. With a canary wait, once the wait is over the canaries are checked
// (running, and through the health gate): all well promotes, anything else
// aborts, unless a decision came first.
func (g *guard) decide(ctx context.Context, gate func(context.Context, string, *schema.UnitState) error,
	rollout string, canaries []string, ready func()) (fleetroll.Decision, error) {
	pauses := coord.Pauses{KAPI: g.etcd}
	clock := g.clock()
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := pauses.Open(octx, coord.Pause{Rollout: rollout, Service: g.service, Canaries: canaries, Since: clock.Now()})
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
	if w := g.settings.CanaryWait; w > 0 {
		waited = clock.After(w)
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
		Reason: fmt.Sprintf("every canary running and healthy after %s", g.settings.CanaryWait)}
	if why := g.checkCanaries(ctx, canaries, gate); why != "" {
		d = fleetroll.Decision{Kind: fleetroll.DecisionAbort, By: "canary wait", Reason: why}
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if ps, err := pauses.Decide(dctx, rollout, d); errors.Is(err, coord.ErrDecided) && ps != nil {
		return *ps.Decision, nil // someone decided as the wait ended
	}
	return d, nil
}

// pauseResync bounds how late a decision is seen when the watch on the
// pause broke.
const pauseResync = 5 * time.Second

// checkCanaries says what is wrong with the canaries ("" when nothing):
// one that fleet does not report running, or that fails the health gate.
func (g *guard) checkCanaries(ctx context.Context, canaries []string, gate func(context.Context, string, *schema.UnitState) error) string {
	for _, unit := range canaries {
		st, err := g.fleet.UnitState(ctx, unit)
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

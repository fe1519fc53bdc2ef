package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// OnFailure is what a deploy does when an instance fails on the new release.
type OnFailure string

const (
	OnFailureHalt     OnFailure = "halt"     // stop there, as a restart does
	OnFailureRollback OnFailure = "rollback" // write the previous release back and restart the moved instances
)

// ParseOnFailure checks an --on-failure / on_failure value ("" is halt).
func ParseOnFailure(s string) (OnFailure, error) {
	switch OnFailure(s) {
	case "", OnFailureHalt:
		return OnFailureHalt, nil
	case OnFailureRollback:
		return OnFailureRollback, nil
	}
	return "", fmt.Errorf("on_failure %q: want halt or rollback", s)
}

// Deploy says which release a rollout moves a service to, and how.
type Deploy struct {
	To        Release
	Releases  Releases
	OnFailure OnFailure
	Pull      PullOptions
	// NoPull skips the pre-pull (each instance pulls as it starts).
	NoPull bool
	// Note, when set, is told of each step of the deploy that is not a
	// unit's event: the pre-pull, the release written, a rollback.
	Note func(msg string)
	// TakenOver is set for a rollout resumed from another fleetroll.
	TakenOver *TakenOver
}

// TakenOver is what a deploy taken over from another fleetroll had done:
// the release it replaced (when it had written its own) and the units it
// had moved to the new one (the plan leaves them out; a rollback restarts
// them too).
type TakenOver struct {
	From *Release
	Done []UnitReport
}

// TriggerRollback is the trigger source of a release written back by a
// rollback.
const TriggerRollback = "rollback"

// ErrNoPrevious is why a rollback could not happen on a first deploy.
var ErrNoPrevious = errors.New("no previous release to roll back to (a first deploy)")

// Deploy moves the plan's service to d.To: it pre-pulls the release on every
// machine that runs an instance (a failure halts before any unit is
// touched), writes it as the service's current release (compare-and-swap
// against the one it read), then restarts the units one at a time; each
// starts with the new release. When a unit fails to start, fails its
// health gate or fails in its watch after the start, and d.OnFailure is
// rollback, the previous release is written
// back and the units moved so far, and the failed one, are restarted on it
// with the same safety; the report's status is then rolled_back.
func (r *Roller) Deploy(ctx context.Context, plan *Plan, d Deploy) (*Report, error) {
	note := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		r.opt.Logger.Info(msg, "rollout_id", r.opt.RolloutID, "service", plan.Service)
		if d.Note != nil {
			d.Note(msg)
		}
	}
	clock := r.opt.Clock
	to := d.To
	to.Rollout = r.opt.RolloutID
	if to.Created.IsZero() {
		to.Created = clock.Now()
	}
	rep := &Report{Version: SchemaVersion, ID: r.opt.RolloutID, Service: plan.Service, Status: StatusRunning,
		Started: clock.Now(), Units: untouchedUnits(plan), Release: &ReleaseChange{To: to}}
	fail := func(phase Phase, err error) (*Report, error) {
		rep.Finished, rep.Phase, rep.Error = clock.Now(), phase, err.Error()
		rep.Status = StatusFailed
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			rep.Status = StatusInterrupted
		}
		return rep, err
	}
	if err := to.Validate(); err != nil {
		return fail("", err)
	}
	if d.Releases == nil {
		return fail("", errors.New("deploy: no release store (releases need etcd)"))
	}
	prev, err := d.Releases.Current(ctx, plan.Service)
	if err != nil {
		return fail("", fmt.Errorf("deploy %s: read the current release: %w", to.Image, err))
	}
	// Taken over after its release was written: the release before it is
	// the one it replaced, and the units it moved go back too on a
	// rollback.
	written := prev != nil && prev.Rollout == r.opt.RolloutID && prev.Image == to.Image && d.TakenOver != nil
	if written {
		prev = d.TakenOver.From
	}
	rep.Release.From = prev
	if !d.NoPull {
		note("pre-pulling %s", to.Image)
		pull, err := r.Pull(ctx, plan, to.Image, d.Pull)
		rep.Pull = pull
		if err != nil {
			return fail(PhasePull, err)
		}
	}
	if !written {
		if err := d.Releases.Set(ctx, plan.Service, to, prev); err != nil {
			return fail("", fmt.Errorf("deploy %s: no instance was touched: %w", to.Image, err))
		}
		note("release of %s is now %s", plan.Service, to.Image)
	}

	r.digest = to.Digest()
	moved, rollErr := r.Roll(ctx, plan)
	moved.Release, moved.Pull = rep.Release, rep.Pull
	moved.Started = rep.Started
	if r.opt.Hooks.BlueGreen != nil {
		return r.blueGreenFailed(ctx, moved, rollErr, prev, to, d, note)
	}
	// Rolled back: a unit that failed to start or failed its gate, with
	// --on-failure rollback, or canaries aborted (whatever on_failure says:
	// an abort asks for it).
	var ue *UnitError
	var ce *CanaryError
	failedUnit := d.OnFailure == OnFailureRollback && errors.As(rollErr, &ue) &&
		(ue.Phase == PhaseStart || ue.Phase == PhaseHealth || ue.Phase == PhaseWatch || errors.Is(rollErr, ErrNoProgress)) &&
		!errors.Is(rollErr, ErrTargetChanged)
	aborted := errors.As(rollErr, &ce) && ce.Err == nil && ce.Decision.Kind == DecisionAbort
	if rollErr == nil || ctx.Err() != nil || !(failedUnit || aborted) {
		return moved, rollErr
	}
	failed, why := "", ""
	if failedUnit {
		failed, why = ue.Unit, ue.Unit+" failed"
	} else {
		why = "canaries " + strings.Join(ce.Units, ", ") + " aborted"
	}
	if prev == nil {
		note("%s on %s; %v", why, to.Image, ErrNoPrevious)
		moved.Error = fmt.Sprintf("%s; %v", moved.Error, ErrNoPrevious)
		return moved, fmt.Errorf("%w; %w", rollErr, ErrNoPrevious)
	}

	// Roll back: the previous release again, then the units that run the
	// new one (the failed one, then those restarted) restarted on it.
	back := *prev
	back.Rollout, back.Created = r.opt.RolloutID, clock.Now()
	back.Trigger = Trigger{Source: TriggerRollback}
	note("%s on %s: rolling back to %s", why, to.Image, prev.Image)
	if err := d.Releases.Set(ctx, plan.Service, back, &to); err != nil {
		err = fmt.Errorf("%w; the rollback could not write back %s: %w", rollErr, prev.Image, err)
		moved.Error = err.Error()
		return moved, err
	}
	// The failed unit first: it is the one down (or out of the proxy), and
	// no other goes down before it is back; then the others of its batch
	// that failed, then those restarted.
	undo := &Plan{Service: plan.Service}
	index := map[string]int{}
	for i, u := range moved.Units {
		if u.Unit == failed {
			undo.Units = append(undo.Units, plan.Units[i])
			index[u.Unit] = i
		}
	}
	for i, u := range moved.Units {
		if u.Outcome == OutcomeFailed && u.Unit != failed {
			undo.Units = append(undo.Units, plan.Units[i])
			index[u.Unit] = i
		}
	}
	for i, u := range moved.Units {
		if u.Outcome == OutcomeRestarted {
			undo.Units = append(undo.Units, plan.Units[i])
			index[u.Unit] = i
		}
	}
	if written {
		// Those moved before the takeover, last: they join the record.
		for _, u := range d.TakenOver.Done {
			index[u.Unit] = len(moved.Units)
			moved.Units = append(moved.Units, u)
			undo.Units = append(undo.Units, PlannedUnit{Name: u.Unit})
		}
	}
	r.digest = prev.Digest()
	r.opt.Hooks.Canary = nil // the way back does not pause
	backRep, backErr := r.Roll(ctx, undo)
	for _, b := range backRep.Units {
		i := index[b.Unit]
		u := &moved.Units[i]
		u.Phases = append(u.Phases, b.Phases...)
		u.Stop, u.Start, u.Total = u.Stop+b.Stop, u.Start+b.Start, u.Total+b.Total
		u.Machine, u.MovedFrom, u.LastState, u.LeftStopped = b.Machine, b.MovedFrom, b.LastState, b.LeftStopped
		switch b.Outcome {
		case OutcomeRestarted:
			u.Outcome, u.Phase, u.ImageDigest = OutcomeRolledBack, "", b.ImageDigest
			if u.Error != "" {
				u.Error = downRe.ReplaceAllString(u.Error, "") + "; rolled back: it runs the previous release again"
			}
		case OutcomeUntouched:
			// the rollback halted before it: it still runs the new release
		default:
			u.Outcome, u.Phase, u.ImageDigest = b.Outcome, b.Phase, b.ImageDigest
			u.Error = b.Error
		}
	}
	moved.Finished = clock.Now()
	if backErr != nil {
		err := &GaveUpError{Err: fmt.Errorf("%w; the rollback to %s failed too: %w", rollErr, prev.Image, backErr), Back: *prev}
		moved.Status, moved.Error = backRep.Status, err.Error()
		return moved, err
	}
	moved.Status = StatusRolledBack
	rb := &RolledBackError{Err: rollErr, To: *prev}
	moved.Error = rb.Error()
	return moved, rb
}

// GaveUpError is a deploy that failed on an instance of its new release
// and gave that release up, writing the previous one (Back) back as the
// service's release, without a full rollback: a rollback that failed
// itself, or a blue-green deploy that failed before its switch (its old
// instances kept serving Back). Like a rollback, it quarantines the
// release it gave up.
type GaveUpError struct {
	Err  error
	Back Release
}

func (e *GaveUpError) Error() string { return e.Err.Error() }
func (e *GaveUpError) Unwrap() error { return e.Err }

// RolledBackError is a deploy that failed and was rolled back: every unit
// it moved runs the previous release again.
type RolledBackError struct {
	Err error
	To  Release
}

func (e *RolledBackError) Error() string {
	return fmt.Sprintf("%s; rolled back to %s: every instance it moved runs it again", backUp(e.Err), e.To.Image)
}

// backUp is err's text once the rollback brought its units back: no unit
// error says its unit is down any more.
func backUp(err error) string { return downRe.ReplaceAllString(err.Error(), "") }

// downRe is what a unit error adds for a unit left down (UnitError).
var downRe = regexp.MustCompile(`; \S+ IS DOWN: fleetroll stopped it and could not start it again`)

func (e *RolledBackError) Unwrap() error { return e.Err }

func untouchedUnits(plan *Plan) []UnitReport {
	out := make([]UnitReport, 0, len(plan.Units))
	for _, u := range plan.Units {
		out = append(out, UnitReport{Unit: u.Name, Outcome: OutcomeUntouched})
	}
	return out
}

// blueGreenFailed ends a blue-green deploy. When it failed before the new
// instances took over, the old ones still serve the previous release: it is
// written back as the service's release, so that they start on it again.
func (r *Roller) blueGreenFailed(ctx context.Context, moved *Report, rollErr error, prev *Release, to Release, d Deploy,
	note func(string, ...any)) (*Report, error) {
	if rollErr == nil || prev == nil {
		return moved, rollErr
	}
	for _, u := range moved.Units {
		if u.Outcome == OutcomeLaunched {
			return moved, rollErr // the new instances serve the new release
		}
	}
	back := *prev
	back.Rollout, back.Created = r.opt.RolloutID, r.opt.Clock.Now()
	back.Trigger = Trigger{Source: TriggerRollback}
	if err := d.Releases.Set(context.WithoutCancel(ctx), moved.Service, back, &to); err != nil {
		err = fmt.Errorf("%w; %s could not be written back as the release: %w", rollErr, prev.Image, err)
		moved.Error = err.Error()
		return moved, err
	}
	note("blue-green of %s failed: the old instances kept serving %s, the release again", to.Image, prev.Image)
	moved.Error = fmt.Sprintf("%s; the old instances kept serving %s, the release again", moved.Error, prev.Image)
	// A new instance that failed on the release (not one fleet could not
	// place, nor a cancelled roll) gives the release up.
	var ue *UnitError
	if ctx.Err() == nil && errors.As(rollErr, &ue) && !errors.Is(rollErr, ErrNotPlaced) && !errors.Is(rollErr, ErrTargetChanged) &&
		(ue.Phase == PhaseStart || ue.Phase == PhaseHealth || ue.Phase == PhaseWatch) {
		return moved, &GaveUpError{Err: rollErr, Back: *prev}
	}
	return moved, rollErr
}

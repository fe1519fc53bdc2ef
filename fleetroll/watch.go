package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/coreos/fleet/schema"
)

// ErrCrashed is why a unit failed its watch after the start: fleet showed
// it down, restarting or gone, or its health check was refused or failed
// watchFailures times in a row.
var ErrCrashed = errors.New("instance failed")

// ErrNoProgress is why a roll halted at its progress deadline: no unit got
// through in that time.
var ErrNoProgress = errors.New("no progress")

// ErrNotProbed wraps why a watched unit's health check could not be made
// (fleet's API, asked for the unit's machine, failed): it is skipped, and
// neither counts nor fails the unit.
var ErrNotProbed = errors.New("health check not made")

// watchFailures is how many health checks in a row must fail (other than
// by a refused connection, which fails at once) before a watched unit is
// judged unhealthy.
const watchFailures = 3

// WatchStatus judges a unit's published state during its watch after the
// start, on the machine where it started: ok while it runs there; an
// error, saying what fleet shows, once it is down (a crash: systemd's
// "failed"), stopped, restarting (a unit with Restart= between two runs),
// moved or gone.
func WatchStatus(st *schema.UnitState, machine string) (string, error) {
	switch {
	case st == nil:
		// fleet publishes no state at times (fleet or its agent restarting,
		// its states being republished): by itself no crash. The watch
		// asks whether the unit is still there and launched.
		return "no state published (not judged)", nil
	case machine != "" && st.MachineID != "" && st.MachineID != machine:
		return "", fmt.Errorf("moved from machine %s to %s", shortID(machine), shortID(st.MachineID))
	case st.SystemdActiveState == "active" && st.SystemdSubState == "running":
		return "running (" + DescribeState(st) + ")", nil
	case st.SystemdActiveState == "failed":
		return "", fmt.Errorf("crashed (%s)", DescribeState(st))
	case st.SystemdActiveState == "activating":
		return "", fmt.Errorf("restarting (%s): its process exited", DescribeState(st))
	case st.SystemdActiveState == "inactive" || st.SystemdActiveState == "deactivating":
		return "", fmt.Errorf("stopped (%s)", DescribeState(st))
	}
	return "", fmt.Errorf("not running (%s)", DescribeState(st))
}

// probeVerdict judges one health check of a watched unit, given how many
// checks in a row failed before it: the new count, and an error once the
// unit is judged unhealthy. A refused connection fails at once: the
// instance passed its gate, so nothing listens any more (it exited, or
// systemd is restarting it faster than fleet publishes states).
func probeVerdict(err error, failedBefore int) (int, error) {
	switch {
	case err == nil:
		return 0, nil
	case errors.Is(err, ErrNotProbed):
		return failedBefore, nil
	case refused(err):
		return failedBefore + 1, fmt.Errorf("its health check was refused (%w): it stopped listening, crashed or restarting", err)
	case failedBefore+1 >= watchFailures:
		return failedBefore + 1, fmt.Errorf("unhealthy %d times in a row (last: %w)", failedBefore+1, err)
	}
	return failedBefore + 1, nil
}

// refused tells a refused connection from other failed checks.
func refused(err error) bool {
	var se *os.SyscallError
	var oe *net.OpError
	return errors.Is(err, syscall.ECONNREFUSED) || (errors.As(err, &oe) && errors.As(oe.Err, &se) && errors.Is(se.Err, syscall.ECONNREFUSED))
}

// watchAfterStart keeps a unit that got through its start and health gate
// under watch for MinHealthy: fleet's published state at each poll (or
// wake-up), and the Probe hook when set. A failure in the window fails the
// unit in PhaseWatch, saying how it was seen and how long after its start;
// someone else's change of its target halts the roll as ErrTargetChanged.
// ctx ending stops the watch with ctx's error (the unit is left running).
func (r *Roller) watchAfterStart(ctx context.Context, ur *UnitReport) error {
	if r.opt.MinHealthy <= 0 {
		return nil
	}
	clock := r.opt.Clock
	name := ur.Unit
	began := clock.Now()
	started := began // when fleet first showed it running
	for _, sp := range ur.Phases {
		if sp.Phase == PhaseStart && !sp.Finished.IsZero() {
			started = sp.Finished
		}
	}
	machine := ""
	var wake <-chan struct{}
	if w := r.opt.Hooks.Wake; w != nil {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		wake = w.Watch(wctx, name)
	}
	r.begin(ur, PhaseWatch)
	defer r.end(ur)
	end := began.Add(r.opt.MinHealthy)
	failures := 0
	var last *schema.UnitState
	fail := func(how error) error {
		after := clock.Now().Sub(started).Round(100 * time.Millisecond)
		err := fmt.Errorf("%w: %w, %s after its start", ErrCrashed, how, after)
		switch got, _, terr := r.fleet.TargetState(context.WithoutCancel(ctx), name); {
		case errors.Is(terr, ErrNotFound):
			// Destroyed by someone else: their decision, not a crash.
			err = fmt.Errorf("%w: %s was destroyed during its watch; fleetroll leaves it so", ErrTargetChanged, name)
		case terr == nil && got != "launched":
			err = targetChanged(name, got, "launched")
		}
		return r.failed(ur, PhaseWatch, last, false, err, began.Add(-time.Duration(ur.Total)))
	}
	for {
		st, err := r.fleet.UnitState(ctx, name)
		switch {
		case err == nil || errors.Is(err, ErrNotFound):
			if machine == "" && st != nil {
				machine = st.MachineID
			}
			if st != nil {
				last = st
			}
			msg, werr := WatchStatus(st, machine)
			if werr != nil {
				return fail(werr)
			}
			if st == nil {
				// No state: a unit destroyed or stopped by someone else
				// is theirs (fail says so); a launched one is watched on.
				if got, _, terr := r.fleet.TargetState(ctx, name); errors.Is(terr, ErrNotFound) || (terr == nil && got != "launched") {
					return fail(errors.New("fleet publishes no state for it"))
				}
			}
			r.opt.Logger.Debug("watch", "rollout_id", r.opt.RolloutID, "unit", name, "state", msg)
		case ctx.Err() != nil:
			return ctx.Err()
		default:
			// fleet's API failing is not the unit failing: the next poll
			// asks again.
			r.opt.Logger.Warn("fleet API error during the watch, retrying", "rollout_id", r.opt.RolloutID, "unit", name, "error", err.Error())
		}
		if p := r.opt.Hooks.Probe; p != nil && last != nil {
			var perr error
			if failures, perr = probeVerdict(p(ctx, name, last), failures); perr != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fail(perr)
			}
		}
		left := end.Sub(clock.Now())
		if left <= 0 {
			return nil
		}
		if _, err := r.sleepOrWake(ctx, min(r.opt.PollInterval, left), wake); err != nil {
			return err
		}
	}
}

// progressed starts the roll's progress deadline again: a unit got through
// (or the roll began, or a canary pause ended).
func (r *Roller) progressed() {
	if r.opt.ProgressDeadline <= 0 {
		return
	}
	r.progressMu.Lock()
	r.progressBy = r.opt.Clock.Now().Add(r.opt.ProgressDeadline)
	r.progressMu.Unlock()
}

// progressBound is the earlier of a wait's deadline and the roll's progress
// deadline, and what turns the wait's error into ErrNoProgress when the
// progress deadline is what ended it.
func (r *Roller) progressBound(deadline time.Time) (time.Time, func(error) error) {
	r.progressMu.Lock()
	by := r.progressBy
	r.progressMu.Unlock()
	if by.IsZero() || !by.Before(deadline) {
		return deadline, func(err error) error { return err }
	}
	return by, func(err error) error {
		if err == nil || r.opt.Clock.Now().Before(by) || errors.Is(err, ErrTargetChanged) || errors.Is(err, ErrFenced) {
			return err
		}
		return fmt.Errorf("%w: no unit got through in the progress deadline of %s (%w)", ErrNoProgress, r.opt.ProgressDeadline, err)
	}
}

// StallAfter is how long a stop or start may show fleet's state from
// before the request before fleetroll diagnoses it: fleet's agent acts on
// a write within about 2 s when it sees it (docs/how-it-works.md).
const StallAfter = 3 * time.Second

// Stalled says why a unit's stop or start has shown no progress for
// pending: what fleet holds as its target, what fleet's agent last acted
// on (current, "" when unknown: err), how many units destroyed on its
// machine the agent has yet to unload (Unloading), what fleet publishes,
// and what fleetroll does about it (nudging, or not).
func Stalled(target, desired, current string, unloading int, err error, st *schema.UnitState, pending, nudgeEvery time.Duration) string {
	what := map[string]string{"loaded": "stop", "launched": "start"}[target]
	head := fmt.Sprintf("%s pending for %s, fleet showing %s", what, pending.Round(100*time.Millisecond), DescribeState(st))
	doing := "fleetroll waits; with nudging off, fleet's agent acts at its next reconcile (about 5 s)"
	if nudgeEvery > 0 {
		doing = fmt.Sprintf("fleetroll writes the target again every %s until it does", nudgeEvery)
	}
	switch {
	case err != nil:
		return fmt.Sprintf("%s: fleet's API did not say what its agent did (%v); %s", head, err, doing)
	case desired != target:
		return fmt.Sprintf("%s: fleet holds target %q, not %q: someone else changed it", head, desired, target)
	case current != target && unloading > 0:
		return fmt.Sprintf("%s: fleet's agent has not acted on the write (it last acted on %q): it is busy: %d unit(s) destroyed on its "+
			"machine are not unloaded yet, and fleet v1.0.0's agent unloads them one per reconcile, a second or two each, starting or "+
			"stopping nothing else meanwhile (docs/troubleshooting.md); %s", head, current, unloading, doing)
	case current != target:
		return fmt.Sprintf("%s: fleet's agent has not acted on the write (it last acted on %q): it missed it; %s", head, current, doing)
	}
	return fmt.Sprintf("%s: fleet's agent acted on it (its current state is %q), but fleet has not published systemd's new state yet: "+
		"it publishes a change within about a second, but fleet v1.0.0 can lose one that falls on its periodic republish of every unit "+
		"(every 4/5 of its agent TTL, 24 s at the default 30 s) and shows it only at the next one (docs/how-it-works.md): fleetroll waits", head, current)
}

// Unloading counts the units destroyed on a machine that its fleet agent
// has not unloaded yet: fleet lists no such unit, but still publishes its
// state there (the agent removes it as it unloads the unit). fleet
// v1.0.0's agent unloads them one per reconcile, a second or two each,
// and starts or stops nothing else meanwhile (docs/how-it-works.md).
func Unloading(units []*schema.Unit, states []*schema.UnitState, machine string) int {
	listed := map[string]bool{}
	for _, u := range units {
		if u != nil {
			listed[u.Name] = true
		}
	}
	n := 0
	for _, st := range states {
		if st != nil && st.MachineID == machine && !listed[st.Name] {
			n++
		}
	}
	return n
}

// diagnose records, once per phase, why a unit's stop or start shows no
// progress: in the phase's span of the record and in the log.
func (r *Roller) diagnose(ctx context.Context, n *nudge, st *schema.UnitState, pending time.Duration) {
	ur := n.ur
	sp := len(ur.Phases) - 1
	if sp < 0 || ur.Phases[sp].Diagnosis != "" {
		return
	}
	desired, current, err := r.fleet.TargetState(ctx, ur.Unit)
	unloading := 0
	if err == nil && desired == n.target && current != n.target && st != nil {
		// Is the agent busy with destroyed units? Their states are
		// published until it has unloaded them. The states first: a
		// unit destroyed between the two reads still counts.
		states, serr := r.fleet.UnitStates(ctx)
		units, uerr := r.fleet.Units(ctx)
		if uerr == nil && serr == nil {
			unloading = Unloading(units, states, st.MachineID)
		}
	}
	msg := Stalled(n.target, desired, current, unloading, err, st, pending, r.opt.NudgeInterval)
	ur.Phases[sp].Diagnosis = msg
	r.opt.Logger.Warn("phase stalled: "+msg, "rollout_id", r.opt.RolloutID, "unit", ur.Unit, "phase", string(ur.Phases[sp].Phase))
}

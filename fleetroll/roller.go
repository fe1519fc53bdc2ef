// Package fleetroll restarts the instances of a fleet service one at a time:
// stop, wait until fleet reports it stopped, start, wait until it runs, wait a
// grace period, then the next. It halts on the first failure and never leaves
// a unit it stopped down when it can be started again.
package fleetroll

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/coreos/fleet/schema"
	"google.golang.org/api/googleapi"
)

// Defaults of Options.
const (
	DefaultStopTimeout  = 2 * time.Minute
	DefaultStartTimeout = 5 * time.Minute
	DefaultGrace        = 20 * time.Second
	DefaultPollInterval = 500 * time.Millisecond
	DefaultMaxBackoff   = 5 * time.Second
)

// Options tune a roll. Zero durations take the defaults above, except Grace,
// where zero means no grace period; set UseDefaultGrace to get the default.
type Options struct {
	StopTimeout  time.Duration
	StartTimeout time.Duration
	Grace        time.Duration
	PollInterval time.Duration
	// MaxBackoff caps the wait between retries of failing API calls.
	MaxBackoff time.Duration
	// RolloutID tags events, logs and the report; generated when empty.
	RolloutID string
	// OnEvent, when set, is called synchronously for every progress event.
	OnEvent func(Event)
	// Logger receives one line per event; nil discards.
	Logger *slog.Logger
	// Clock defaults to the real clock.
	Clock Clock
	// Hooks add steps around each unit: drain, health gate, lock checks.
	Hooks Hooks
}

// Hooks add steps around each unit's restart. Nil hooks are skipped.
type Hooks struct {
	// Continue runs before each unit; an error halts the roll before the
	// unit is touched (for example: the cluster lock was lost).
	Continue func() error
	// BeforeStop runs before a unit is stopped (drain); an error halts the
	// roll with the unit left as it is.
	BeforeStop func(ctx context.Context, unit string) error
	// AfterRunning runs once fleet reports the unit running, before the
	// grace period (health gate, announcement back); an error halts the roll
	// like a failed start, with the unit launched.
	AfterRunning func(ctx context.Context, unit string, st *schema.UnitState) error
	// Done runs after each unit that BeforeStop was called for, whatever
	// happened (cleanup such as clearing a drain key).
	Done func(ctx context.Context, unit string)
}

// Validate rejects negative durations.
func (o Options) Validate() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"stop timeout", o.StopTimeout}, {"start timeout", o.StartTimeout}, {"grace", o.Grace}, {"poll interval", o.PollInterval}, {"max backoff", o.MaxBackoff}} {
		if d.v < 0 {
			return fmt.Errorf("%s must not be negative, got %s", d.name, d.v)
		}
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.StopTimeout == 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.PollInterval == 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxBackoff < o.PollInterval {
		o.MaxBackoff = o.PollInterval
	}
	if o.RolloutID == "" {
		o.RolloutID = NewID()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	return o
}

// NewID returns a short random identifier for a rollout.
func NewID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// EventKind says what happened to a unit.
type EventKind string

const (
	EventStopping   EventKind = "stopping"
	EventStopped    EventKind = "stopped"
	EventStarting   EventKind = "starting"
	EventRecovering EventKind = "recovering" // starting a unit whose stop was cut short
	EventRunning    EventKind = "running"
	EventFailed     EventKind = "failed"
)

// Event is one step of a roll. Elapsed is the time the step took: the stop
// for "stopped", the start for "running", the whole unit for "failed".
type Event struct {
	RolloutID string
	Unit      string
	Kind      EventKind
	Elapsed   time.Duration
	State     string
	Err       error
}

// Roller restarts units through a Fleet.
type Roller struct {
	fleet Fleet
	opt   Options
}

// NewRoller validates opt and returns a roller.
func NewRoller(f Fleet, opt Options) (*Roller, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	return &Roller{fleet: f, opt: opt.withDefaults()}, nil
}

// RolloutID returns the ID this roller tags its work with.
func (r *Roller) RolloutID() string { return r.opt.RolloutID }

// Roll restarts the plan's units in order. It returns the report and, when
// the roll did not complete, an error: a *UnitError naming the unit and phase
// it halted on, or the context's error when cancelled between units. Units
// after a failure are untouched. A unit whose stop is interrupted by ctx is
// brought back up (bounded by the start timeout) before Roll returns.
func (r *Roller) Roll(ctx context.Context, plan *Plan) (*Report, error) {
	clock := r.opt.Clock
	rep := &Report{ID: r.opt.RolloutID, Service: plan.Service, Started: clock.Now(), Result: "succeeded"}
	for _, u := range plan.Units {
		rep.Units = append(rep.Units, UnitReport{Unit: u.Name, Outcome: OutcomeUntouched})
	}
	finish := func(err error) (*Report, error) {
		rep.Finished = clock.Now()
		if err != nil {
			rep.Error = err.Error()
			rep.Result = "failed"
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				rep.Result = "interrupted"
			}
		}
		return rep, err
	}
	for i, u := range plan.Units {
		if err := ctx.Err(); err != nil {
			return finish(fmt.Errorf("roll of %s interrupted before %s: %w", plan.Service, u.Name, err))
		}
		if c := r.opt.Hooks.Continue; c != nil {
			if err := c(); err != nil {
				return finish(fmt.Errorf("roll of %s halted before %s: %w", plan.Service, u.Name, err))
			}
		}
		ur, err := r.restart(ctx, u.Name)
		rep.Units[i] = ur
		if err != nil {
			return finish(err)
		}
		if i < len(plan.Units)-1 && r.opt.Grace > 0 {
			if err := r.sleep(ctx, r.opt.Grace); err != nil {
				return finish(fmt.Errorf("roll of %s interrupted in the grace period after %s: %w", plan.Service, u.Name, err))
			}
		}
	}
	return finish(nil)
}

// restart stops one unit, waits for the stop, starts it and waits until it
// runs. Whatever happens after the stop was requested, it tries to leave the
// unit launched and running.
func (r *Roller) restart(ctx context.Context, name string) (UnitReport, error) {
	clock := r.opt.Clock
	ur := UnitReport{Unit: name, Outcome: OutcomeRestarted}
	var last *schema.UnitState

	t0 := clock.Now()
	if h := r.opt.Hooks.BeforeStop; h != nil {
		if done := r.opt.Hooks.Done; done != nil {
			defer done(context.WithoutCancel(ctx), name)
		}
		if err := h(ctx, name); err != nil {
			return r.failed(&ur, PhaseDrain, nil, false, fmt.Errorf("%w; the unit was not touched", err), t0)
		}
	}
	stopDeadline := clock.Now().Add(r.opt.StopTimeout)
	r.emit(Event{Unit: name, Kind: EventStopping})
	stopErr := r.until(ctx, stopDeadline, r.opt.StopTimeout, func(ctx context.Context) (bool, error) {
		return true, r.fleet.SetUnitTargetState(ctx, name, "loaded")
	})
	// interrupted is set when ctx ends after fleet accepted the stop.
	var interrupted error
	if stopErr == nil {
		stopErr = r.waitState(ctx, name, stopDeadline, r.opt.StopTimeout, StoppedStatus, &last)
		if stopErr != nil && ctx.Err() != nil {
			// The stop is under way. fleet's states lag systemd's, so a
			// start requested now could be judged on the "running" state
			// published before the stop. Observe the stop first.
			interrupted = stopErr
			stopErr = r.waitState(context.WithoutCancel(ctx), name, stopDeadline, r.opt.StopTimeout, StoppedStatus, &last)
		}
	}
	ur.Stop = Seconds(clock.Now().Sub(t0))
	if stopErr != nil && errors.Is(stopErr, ErrNotFound) {
		// fleet no longer knows the unit: there is nothing to bring back.
		return r.failed(&ur, PhaseStop, last, false, stopErr, t0)
	}
	if stopErr == nil {
		r.emit(Event{Unit: name, Kind: EventStopped, Elapsed: time.Duration(ur.Stop), State: DescribeState(last)})
	}

	// The machine it ran on: fleet may start it elsewhere, when that
	// machine is lost meanwhile.
	was := ""
	if last != nil {
		was = last.MachineID
	}
	// Start, or bring back a unit whose stop failed or was interrupted. This
	// runs to its own deadline even when ctx is cancelled: a signal must not
	// leave the unit down.
	t1 := clock.Now()
	kind, why := EventStarting, stopErr
	if why == nil {
		why = interrupted
	}
	if why != nil {
		kind = EventRecovering
	}
	r.emit(Event{Unit: name, Kind: kind, State: DescribeState(last), Err: why})
	startCtx := context.WithoutCancel(ctx)
	startErr := r.until(startCtx, t1.Add(r.opt.StartTimeout), r.opt.StartTimeout, func(ctx context.Context) (bool, error) {
		return true, r.fleet.SetUnitTargetState(ctx, name, "launched")
	})
	if startErr == nil {
		startErr = r.waitState(startCtx, name, t1.Add(r.opt.StartTimeout), r.opt.StartTimeout, runningAfter(last), &last)
	}
	ur.Start = Seconds(clock.Now().Sub(t1))
	ur.Total = Seconds(clock.Now().Sub(t0))
	if startErr == nil && last != nil {
		ur.Machine = shortID(last.MachineID)
		if was != "" && last.MachineID != was {
			ur.MovedFrom = shortID(was)
		}
	}

	if startErr != nil && last == nil && was != "" && r.machineGone(startCtx, was) {
		startErr = fmt.Errorf("%w; its machine %s left the cluster and no other machine has taken it (it stays launched: fleet starts it once a machine can)", startErr, shortID(was))
	}
	switch {
	case startErr != nil && stopErr != nil:
		return r.failed(&ur, PhaseStop, last, true, fmt.Errorf("%w; bringing it back up: %w", stopErr, startErr), t0)
	case startErr != nil:
		return r.failed(&ur, PhaseStart, last, true, startErr, t0)
	case stopErr != nil:
		// Back up and running, but the restart did not happen as asked.
		return r.failed(&ur, PhaseStop, last, false, fmt.Errorf("%w; the unit was brought back up", stopErr), t0)
	case interrupted != nil:
		// Restarted, but the roll stops here.
		return r.failed(&ur, PhaseStop, last, false, fmt.Errorf("%w; the stop had begun, so the unit was restarted", interrupted), t0)
	}
	running := DescribeState(last)
	if ur.MovedFrom != "" {
		running += ", moved from " + ur.MovedFrom
	}
	r.emit(Event{Unit: name, Kind: EventRunning, Elapsed: time.Duration(ur.Start), State: running})
	if h := r.opt.Hooks.AfterRunning; h != nil {
		if err := h(ctx, name, last); err != nil {
			return r.failed(&ur, PhaseHealth, last, false, err, t0)
		}
		ur.Total = Seconds(clock.Now().Sub(t0))
	}
	return ur, nil
}

// machineGone reports whether fleet no longer lists the machine, when the
// fleet can list machines (and answers).
func (r *Roller) machineGone(ctx context.Context, id string) bool {
	ml, ok := r.fleet.(MachineLister)
	if !ok {
		return false
	}
	ips, err := ml.MachineIPs(ctx)
	if err != nil {
		return false
	}
	_, listed := ips[id]
	return !listed
}

// failed fills in a unit's report for a halt and returns the *UnitError.
func (r *Roller) failed(ur *UnitReport, phase Phase, last *schema.UnitState, leftStopped bool, err error, t0 time.Time) (UnitReport, error) {
	ur.Outcome = OutcomeFailed
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		ur.Outcome = OutcomeInterrupted
	}
	ur.Phase = phase
	ur.LastState = DescribeState(last)
	ur.LeftStopped = leftStopped
	ur.Total = Seconds(r.opt.Clock.Now().Sub(t0))
	uerr := &UnitError{Unit: ur.Unit, Phase: phase, LastState: ur.LastState, LeftStopped: leftStopped, Err: err}
	ur.Error = uerr.Error()
	r.emit(Event{Unit: ur.Unit, Kind: EventFailed, Elapsed: time.Duration(ur.Total), State: ur.LastState, Err: uerr})
	return *ur, uerr
}

// runningAfter judges the start phase. A "failed" state left over from the
// stop is not taken for a failed start until fleet has reported another state.
func runningAfter(stopped *schema.UnitState) func(*schema.UnitState) (string, bool, error) {
	stale := stopped != nil && stopped.SystemdActiveState == "failed"
	return func(st *schema.UnitState) (string, bool, error) {
		if stale {
			if st != nil && st.SystemdActiveState == "failed" {
				return "waiting for start (" + DescribeState(st) + ", left from the stop)", false, nil
			}
			stale = false
		}
		return RunningStatus(st)
	}
}

// waitState polls a unit's state until judge says done or fails, or the
// deadline passes. The last state seen is stored in *last.
func (r *Roller) waitState(ctx context.Context, name string, deadline time.Time, timeout time.Duration,
	judge func(*schema.UnitState) (string, bool, error), last **schema.UnitState) error {
	return r.until(ctx, deadline, timeout, func(ctx context.Context) (bool, error) {
		st, err := r.fleet.UnitState(ctx, name)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return false, err
		}
		*last = st
		msg, done, jerr := judge(st)
		r.opt.Logger.Debug("poll", "rollout_id", r.opt.RolloutID, "unit", name, "state", msg)
		return done, jerr
	})
}

// until calls fn until it reports done, returns an error that is not
// transient, or the deadline passes. Transient errors are retried with
// exponential backoff capped at MaxBackoff; a call that succeeds resets the
// wait to the poll interval. Waits end early when ctx is done.
func (r *Roller) until(ctx context.Context, deadline time.Time, timeout time.Duration, fn func(context.Context) (bool, error)) error {
	clock := r.opt.Clock
	wait := r.opt.PollInterval
	var lastErr error
	for {
		done, err := fn(ctx)
		switch {
		case err == nil && done:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil:
			wait, lastErr = r.opt.PollInterval, nil
		case !IsTransient(err):
			return err
		default:
			lastErr = err
			r.opt.Logger.Warn("fleet API error, retrying", "rollout_id", r.opt.RolloutID, "error", err, "retry_in", wait)
		}
		left := deadline.Sub(clock.Now())
		if left <= 0 {
			if lastErr != nil {
				return fmt.Errorf("timed out after %s; last error: %w", timeout, lastErr)
			}
			return fmt.Errorf("timed out after %s", timeout)
		}
		if err := r.sleep(ctx, min(wait, left)); err != nil {
			return err
		}
		if lastErr != nil {
			wait = min(2*wait, r.opt.MaxBackoff)
		}
	}
}

// sleep waits d or until ctx is done.
func (r *Roller) sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-r.opt.Clock.After(d):
		return nil
	}
}

func (r *Roller) emit(ev Event) {
	ev.RolloutID = r.opt.RolloutID
	attrs := []any{"rollout_id", ev.RolloutID, "unit", ev.Unit, "event", string(ev.Kind)}
	if ev.Elapsed > 0 {
		attrs = append(attrs, "elapsed", ev.Elapsed.Round(time.Millisecond).String())
	}
	if ev.State != "" {
		attrs = append(attrs, "state", ev.State)
	}
	level := slog.LevelInfo
	if ev.Err != nil {
		attrs = append(attrs, "error", ev.Err.Error())
		level = slog.LevelWarn
	}
	if ev.Kind == EventFailed {
		level = slog.LevelError
	}
	r.opt.Logger.Log(context.Background(), level, "unit "+string(ev.Kind), attrs...)
	if r.opt.OnEvent != nil {
		r.opt.OnEvent(ev)
	}
}

// IsTransient reports whether a fleet API error is worth retrying:
// connection failures, timeouts and 5xx or 429 answers. A missing unit is not.
func IsTransient(err error) bool {
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, context.Canceled) {
		return false
	}
	var gerr *googleapi.Error
	if errors.As(err, &gerr) {
		return gerr.Code >= 500 || gerr.Code == http.StatusTooManyRequests
	}
	var nerr net.Error
	return errors.As(err, &nerr) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF)
}

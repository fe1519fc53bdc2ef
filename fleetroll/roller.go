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
	"sync"
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
	// DefaultNudgeInterval is the slowest rate that kept every stop and
	// start at or under 3 s on one and on three machines; 1 s left a
	// quarter of them at about 3 s (docs/benchmarks.md#nudging).
	DefaultNudgeInterval = 500 * time.Millisecond
)

// Options tune a roll. Zero durations take the defaults above, except Grace,
// where zero means no grace period (DefaultGrace is the flags' default).
type Options struct {
	StopTimeout  time.Duration
	StartTimeout time.Duration
	Grace        time.Duration
	PollInterval time.Duration
	// MaxBackoff caps the wait between retries of failing API calls.
	MaxBackoff time.Duration
	// NudgeInterval, when positive, re-asserts a unit's target state at
	// this rate while fleet has not acted on it yet (docs/how-it-works.md:
	// fleet's agent misses writes that land in a blind second). Each nudge
	// re-reads the target first; one that someone else changed halts the
	// roll. 0 turns nudging off.
	NudgeInterval time.Duration
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
	// MinHealthy, when positive, keeps each unit under watch for that long
	// once it is running and through its health gate, the last unit
	// included: fleet's state at each poll, and Hooks.Probe when set. A
	// unit that fails in the window fails the roll there, before another
	// unit is touched. It runs alongside the grace period: a unit's slot
	// is held for the longer of the two.
	MinHealthy time.Duration
	// ProgressDeadline, when positive, bounds how long a roll may go
	// without a unit getting through (its stop, start, health gate and
	// watch): past it, the wait for fleet in progress (a stop's, or a
	// start's but one that brings a unit back) ends with ErrNoProgress,
	// naming the unit and phase, and a deploy with OnFailureRollback rolls
	// back. Each unit that gets through starts it again; a canary pause
	// does not count against it. The health gate keeps its own timeout.
	ProgressDeadline time.Duration
	// MaxUnavailable is how many units may be down at once (drained,
	// stopped, starting, health-gated, in their grace period), counting
	// those already down when the roll begins; the zero value: one at a
	// time.
	MaxUnavailable Unavailable
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
	// Probe, when set, checks a unit once during its watch after the
	// start (its health check): nil when it answers well; an error
	// wrapping ErrNotProbed when the check could not be made (skipped).
	Probe func(ctx context.Context, unit string, st *schema.UnitState) error
	// Done runs after each unit that BeforeStop was called for, whatever
	// happened (cleanup such as clearing a drain key).
	Done func(ctx context.Context, unit string)
	// Intent records, before the unit enters a phase, that it is in flight
	// in that phase ("" once it is back and healthy), so that another
	// fleetroll can restore it if this one dies. An error before the drain
	// or the stop halts the roll with the unit untouched; later ones are
	// logged (the unit is brought back regardless).
	Intent func(ctx context.Context, unit string, phase Phase) error
	// Fence is asked before every write to fleet (stop, start, nudge); an
	// error (the lock's lease could have expired) means another fleetroll
	// may act on the service: no write is made and the roll halts.
	Fence func() error
	// Wake, when set, wakes the waits for a unit's state the moment fleet
	// publishes a new one (etcd watches), instead of at the next poll.
	Wake Waker
	// Republish, when set, tells when fleet's agent next republishes every
	// unit's state: a stop or start is held back rather than written where
	// its change would meet that republish (republishHold).
	Republish Republish
	// Hearing, when set, tells when fleet's agents listen for a write: a
	// stop or start is held back rather than written where its agent
	// cannot hear it (fleet v1.0.0's agents are deaf for a second after
	// each change of their jobs).
	Hearing Hearing
	// Canary, when set, pauses the roll once its first N units have been
	// restarted, until a decision (docs/strategies.md).
	Canary *Canary
	// BlueGreen, when set, replaces the units with new ones on spare
	// instances instead of restarting them (docs/strategies.md).
	BlueGreen *BlueGreen
}

// Republish tells when fleet's agent on the machine of a unit republishes
// the states of all its units. fleet v1.0.0 can lose a unit's change that
// its generator sees in the same tick as that republish: the state from
// before the change lands last, and fleet shows it until the next
// republish, some 24 s later. And the agent's job heartbeat on the same
// tick blinds it for a second to the writes that follow
// (docs/how-it-works.md).
type Republish interface {
	// Next returns the republish on the unit's machine that comes next,
	// or the one that passed within the last 2 s; false when it cannot
	// tell.
	Next(ctx context.Context, unit string) (time.Time, bool)
}

// Hearing tells when fleet's agents hear a write of a unit's target state.
// fleet v1.0.0's agents watch their jobs in etcd; after each change there
// an agent sleeps a second before it watches again, from the present. When
// the change was a target (or target-state) written, it then reconciles,
// reading every unit's target, so a target written in that second is acted
// on at its end; after any other change (its own act, a heartbeat) a write
// in that second is never seen: it waits for a nudge or for the agent's
// 5 s tick (docs/how-it-works.md).
type Hearing interface {
	// Deaf returns until when fleet's agents are deaf to the unit's
	// writes (a time not after now, or zero, when they listen now or it
	// cannot tell), and whether a write made before then is acted on
	// then.
	Deaf(unit string) (until time.Time, reconcile bool)
}

// hearingMargin is how long after the agents' deaf second a held write is
// made: fleet's agent watches again once its second is over and its
// reconciler has taken the trigger (a few milliseconds). reconcileGuard:
// a write within it of the reconcile that ends a second might miss that
// reconcile's read, and the act that follows opens a second that hears
// nothing; it waits for that second instead.
const (
	hearingMargin  = 15 * time.Millisecond
	reconcileGuard = 50 * time.Millisecond
)

// hearingHold is how long to hold a write at now for fleet's agents, deaf
// until until, to act on it (0: write now): one they will act on when
// their second ends (reconcile) need not wait.
func hearingHold(now, until time.Time, reconcile bool) time.Duration {
	left := until.Sub(now)
	switch {
	case left <= 0:
		return 0
	case reconcile && left > reconcileGuard:
		return 0
	}
	return left + hearingMargin
}

// The windows around fleet's republish where a write costs. Its agent
// acts on a write it hears 1 s after it (and a few milliseconds), and its
// generator sees systemd's change at its next 1 s tick, so an agent that
// acts in the second before the republish meets it. A write it hears
// (Hooks.Hearing says when it listens) from heardLate to heardEarly before
// the republish is held until heardLate before it, where the agent acts
// just after the republish. Without Hearing a write may also be missed
// and nudged 0.5 s later: one from republishLate to republishEarly before
// it is held until republishAhead before it; and one in the republish's
// second (republishBlind after it), where the agents are deaf after the
// heartbeat that comes with the republish, is held until that second is
// over (with Hearing, the heartbeat is seen like any other change).
const (
	heardLate      = 900 * time.Millisecond
	heardEarly     = 2150 * time.Millisecond
	republishLate  = 800 * time.Millisecond
	republishEarly = 2300 * time.Millisecond
	republishAhead = 700 * time.Millisecond
	republishBlind = 1100 * time.Millisecond
)

// republishHold is how long to hold a write at now, with fleet's republish
// at at (the next, or one just passed), so that the change it asks for
// does not meet that republish, nor, unheard is true (fleetroll does not
// know when the agents listen), waits out the agents' deaf second after it
// (0: write now).
func republishHold(now, at time.Time, unheard bool) time.Duration {
	d := at.Sub(now)
	switch {
	case !unheard && d >= heardLate && d <= heardEarly:
		return d - heardLate
	case !unheard:
	case d >= republishLate && d <= republishEarly:
		return d - republishAhead
	case d <= 0 && d > -republishBlind:
		return d + republishBlind
	}
	return 0
}

// holdForFleet waits, before a unit's stop or start is written, until
// fleet's agent can hear the write (Hooks.Hearing) and would act on it
// clear of its machine's periodic republish (Hooks.Republish). Each hold
// is one that the other may move, so the two are asked again after it, a
// few times at most. It reports whether ctx ended during a hold (a start
// is then written at once).
func (r *Roller) holdForFleet(ctx context.Context, ur *UnitReport, phase Phase) (cancelled bool) {
	var next time.Time
	known := false
	if rp := r.opt.Hooks.Republish; rp != nil {
		next, known = rp.Next(ctx, ur.Unit)
		if known {
			r.opt.Logger.Debug("fleet's next republish", "rollout_id", r.opt.RolloutID, "unit", ur.Unit, "in", next.Sub(r.opt.Clock.Now()).Round(time.Millisecond))
		} else {
			r.opt.Logger.Debug("fleet's next republish unknown", "rollout_id", r.opt.RolloutID, "unit", ur.Unit)
		}
	}
	h := r.opt.Hooks.Hearing
	for range 4 {
		now := r.opt.Clock.Now()
		var hold time.Duration
		level, msg := slog.LevelInfo, "holding the write until fleet's periodic republish has passed"
		if known {
			hold = republishHold(now, next, h == nil)
		}
		if hold <= 0 && h != nil {
			until, reconcile := h.Deaf(ur.Unit)
			// At most the agents' second: a tracker that says more is wrong.
			hold = min(hearingHold(now, until, reconcile), time.Second+hearingMargin)
			level, msg = slog.LevelDebug, "holding the write until fleet's agents listen"
		}
		if hold <= 0 {
			return false
		}
		r.opt.Logger.Log(ctx, level, msg, "rollout_id", r.opt.RolloutID, "unit", ur.Unit, "phase", phase, "hold", hold.Round(time.Millisecond))
		if r.hold(ctx, hold) {
			return true
		}
	}
	return false
}

// hold waits d before a write; true when ctx ended meanwhile.
func (r *Roller) hold(ctx context.Context, d time.Duration) (cancelled bool) {
	_, err := r.sleepOrWake(ctx, d, nil)
	return err != nil
}

// Waker tells the roller when fleet may have published a new state of a
// unit. A wake-up only brings the next poll forward: the poll stays the
// check, and polling at the poll interval stays the fallback when the
// wake-ups stop (etcd lost).
type Waker interface {
	// Watch sends on the returned channel, without blocking and merging
	// what the reader has not taken yet, after each change of the unit's
	// published state, until ctx ends.
	Watch(ctx context.Context, unit string) <-chan struct{}
}

// Validate rejects negative durations.
func (o Options) Validate() error {
	if err := o.MaxUnavailable.Validate(); err != nil {
		return err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"stop timeout", o.StopTimeout}, {"start timeout", o.StartTimeout}, {"grace", o.Grace}, {"poll interval", o.PollInterval}, {"max backoff", o.MaxBackoff}, {"nudge interval", o.NudgeInterval},
		{"min healthy time", o.MinHealthy}, {"progress deadline", o.ProgressDeadline}} {
		if d.v < 0 {
			return fmt.Errorf("%s must not be negative, got %s", d.name, d.v)
		}
	}
	return nil
}

func (o Options) withDefaults() Options {
	orDefault(&o.StopTimeout, DefaultStopTimeout)
	orDefault(&o.StartTimeout, DefaultStartTimeout)
	orDefault(&o.PollInterval, DefaultPollInterval)
	orDefault(&o.MaxBackoff, DefaultMaxBackoff)
	if o.MaxBackoff < o.PollInterval {
		o.MaxBackoff = o.PollInterval
	}
	orDefault(&o.RolloutID, NewID())
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = SystemClock{}
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
	EventHealthy    EventKind = "healthy" // the health and drain hooks passed
	EventFailed     EventKind = "failed"
	// Events of the whole rollout (Unit is empty): the canary pause began,
	// and it ended (Canary says how).
	EventPaused  EventKind = "paused"
	EventDecided EventKind = "decided"
	// EventPhase: a unit entered the drain, health or grace phase (the
	// stop and the start have events of their own).
	EventPhase EventKind = "phase"
)

// Event is one step of a roll. Elapsed is the time the step took: the stop
// for "stopped", the start for "running", the whole unit for "healthy" and
// "failed". Progress is the unit's record as it stands after the step.
type Event struct {
	RolloutID string
	Unit      string
	Kind      EventKind
	Phase     Phase
	Elapsed   time.Duration
	State     string
	Err       error
	Progress  UnitReport
	// Canary and Status are set on the rollout's own events.
	Canary *CanaryReport
	Status Status
}

// Roller restarts units through a Fleet.
type Roller struct {
	fleet Fleet
	opt   Options
	// digest is the release the units start with (Deploy sets it).
	digest string
	// states serves the polls of a batch from one listing (nil: one
	// request per unit).
	states *stateReader
	// emitMu makes OnEvent see one event at a time when units move at
	// once (batches, blue-green).
	emitMu sync.Mutex
	// progressBy is when the progress deadline ends the roll's waits (zero:
	// no deadline); progressed moves it on.
	progressMu sync.Mutex
	progressBy time.Time
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

// Roll restarts the plan's units in order. It returns the rollout's record
// and, when the roll did not complete, an error: a *UnitError naming the unit
// and phase it halted on, or the context's error when cancelled between
// units. Units after a failure are untouched. A unit whose stop is
// interrupted by ctx is brought back up (bounded by the start timeout)
// before Roll returns.
func (r *Roller) Roll(ctx context.Context, plan *Plan) (*Report, error) {
	if b := r.opt.Hooks.BlueGreen; b != nil {
		return r.blueGreen(ctx, plan, b)
	}
	clock := r.opt.Clock
	rep := &Report{Version: SchemaVersion, ID: r.opt.RolloutID, Service: plan.Service, Status: StatusRunning,
		Started: clock.Now(), Units: []UnitReport{}}
	for _, u := range plan.Units {
		rep.Units = append(rep.Units, UnitReport{Unit: u.Name, Outcome: OutcomePending})
	}
	finish := func(err error) (*Report, error) {
		rep.Finished = clock.Now()
		for i := range rep.Units {
			if rep.Units[i].Outcome == OutcomePending {
				rep.Units[i].Outcome = OutcomeUntouched
			}
		}
		rep.Status = StatusSucceeded
		if err != nil {
			rep.Error = err.Error()
			rep.Status = statusOf(err)
			var ue *UnitError
			if errors.As(err, &ue) {
				rep.Phase = ue.Phase
			}
		}
		return rep, err
	}
	// Up to MaxUnavailable units at once, in the plan's order (units
	// already down come first, so they are the first in flight). After a
	// failure no unit starts; those in flight finish, and the first error
	// is the roll's.
	slots := r.opt.MaxUnavailable.Of(len(plan.Units))
	r.progressed()
	r.states = nil
	if slots > 1 {
		r.states = &stateReader{fleet: r.fleet}
	}
	done := make(chan error)
	inFlight, next := 0, 0
	// The canaries first; the pause once they are all back.
	limit := r.canaries(len(plan.Units))
	var first error
	for {
		if first == nil && inFlight == 0 && next == limit && limit < len(plan.Units) {
			if first = r.pause(ctx, rep, limit); first == nil {
				limit = len(plan.Units)
			}
			r.progressed() // a pause waits for a person, not for fleet
		}
		for first == nil && next < limit && inFlight < slots {
			u := plan.Units[next]
			if err := ctx.Err(); err != nil {
				first = fmt.Errorf("roll of %s interrupted before %s: %w", plan.Service, u.Name, err)
				break
			}
			if c := r.opt.Hooks.Continue; c != nil {
				if err := c(); err != nil {
					first = fmt.Errorf("roll of %s halted before %s: %w", plan.Service, u.Name, err)
					break
				}
			}
			ur, last := &rep.Units[next], next == len(plan.Units)-1
			next++
			inFlight++
			go func() { done <- r.rollOne(ctx, plan.Service, ur, last) }()
		}
		if inFlight == 0 {
			return finish(first)
		}
		if err := <-done; err != nil && first == nil {
			first = err
		}
		inFlight--
	}
}

// rollOne restarts one unit, watches it for the minimum healthy time, and
// holds its slot for the grace period (but after the plan's last unit),
// the watch and the grace running side by side: the slot is held for the
// longer of the two.
func (r *Roller) rollOne(ctx context.Context, service string, ur *UnitReport, last bool) error {
	if err := r.restart(ctx, ur); err != nil {
		return err
	}
	t0 := r.opt.Clock.Now()
	if err := r.watchAfterStart(ctx, ur); err != nil {
		if errors.As(err, new(*UnitError)) {
			return err
		}
		return fmt.Errorf("roll of %s interrupted in the watch after %s's start: %w", service, ur.Unit, err)
	}
	r.progressed()
	grace := r.opt.Grace - r.opt.Clock.Now().Sub(t0)
	if last || grace <= 0 {
		return nil
	}
	r.begin(ur, PhaseGrace)
	err := r.sleep(ctx, grace)
	r.end(ur)
	ur.Phase = ""
	if err != nil {
		return fmt.Errorf("roll of %s interrupted in the grace period after %s: %w", service, ur.Unit, err)
	}
	return nil
}

// begin records that a unit entered a phase.
func (r *Roller) begin(ur *UnitReport, p Phase) {
	ur.Phase = p
	ur.Phases = append(ur.Phases, Span{Phase: p, Started: r.opt.Clock.Now()})
	if p == PhaseDrain || p == PhaseHealth || p == PhaseWatch || p == PhaseGrace {
		r.emit(ur, Event{Kind: EventPhase})
	}
}

// end records that the unit's current phase ended.
func (r *Roller) end(ur *UnitReport) {
	if n := len(ur.Phases); n > 0 && ur.Phases[n-1].Finished.IsZero() {
		ur.Phases[n-1].Finished = r.opt.Clock.Now()
	}
}

// stopResult is what the stop step saw.
type stopResult struct {
	// err: the stop failed (fleet refused it, or it timed out).
	err error
	// interrupted: ctx ended after fleet accepted the stop; the stop was
	// still observed, so the unit can be started again safely.
	interrupted error
}

// verdict judges a unit's restart from its stop and its start (nil when it
// succeeded): the phase it failed in, whether fleetroll left it stopped, and
// the error to report. A nil error means the unit was restarted.
func verdict(stop stopResult, start error) (Phase, bool, error) {
	switch {
	case errors.Is(start, ErrTargetChanged):
		// Someone else set another target during the start: not ours to
		// bring back.
		return PhaseStart, false, start
	case start != nil && stop.err != nil:
		return PhaseStop, true, fmt.Errorf("%w; bringing it back up: %w", stop.err, start)
	case start != nil:
		return PhaseStart, true, start
	case stop.err != nil:
		// Back up and running, but the restart did not happen as asked.
		return PhaseStop, false, fmt.Errorf("%w; the unit was brought back up", stop.err)
	case stop.interrupted != nil:
		// Restarted, but the roll stops here.
		return PhaseStop, false, fmt.Errorf("%w; the stop had begun, so the unit was restarted", stop.interrupted)
	}
	return "", false, nil
}

// restart drains a unit (when a hook does), stops it, starts it and gates it
// (when a hook does), filling in ur as it goes. Whatever happens after the
// stop was requested, it tries to leave the unit launched and running.
func (r *Roller) restart(ctx context.Context, ur *UnitReport) error {
	clock := r.opt.Clock
	name := ur.Unit
	ur.Outcome = OutcomeInProgress
	t0 := clock.Now()
	first := PhaseStop
	if r.opt.Hooks.BeforeStop != nil {
		first = PhaseDrain
	}
	if in := r.opt.Hooks.Intent; in != nil {
		if err := in(ctx, name, first); err != nil {
			return r.failed(ur, first, nil, false, fmt.Errorf("record the intent: %w; the unit was not touched", err), t0)
		}
	}
	if h := r.opt.Hooks.BeforeStop; h != nil {
		if done := r.opt.Hooks.Done; done != nil {
			defer done(context.WithoutCancel(ctx), name)
		}
		r.begin(ur, PhaseDrain)
		err := h(ctx, name)
		r.end(ur)
		if err != nil {
			return r.failed(ur, PhaseDrain, nil, false, fmt.Errorf("%w; the unit was not touched", err), t0)
		}
		if in := r.opt.Hooks.Intent; in != nil {
			if err := in(ctx, name, PhaseStop); err != nil {
				return r.failed(ur, PhaseStop, nil, false, fmt.Errorf("record the intent: %w; the unit was not stopped", err), t0)
			}
		}
	}

	if r.holdForFleet(ctx, ur, PhaseStop) {
		// Cancelled while held: the stop was never written.
		return r.failed(ur, PhaseStop, nil, false, fmt.Errorf("%w; the unit was not stopped", ctx.Err()), t0)
	}
	stop, last := r.stop(ctx, ur)
	switch {
	case errors.Is(stop.err, ErrNotFound):
		// fleet no longer knows the unit: there is nothing to bring back.
		return r.failed(ur, PhaseStop, last, false, stop.err, t0)
	case errors.Is(stop.err, ErrTargetChanged):
		// Someone else decided what the unit should be: leave it so.
		return r.failed(ur, PhaseStop, last, false, stop.err, t0)
	case errors.Is(stop.err, ErrFenced):
		// The stop was never requested, and no more writes may be made.
		return r.failed(ur, PhaseStop, last, false, fmt.Errorf("%w; the unit was not stopped", stop.err), t0)
	}
	was := ""
	if last != nil {
		was = last.MachineID
	}
	if stop.err == nil {
		r.holdForFleet(ctx, ur, PhaseStart)
	}
	last, startErr := r.start(ctx, ur, stop, last)
	ur.Total = Seconds(clock.Now().Sub(t0))
	if phase, leftStopped, err := verdict(stop, startErr); err != nil {
		return r.failed(ur, phase, last, leftStopped, err, t0)
	}
	ur.Machine = shortID(last.MachineID)
	if was != "" && last.MachineID != was {
		ur.MovedFrom = shortID(was)
	}
	running := DescribeState(last)
	if ur.MovedFrom != "" {
		running += ", moved from " + ur.MovedFrom
	}
	if h := r.opt.Hooks.AfterRunning; h != nil {
		r.emit(ur, Event{Kind: EventRunning, Elapsed: time.Duration(ur.Start), State: running})
		r.intent(ctx, name, PhaseHealth)
		if err := r.gate(ctx, ur, h, last); err != nil {
			return r.failed(ur, PhaseHealth, last, false, err, t0)
		}
		ur.Total = Seconds(clock.Now().Sub(t0))
		ur.Outcome, ur.Phase = OutcomeRestarted, ""
		r.intent(ctx, name, "")
		r.emit(ur, Event{Kind: EventHealthy, Elapsed: time.Duration(ur.Total), State: running})
		return nil
	}
	ur.Outcome, ur.Phase = OutcomeRestarted, ""
	r.intent(ctx, name, "")
	r.emit(ur, Event{Kind: EventRunning, Elapsed: time.Duration(ur.Start), State: running})
	return nil
}

// gate runs the AfterRunning hook h as the unit's health phase.
func (r *Roller) gate(ctx context.Context, ur *UnitReport, h func(context.Context, string, *schema.UnitState) error, last *schema.UnitState) error {
	r.begin(ur, PhaseHealth)
	err := h(ctx, ur.Unit, last)
	r.end(ur)
	return err
}

// intent records a phase the unit is in for the Intent hook, best effort:
// the unit is brought back whether or not the record could be written.
func (r *Roller) intent(ctx context.Context, unit string, p Phase) {
	if in := r.opt.Hooks.Intent; in != nil {
		if err := in(context.WithoutCancel(ctx), unit, p); err != nil {
			r.opt.Logger.Warn("intent not recorded", "rollout_id", r.opt.RolloutID, "unit", unit, "phase", string(p), "error", err.Error())
		}
	}
}

// fenced reports why fleetroll must not write to fleet now (the Fence
// hook), or nil.
func (r *Roller) fenced() error {
	if f := r.opt.Hooks.Fence; f != nil {
		if err := f(); err != nil {
			return fmt.Errorf("%w: %w", ErrFenced, err)
		}
	}
	return nil
}

// ErrFenced is why a roll stopped writing to fleet: its lock's lease could
// have expired, so another fleetroll may act on the service.
var ErrFenced = errors.New("not acting on fleet any more")

// stop asks fleet to stop the unit and waits until it reports it stopped.
// When ctx ends after fleet accepted the stop, it still observes the stop
// (within the stop timeout): fleet's states lag systemd's, so a start
// requested now could be judged on the "running" state published before
// the stop.
func (r *Roller) stop(ctx context.Context, ur *UnitReport) (stopResult, *schema.UnitState) {
	clock := r.opt.Clock
	name := ur.Unit
	var last *schema.UnitState
	var res stopResult
	t0 := clock.Now()
	deadline := t0.Add(r.opt.StopTimeout)
	r.begin(ur, PhaseStop)
	r.emit(ur, Event{Kind: EventStopping})
	res.err = r.until(ctx, deadline, r.opt.StopTimeout, func(ctx context.Context) (bool, error) {
		// Not abandoned half-way when ctx ends: a request fleet may still
		// act on after fleetroll gave up would leave the unit stopped with
		// nobody to start it. It is bounded by the request timeout.
		err := r.setTarget(context.WithoutCancel(ctx), name, "loaded")
		return err == nil, err
	})
	if res.err != nil && ctx.Err() != nil && r.targetIs(context.WithoutCancel(ctx), name, "loaded") {
		// Cancelled while the stop request was in flight, and it reached
		// fleet: the stop is under way, so observe it like any other.
		res.err = nil
	}
	// polls counts the stop's polls: a unit stopped at the first poll may
	// have been down before the stop (see agentStopped).
	polls := 0
	stopped := func(st *schema.UnitState) (string, bool, error) {
		polls++
		return StoppedStatus(st)
	}
	if res.err == nil {
		by, late := r.progressBound(deadline)
		res.err = late(r.waitState(ctx, name, by, r.opt.StopTimeout, stopped, &last, stopNudge.of(ur)))
		if res.err != nil && ctx.Err() != nil {
			res.interrupted = res.err
			res.err = r.waitState(context.WithoutCancel(ctx), name, deadline, r.opt.StopTimeout, stopped, &last, stopNudge.of(ur))
		}
	}
	if res.err == nil && polls == 1 {
		res.err = r.agentStopped(context.WithoutCancel(ctx), name, deadline)
	}
	r.end(ur)
	ur.Stop = Seconds(clock.Now().Sub(t0))
	ur.LastState = DescribeState(last)
	if res.err == nil {
		r.emit(ur, Event{Kind: EventStopped, Elapsed: time.Duration(ur.Stop), State: DescribeState(last)})
	}
	return res, last
}

// agentStopped waits until fleet's agent has acted on the stop of a unit
// whose state showed it stopped at once, as one that was down before (failed,
// or stopped outside fleet) does. fleet's agent compares a target with what
// it last did, not with what systemd reports: a start written before it acted
// on the stop finds it still holding the unit launched, and fleet never
// starts the unit again. The unit's published state does not change when the
// agent stops it, so the sign is fleet's currentState: "launched" while the
// agent heartbeats the unit, and not once it has stopped it (it clears the
// heartbeat). A unit with no heartbeat from the first look (the agent renews
// it only every few seconds, and a unit created again has none until then)
// keeps its stop target for agentReconcile: fleet's agent reconciles its
// units at least that often, whatever else happens. The stop is written
// again every NudgeInterval meanwhile. It runs to the stop's deadline even
// when ctx is cancelled, as the start after it does.
func (r *Roller) agentStopped(ctx context.Context, name string, deadline time.Time) error {
	clock := r.opt.Clock
	t0 := clock.Now()
	lastWrite, heartbeat := t0, false
	err := r.until(ctx, deadline, r.opt.StopTimeout, func(ctx context.Context) (bool, error) {
		target, current, err := r.fleet.TargetState(ctx, name)
		switch {
		case err != nil:
			return false, err
		case target != "loaded":
			return false, targetChanged(name, target, "loaded")
		case current == "launched":
			heartbeat = true
		case heartbeat || clock.Now().Sub(t0) >= agentReconcile:
			return true, nil
		}
		if now := clock.Now(); r.opt.NudgeInterval > 0 && now.Sub(lastWrite) >= r.opt.NudgeInterval {
			lastWrite = now
			r.writeAgain(ctx, name, "loaded")
		}
		return false, nil
	})
	if err != nil && !errors.Is(err, ErrTargetChanged) && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("the unit was down before its stop, and fleet's agent has not acted on the stop: %w", err)
	}
	return err
}

// agentReconcile bounds how long fleet's agent takes to act on a target
// state without any event: it reconciles every 5 s (fleet's agent
// reconcileInterval), plus a reconciliation's own time.
const agentReconcile = 7 * time.Second

// start asks fleet to launch the unit and waits until it runs. It runs to
// its own deadline even when ctx is cancelled: a signal must not leave the
// unit down. It also brings back a unit whose stop failed or was cut short.
func (r *Roller) start(ctx context.Context, ur *UnitReport, stop stopResult, last *schema.UnitState) (*schema.UnitState, error) {
	clock := r.opt.Clock
	name := ur.Unit
	t0 := clock.Now()
	kind, why := EventStarting, stop.err
	if why == nil {
		why = stop.interrupted
	}
	if why != nil {
		kind = EventRecovering
	}
	r.intent(ctx, name, PhaseStart)
	r.begin(ur, PhaseStart)
	if r.digest != "" {
		ur.ImageDigest = r.digest
	}
	r.emit(ur, Event{Kind: kind, State: DescribeState(last), Err: why})
	was := ""
	if last != nil {
		was = last.MachineID
	}
	startCtx := context.WithoutCancel(ctx)
	deadline := t0.Add(r.opt.StartTimeout)
	err := r.until(startCtx, deadline, r.opt.StartTimeout, func(ctx context.Context) (bool, error) {
		err := r.setTarget(ctx, name, "launched")
		return err == nil, err
	})
	if err == nil {
		// A start that brings a unit back after a failed stop is bounded
		// by the start timeout alone: it is never cut short.
		by, late := deadline, func(err error) error { return err }
		if why == nil {
			by, late = r.progressBound(deadline)
		}
		err = late(r.waitState(startCtx, name, by, r.opt.StartTimeout, runningAfter(last), &last, startNudge.of(ur)))
	}
	r.end(ur)
	ur.Start = Seconds(clock.Now().Sub(t0))
	ur.LastState = DescribeState(last)
	if err != nil && last == nil && was != "" && r.machineGone(startCtx, was) {
		err = fmt.Errorf("%w; its machine %s left the cluster and no other machine has taken it (it stays launched: fleet starts it once a machine can)", err, shortID(was))
	}
	return last, err
}

// targetIs reports whether fleet holds target as the unit's desired state
// (false when fleet cannot be asked within the request timeout).
func (r *Roller) targetIs(ctx context.Context, name, target string) bool {
	units, err := r.fleet.Units(ctx)
	if err != nil {
		return false
	}
	for _, u := range units {
		if u != nil && u.Name == name {
			return u.DesiredState == target
		}
	}
	return false
}

// machineGone reports whether fleet no longer lists the machine (false when
// fleet cannot be asked).
func (r *Roller) machineGone(ctx context.Context, id string) bool {
	ips, err := r.fleet.MachineIPs(ctx)
	if err != nil {
		return false
	}
	_, listed := ips[id]
	return !listed
}

// failed fills in a unit's record for a halt and returns the *UnitError.
func (r *Roller) failed(ur *UnitReport, phase Phase, last *schema.UnitState, leftStopped bool, err error, t0 time.Time) error {
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
	r.emit(ur, Event{Kind: EventFailed, Elapsed: time.Duration(ur.Total), State: ur.LastState, Err: uerr})
	return uerr
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

// nudge is what a wait re-asserts while its phase is pending: the target it
// asked for, and whether fleet's reported state is still the one from before
// the request (the agent has not acted).
type nudge struct {
	target  string
	pending func(*schema.UnitState) bool
	// ur, when set, is the unit whose phase a stall is diagnosed in.
	ur *UnitReport
}

// of is n for the wait of one unit's phase: its stall is diagnosed in
// ur.
func (n *nudge) of(ur *UnitReport) *nudge {
	c := *n
	c.ur = ur
	return &c
}

var (
	stopNudge  = &nudge{target: "loaded", pending: func(st *schema.UnitState) bool { return st != nil && st.SystemdActiveState == "active" }}
	startNudge = &nudge{target: "launched", pending: func(st *schema.UnitState) bool {
		return st != nil && (st.SystemdActiveState == "inactive" || st.SystemdActiveState == "failed")
	}}
)

// ErrTargetChanged is returned when a unit's target state was changed by
// someone else while fleetroll waited for it: fleetroll halts and leaves it
// as they set it.
var ErrTargetChanged = errors.New("target state changed by someone else")

// targetChanged is ErrTargetChanged for a unit whose target fleet now holds
// as got, where fleetroll had written want.
func targetChanged(name, got, want string) error {
	return fmt.Errorf("%w: %s is now %q, not %q; fleetroll leaves it so", ErrTargetChanged, name, got, want)
}

// waitState polls a unit's state until judge says done or fails, or the
// deadline passes. The last state seen is stored in *last. With nudging on
// and n given, it re-asserts n's target every NudgeInterval while the phase
// is pending.
func (r *Roller) waitState(ctx context.Context, name string, deadline time.Time, timeout time.Duration,
	judge func(*schema.UnitState) (string, bool, error), last **schema.UnitState, n *nudge) error {
	lastWrite := r.opt.Clock.Now() // the request itself
	began := lastWrite
	var wake <-chan struct{}
	if w := r.opt.Hooks.Wake; w != nil {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		wake = w.Watch(wctx, name)
	}
	poll := func(ctx context.Context) (*schema.UnitState, error) { return r.fleet.UnitState(ctx, name) }
	if s := r.states; s != nil && wake == nil {
		// A batch: one listing per poll interval for all units in
		// flight, each poll on a listing requested after the previous
		// one (and the first after the write). A wake-up asks for a
		// fresh state of its own unit instead.
		seen := s.newest()
		poll = func(ctx context.Context) (st *schema.UnitState, err error) {
			st, seen, err = s.get(ctx, name, seen)
			return st, err
		}
	}
	return r.wakeUntil(ctx, deadline, timeout, wake, func(ctx context.Context) (bool, error) {
		st, err := poll(ctx)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return false, err
		}
		*last = st
		msg, done, jerr := judge(st)
		r.opt.Logger.Debug("poll", "rollout_id", r.opt.RolloutID, "unit", name, "state", msg)
		if !done && jerr == nil && n != nil && n.ur != nil && n.pending(st) && r.opt.Clock.Now().Sub(began) >= StallAfter {
			r.diagnose(ctx, n, st, r.opt.Clock.Now().Sub(began))
		}
		if done || jerr != nil || n == nil || r.opt.NudgeInterval <= 0 || !n.pending(st) {
			return done, jerr
		}
		if now := r.opt.Clock.Now(); now.Sub(lastWrite) >= r.opt.NudgeInterval {
			lastWrite = now
			return false, r.nudge(ctx, name, n.target)
		}
		return false, nil
	})
}

// nudge writes a unit's target state again, so that fleet's agent sees a
// write while it listens. It reads the unit first: a target someone else
// changed is ErrTargetChanged; a unit the agent has already brought to its
// target (fleet's currentState, which flips as the agent acts, a second
// before the published state does) needs no write. It is best effort: a
// failed read or write only skips this nudge.
func (r *Roller) nudge(ctx context.Context, name, target string) error {
	got, current, err := r.fleet.TargetState(ctx, name)
	if err != nil {
		r.opt.Logger.Debug("nudge skipped", "rollout_id", r.opt.RolloutID, "unit", name, "error", err)
		return nil
	}
	if got != target {
		return targetChanged(name, got, target)
	}
	if current == target {
		return nil // fleet's agent has acted; the published state follows
	}
	r.writeAgain(ctx, name, target)
	return nil
}

// writeAgain is a nudge's write: best effort, logged either way.
func (r *Roller) writeAgain(ctx context.Context, name, target string) {
	if err := r.setTarget(ctx, name, target); err != nil {
		r.opt.Logger.Debug("nudge not made", "rollout_id", r.opt.RolloutID, "unit", name, "error", err.Error())
		return
	}
	r.opt.Logger.Debug("nudged", "rollout_id", r.opt.RolloutID, "unit", name, "target", target)
}

// setTarget writes a unit's target state to fleet, unless fenced. Each
// write is logged (at debug level) as it is sent.
func (r *Roller) setTarget(ctx context.Context, name, target string) error {
	if err := r.fenced(); err != nil {
		return err
	}
	r.opt.Logger.Debug("setting target state", "rollout_id", r.opt.RolloutID, "unit", name, "target", target)
	return r.fleet.SetUnitTargetState(ctx, name, target)
}

// until calls fn until it reports done, returns an error that is not
// transient, or the deadline passes. Transient errors are retried with
// exponential backoff capped at MaxBackoff; a call that succeeds resets the
// wait to the poll interval. Waits end early when ctx is done.
func (r *Roller) until(ctx context.Context, deadline time.Time, timeout time.Duration, fn func(context.Context) (bool, error)) error {
	return r.wakeUntil(ctx, deadline, timeout, nil, fn)
}

// wakeUntil is until, with a wait between two calls cut short by wake.
func (r *Roller) wakeUntil(ctx context.Context, deadline time.Time, timeout time.Duration, wake <-chan struct{}, fn func(context.Context) (bool, error)) error {
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
		woken, err := r.sleepOrWake(ctx, min(wait, left), wake)
		if err != nil {
			return err
		}
		if woken {
			r.opt.Logger.Debug("woken by fleet's state", "rollout_id", r.opt.RolloutID)
		}
		if lastErr != nil {
			wait = min(2*wait, r.opt.MaxBackoff)
		}
	}
}

// sleep waits d or until ctx is done.
func (r *Roller) sleep(ctx context.Context, d time.Duration) error {
	_, err := r.sleepOrWake(ctx, d, nil)
	return err
}

// sleepOrWake waits d, or until a wake-up (true), or until ctx is done.
func (r *Roller) sleepOrWake(ctx context.Context, d time.Duration, wake <-chan struct{}) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-r.opt.Clock.After(d):
		return false, nil
	case <-wake:
		return true, nil
	}
}

// emit reports an event of a unit, with a copy of its record as it stands.
func (r *Roller) emit(ur *UnitReport, ev Event) {
	ev.RolloutID = r.opt.RolloutID
	ev.Unit = ur.Unit
	ev.Phase = ur.Phase
	ev.Progress = *ur
	ev.Progress.Phases = append([]Span(nil), ur.Phases...)
	attrs := []any{"rollout_id", ev.RolloutID, "unit", ev.Unit, "event", string(ev.Kind)}
	if ev.Kind == EventPhase {
		attrs = append(attrs, "phase", string(ev.Phase))
	}
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
		r.emitMu.Lock()
		defer r.emitMu.Unlock()
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

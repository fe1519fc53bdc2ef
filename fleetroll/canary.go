package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// DecisionKind is what ends a canary pause.
type DecisionKind string

const (
	DecisionPromote   DecisionKind = "promote"   // roll the other units
	DecisionAbort     DecisionKind = "abort"     // stop there; a deploy rolls the canaries back
	DecisionSupersede DecisionKind = "supersede" // a newer trigger takes over the service
)

// Decision ends a canary pause: what, who (fleetroll promote, the API,
// the canary wait, a newer push) and why.
type Decision struct {
	Kind   DecisionKind `json:"decision"`
	By     string       `json:"by,omitempty"`
	Reason string       `json:"reason,omitempty"`
}

// ParseDecision checks a decision's name (promote or abort: supersede is
// fleetroll's own).
func ParseDecision(s string) (DecisionKind, error) {
	switch k := DecisionKind(s); k {
	case DecisionPromote, DecisionAbort:
		return k, nil
	}
	return "", fmt.Errorf("decision %q: want promote or abort", s)
}

// Canary pauses a roll after its first N units (the canaries) have been
// restarted and passed their gate, until Decide returns.
type Canary struct {
	N int
	// Done are canaries restarted before this roll, by a rollout taken
	// over: the roll pauses after N-len(Done) units of its own (at once,
	// when none is left), and the pause names them all.
	Done []string
	// Decide blocks until the pause ends: promoted, aborted or
	// superseded; an error (ctx ended, etcd lost) halts the roll like an
	// abort with nothing to roll back. It calls ready once a decision can
	// be taken (the pause is recorded where deciders look): the rollout is
	// reported paused from then on.
	Decide func(ctx context.Context, rollout string, canaries []string, ready func()) (Decision, error)
}

// CanaryReport is the record of a rollout's canary pause.
type CanaryReport struct {
	Units   []string  `json:"units"`
	Paused  time.Time `json:"paused"`
	Decided time.Time `json:"decided,omitzero"`
	Decision
}

// CanaryError ends a roll that its canary pause did not promote.
type CanaryError struct {
	Service  string
	Units    []string
	Decision Decision
	Err      error // the pause itself failed (no decision)
}

func (e *CanaryError) Error() string {
	who := strings.Join(e.Units, ", ")
	if e.Err != nil {
		return fmt.Sprintf("canary pause of %s after %s: %v", e.Service, who, e.Err)
	}
	msg := fmt.Sprintf("canaries of %s (%s) not promoted: %s", e.Service, who, e.Decision.Kind)
	if e.Decision.By != "" {
		msg += " by " + e.Decision.By
	}
	if e.Decision.Reason != "" {
		msg += ": " + e.Decision.Reason
	}
	return msg
}

func (e *CanaryError) Unwrap() error { return e.Err }

// canaries returns how many of the plan's n units roll before the pause:
// all of them (no pause) when there is no canary or it would cover every
// unit.
func (r *Roller) canaries(n int) int {
	c := r.opt.Hooks.Canary
	if c == nil || c.N <= 0 || c.Decide == nil {
		return n
	}
	if left := max(c.N-len(c.Done), 0); left < n {
		return left
	}
	return n
}

// pause holds the roll after its canaries (those done before it, then its
// first n units) until a decision; nil means promoted.
func (r *Roller) pause(ctx context.Context, rep *Report, n int) error {
	clock := r.opt.Clock
	names := slices.Clone(r.opt.Hooks.Canary.Done)
	for _, u := range rep.Units[:n] {
		names = append(names, u.Unit)
	}
	rep.Canary = &CanaryReport{Units: names, Paused: clock.Now()}
	var once sync.Once
	ready := func() {
		once.Do(func() {
			rep.Status = StatusPaused
			r.rolloutEvent(rep, EventPaused, nil)
		})
	}
	d, err := r.opt.Hooks.Canary.Decide(ctx, r.opt.RolloutID, names, ready)
	rep.Status = StatusRunning
	rep.Canary.Decided = clock.Now()
	if err != nil {
		ce := &CanaryError{Service: rep.Service, Units: names, Err: err}
		r.rolloutEvent(rep, EventDecided, ce)
		return ce
	}
	rep.Canary.Decision = d
	if d.Kind == DecisionPromote {
		r.rolloutEvent(rep, EventDecided, nil)
		return nil
	}
	ce := &CanaryError{Service: rep.Service, Units: names, Decision: d}
	r.rolloutEvent(rep, EventDecided, ce)
	return ce
}

// statusOf is the status of a roll that ended with err (not nil).
func statusOf(err error) Status {
	var ce *CanaryError
	switch {
	case errors.As(err, &ce) && ce.Err == nil && ce.Decision.Kind == DecisionSupersede:
		return StatusSuperseded
	case errors.As(err, &ce) && ce.Err == nil:
		return StatusAborted
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return StatusInterrupted
	}
	return StatusFailed
}

// rolloutEvent reports a step of the whole rollout (no unit): the canary
// pause and its decision, with the record's canary part.
func (r *Roller) rolloutEvent(rep *Report, kind EventKind, err error) {
	c := *rep.Canary
	c.Units = append([]string(nil), c.Units...)
	attrs := []any{"rollout_id", r.opt.RolloutID, "service", rep.Service, "event", string(kind), "canaries", strings.Join(c.Units, ",")}
	if c.Kind != "" {
		attrs = append(attrs, "decision", string(c.Kind), "by", c.By)
	}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
	}
	r.opt.Logger.Info("rollout "+string(kind), attrs...)
	if r.opt.OnEvent != nil {
		r.emitMu.Lock()
		defer r.emitMu.Unlock()
		r.opt.OnEvent(Event{RolloutID: r.opt.RolloutID, Kind: kind, Err: err, Canary: &c, Status: rep.Status})
	}
}

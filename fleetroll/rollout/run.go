package rollout

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	client "go.etcd.io/etcd/client/v2"
)

// Runner runs rollouts on one fleet cluster with, when Etcd is set, its
// lock, intent records, drain, releases and history.
type Runner struct {
	Fleet fleetroll.Fleet
	// Etcd, when nil, runs without the lock, the intent record and the
	// history: a setting that needs etcd is then an error.
	Etcd client.KeysAPI
	// Resolver turns a tag into its digest (deploys of a tag).
	Resolver fleetroll.Resolver
	Logger   *slog.Logger
	Clock    fleetroll.Clock
}

// Change is what a rollout deploys; a Request without one restarts the
// instances in place.
type Change struct {
	// Ref is a tag or a digest of Settings.Image ("" is latest).
	Ref string
	// Rollback deploys an earlier release of the history instead: To names
	// it (a rollout ID or a digest), or "" the one before the current.
	Rollback bool
	To       string
}

// DecideFunc decides a canary pause (fleetroll.Canary.Decide).
type DecideFunc func(ctx context.Context, rollout string, canaries []string, ready func()) (fleetroll.Decision, error)

// Request is one rollout: what, with which settings, why and by whom, and
// who watches it.
type Request struct {
	// ID is the rollout's ID (a new one when empty).
	ID      string
	Service string
	// Units, when set, name the units instead of Settings.Ports.
	Units    []string
	Settings Settings
	Trigger  fleetroll.Trigger
	// Owner names who runs it, in the lock, the intent and the record.
	Owner string
	// Deploy, when set, deploys a release; nil restarts in place.
	Deploy *Change
	// Resume is the record of this rollout as another fleetroll left it
	// (serve's durable queue): its units already restarted are not
	// restarted again.
	Resume *fleetroll.Report

	// OnEvent is told each step of the roll.
	OnEvent func(fleetroll.Event)
	// Say is told, one line each, what the rollout does besides its
	// steps: lock waits, recoveries, pre-pulls, warnings.
	Say func(msg string)
	// OnPlanned is given the record once the plan is made under the lock.
	OnPlanned func(rec fleetroll.Report)
	// Decide, when set, wraps each canary pause's decision (serve ends a
	// pause that a newer trigger supersedes).
	Decide func(next DecideFunc) DecideFunc
	// Record is given the final record and the rollout's error before the
	// record is saved in the history (when there is etcd); it may add to
	// it, and false skips the save.
	Record func(rep *fleetroll.Report, err error) bool
}

// Owner describes this process: what it does, host, PID and since when.
func Owner(what string) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s on %s (pid %d) since %s", what, host, os.Getpid(), time.Now().UTC().Format(time.RFC3339))
}

// ErrNeedsEtcd is returned for settings that need etcd on a runner
// without it.
var ErrNeedsEtcd = errors.New("needs etcd")

// Check validates the request's settings against the runner: errors are
// the user's to fix (exit 2).
func (r Runner) Check(req Request) error {
	s := req.Settings.Complete(req.Service)
	if err := s.Validate(); err != nil {
		return err
	}
	if r.Etcd == nil {
		if uses := s.Uses(); len(uses) > 0 || req.Deploy != nil {
			if req.Deploy != nil {
				uses = append(uses, "a release")
			}
			return fmt.Errorf("%s %w (--etcd-endpoints)", strings.Join(uses, ", "), ErrNeedsEtcd)
		}
	}
	if s.Health != nil && r.Fleet == nil {
		return errors.New("the health gate needs fleet's machine list")
	}
	return nil
}

// LockOf is the lock a rollout of s takes: the setting, auto resolved (wait
// with etcd, off without). A deploy and blue-green always take it.
func (r Runner) LockOf(s Settings, deploy bool) LockMode {
	switch {
	case s.Lock == LockAuto && r.Etcd != nil:
		return LockWait
	case s.Lock == LockAuto:
		return LockOff
	case s.Lock == LockOff && (deploy || s.Image != "" || s.BlueGreen()):
		// A deploy writes the release, blue-green the live set: never two
		// at once.
		return LockWait
	}
	return s.Lock
}

// target is what the request rolls: blue-green rolls the live set.
func (r Runner) target(ctx context.Context, req Request, s Settings) (fleetroll.Target, error) {
	t := fleetroll.Target{Service: req.Service, Instances: s.Ports, Units: req.Units}
	if s.BlueGreen() && len(req.Units) == 0 && r.Etcd != nil {
		live, _, err := coord.Lives{KAPI: r.Etcd}.Resolve(ctx, req.Service, s.Ports, s.SparePorts)
		if err != nil {
			return t, err
		}
		t.Instances = live
	}
	if err := t.Validate(); err != nil {
		return t, &fleetroll.PlanError{Msg: err.Error()}
	}
	return t, nil
}

// Plan is the plan the request would follow now, without a lock: for a dry
// run, and to refuse a bad target before waiting for the lock. Its errors
// are fleetroll.PlanError for a bad target.
func (r Runner) Plan(ctx context.Context, req Request) (*fleetroll.Plan, error) {
	s := req.Settings.Complete(req.Service)
	t, err := r.target(ctx, req, s)
	if err != nil {
		return nil, err
	}
	plan, err := r.makePlan(ctx, t)
	var pe *fleetroll.PlanError
	if err != nil && !errors.As(err, &pe) {
		return nil, fmt.Errorf("%w: %w", ErrFleet, err)
	}
	return plan, err
}

// planRetries are the pauses between the reads of a plan that fleet
// answered with a transient error: fleet's API answers 500 to a listing
// while a unit is being destroyed, which is no reason to fail a rollout.
var planRetries = []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second}

// makePlan is fleetroll.MakePlan, read again after a transient error of
// fleet (fleetroll.IsTransient), a few times within a few seconds.
func (r Runner) makePlan(ctx context.Context, t fleetroll.Target) (*fleetroll.Plan, error) {
	for _, pause := range planRetries {
		plan, err := fleetroll.MakePlan(ctx, r.Fleet, t)
		if err == nil || !fleetroll.IsTransient(err) {
			return plan, err
		}
		r.logger().Warn("fleet's answer to the plan failed, reading it again", "service", t.Service, "error", err.Error(), "retry_in", pause)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-r.clock().After(pause):
		}
	}
	return fleetroll.MakePlan(ctx, r.Fleet, t)
}

// ErrFleet wraps the errors of a plan that fleet could not answer.
var ErrFleet = errors.New("fleet did not answer")

// Run runs the request to its end and returns its record; the record is
// nil when the rollout never began (a bad target, the lock refused, etcd
// unreachable, a recovery that failed). In one order: check, plan (to
// refuse a bad target at once), lock and intent, recovery of what a dead
// fleetroll left in flight, plan again under the lock, the release (chosen
// under the lock) and its pre-pull, the strategy, and the history.
func (r Runner) Run(ctx context.Context, req Request) (*fleetroll.Report, error) {
	if err := r.Check(req); err != nil {
		return nil, err
	}
	if req.ID == "" {
		req.ID = fleetroll.NewID()
	}
	s := req.Settings.Complete(req.Service)
	log := r.logger().With("rollout_id", req.ID, "service", req.Service)
	// say tells the caller (and logs it as information), or without a
	// caller to tell, logs it: lock waits, recoveries and units left alone
	// as warnings, the rest as information.
	tell := func(level slog.Level) func(format string, a ...any) {
		return func(format string, a ...any) {
			msg := fmt.Sprintf(format, a...)
			if req.Say != nil {
				log.Info(msg)
				req.Say(msg)
				return
			}
			log.Log(ctx, level, msg)
		}
	}
	say, warn := tell(slog.LevelInfo), tell(slog.LevelWarn)
	if _, err := r.Plan(ctx, req); err != nil {
		// A plan that finds nothing to roll may be what a killed
		// fleetroll left (its only instances stopped): the recovery
		// under the lock comes first.
		var pe *fleetroll.PlanError
		if !errors.As(err, &pe) || !r.inFlight(ctx, req.Service) {
			return nil, err
		}
	}

	// Units already restarted by this rollout, before another receiver
	// (or this one, before a restart) stopped running it.
	done := map[string]fleetroll.UnitReport{}
	if req.Resume != nil {
		for _, u := range req.Resume.Units {
			if u.Outcome == fleetroll.OutcomeRestarted {
				done[u.Unit] = u
			}
		}
	}
	opts := s.Options()
	opts.RolloutID, opts.Logger, opts.Clock = req.ID, r.logger(), r.Clock // the roller names the rollout and unit
	g := &guard{etcd: r.Etcd, fleet: r.Fleet, service: req.Service, settings: s, lock: r.LockOf(s, req.Deploy != nil),
		owner: req.Owner, rollout: req.ID, trigger: req.Trigger, roll: opts, say: warn, onEvent: req.OnEvent,
		onRestored: func(in coord.Intent, restored []fleetroll.UnitReport) {
			if in.Rollout != req.ID {
				return
			}
			for i, u := range in.Units {
				if i < len(restored) && restoredIsRestart(u.Phase, restored[i]) {
					rr := restored[i]
					rr.Error = "restarted by the recovery of its rollout, taken over from " + in.Owner
					done[u.Unit] = rr
				}
			}
		}}
	hooks, release, err := g.prepare(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", req.Service, err)
	}
	defer release()
	if sw := g.switched; sw != nil {
		// A blue-green rollout taken over after its switch: the recovery
		// retired the old set; the new one serves. It is done.
		now := r.clock().Now()
		rep := &fleetroll.Report{Version: fleetroll.SchemaVersion, ID: req.ID, Service: req.Service, Status: fleetroll.StatusSucceeded,
			Strategy: fleetroll.StrategyBlueGreen, Started: now, Finished: now, Trigger: req.Trigger, By: req.Owner}
		if req.Resume != nil && !req.Resume.Started.IsZero() {
			rep.Started = req.Resume.Started
		}
		for _, u := range sw.old {
			rep.Units = append(rep.Units, fleetroll.UnitReport{Unit: u, Outcome: fleetroll.OutcomeRetired})
		}
		for _, u := range sw.new {
			rep.Units = append(rep.Units, fleetroll.UnitReport{Unit: u, Outcome: fleetroll.OutcomeLaunched})
		}
		r.record(ctx, req, rep, nil, log)
		return rep, nil
	}

	// The plan is made again under the lock, once what a dead fleetroll
	// left in flight is back (and another blue-green rollout may have
	// swapped the sets meanwhile).
	t, err := r.target(ctx, req, s)
	if err != nil {
		return nil, fmt.Errorf("plan %s: %w", req.Service, err)
	}
	plan, err := r.makePlan(ctx, hooks.Target(t))
	if err != nil {
		return nil, fmt.Errorf("plan %s: %w", req.Service, err)
	}
	for _, n := range plan.NotLaunched {
		why := "no rollout left it so (no intent record names it)"
		if hooks.Intent == nil {
			why = "and without intent records (no lock) fleetroll cannot tell who stopped it"
		}
		warn("warning: %s is loaded in fleet but not launched, %s: it is not restarted; fleetctl start %s launches it", n, why, n)
	}
	order := plan.Names()
	var names []string // the units done before, in the plan's order
	if len(done) > 0 {
		plan.Units = slices.DeleteFunc(plan.Units, func(u fleetroll.PlannedUnit) bool {
			if _, ok := done[u.Name]; ok {
				names = append(names, u.Name)
				return true
			}
			return false
		})
		say("resuming rollout %s of %s: %s done before", req.ID, req.Service, strings.Join(names, ", "))
	}
	if req.OnPlanned != nil {
		rec := fleetroll.Report{ID: req.ID, Service: req.Service, Status: fleetroll.StatusRunning, Started: r.clock().Now()}
		if req.Resume != nil && !req.Resume.Started.IsZero() {
			rec.Started = req.Resume.Started
		}
		for _, name := range order {
			if u, ok := done[name]; ok {
				rec.Units = append(rec.Units, u)
			}
		}
		for _, u := range plan.Units {
			rec.Units = append(rec.Units, fleetroll.UnitReport{Unit: u.Name, Outcome: fleetroll.OutcomePending, LastState: u.State})
		}
		req.OnPlanned(rec)
	}

	var before *fleetroll.CanaryReport // the canary pause before a takeover
	if req.Resume != nil {
		before = req.Resume.Canary
	}
	if c := hooks.Canary; c != nil {
		decide := DecideFunc(c.Decide)
		if req.Decide != nil {
			decide = req.Decide(decide)
		}
		hooks.Canary = &fleetroll.Canary{N: c.N, Done: names, Decide: decide}
		if (before != nil && before.Kind == fleetroll.DecisionPromote) || len(names) > c.N {
			hooks.Canary = nil // promoted before the takeover
		}
	}
	opts.Hooks, opts.OnEvent = hooks, req.OnEvent
	roller, err := fleetroll.NewRoller(r.Fleet, opts)
	if err != nil {
		return nil, err
	}

	var rep *fleetroll.Report
	switch {
	case len(plan.Units) == 0 && len(done) > 0:
		// Everything was restarted before the takeover.
		now := r.clock().Now()
		rep = &fleetroll.Report{Version: fleetroll.SchemaVersion, ID: req.ID, Service: req.Service, Status: fleetroll.StatusSucceeded, Started: now, Finished: now}
	case req.Deploy == nil:
		rep, err = roller.Roll(ctx, plan)
	default:
		var d fleetroll.Deploy
		if d, err = r.deployOf(ctx, req, s, names, done); err != nil {
			return nil, fmt.Errorf("%s %s: %w; nothing was touched", verbOf(req), req.Service, err)
		}
		// A quarantined release, or a sender's tag outside the policy:
		// refused under the lock, recorded, nothing touched.
		refused, cur, rerr := r.refusal(ctx, req, s, d)
		if rerr != nil {
			return nil, fmt.Errorf("%s %s: %w; nothing was touched", verbOf(req), req.Service, rerr)
		}
		if refused != nil {
			rep := r.refused(req, refused, cur)
			log.Warn("deploy refused", "digest", refused.Release.Digest(), "reason", refused.Reason)
			r.record(ctx, req, rep, refused, log)
			return rep, refused
		}
		d.Note = func(msg string) {
			if req.Say != nil {
				req.Say(msg)
			}
		}
		rep, err = roller.Deploy(ctx, plan, d)
		r.quarantine(ctx, req, rep, err, log)
		if r.prunes(s, rep, err) {
			rep.Prune = r.prune(ctx, roller, req.Service, s, rep.Release, log, say)
		}
	}
	if len(done) > 0 {
		mergeResumed(rep, order, done, req.Resume)
	}
	if rep.Canary == nil && before != nil {
		rep.Canary = before
	}
	rep.Trigger, rep.By, rep.NotLaunched = req.Trigger, req.Owner, plan.NotLaunched
	if rep.Release != nil && fromCLI(req.Trigger) {
		rep.Trigger = rep.Release.To.Trigger // what the operator named, resolved
	}
	r.record(ctx, req, rep, err, log)
	return rep, err
}

// inFlight tells whether a rollout of the service left units in flight
// (its intent record is there).
func (r Runner) inFlight(ctx context.Context, service string) bool {
	if r.Etcd == nil {
		return false
	}
	in, err := coord.Intents{KAPI: r.Etcd}.Get(ctx, service)
	return err == nil && in != nil
}

// verbOf names what the request does, for errors.
func verbOf(req Request) string {
	switch {
	case req.Deploy == nil:
		return "restart"
	case req.Deploy.Rollback:
		return "rollback"
	}
	return "deploy"
}

// record saves the rollout in etcd's history, when there is etcd.
func (r Runner) record(ctx context.Context, req Request, rep *fleetroll.Report, err error, log *slog.Logger) {
	if req.Record != nil && !req.Record(rep, err) {
		return
	}
	if r.Etcd == nil {
		return
	}
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := (coord.History{KAPI: r.Etcd}).Save(hctx, *rep); err != nil {
		log.Warn("rollout record not saved", "error", err.Error())
	}
}

// mergeResumed makes the record cover the whole rollout: the units done
// before the takeover, in the plan's order, then this roll's (a deploy's
// rollback lists the units done before too).
func mergeResumed(rep *fleetroll.Report, order []string, done map[string]fleetroll.UnitReport, resume *fleetroll.Report) {
	rolled := map[string]fleetroll.UnitReport{}
	for _, u := range rep.Units {
		rolled[u.Unit] = u
	}
	rep.Units = rep.Units[:0:0]
	for _, name := range order {
		if u, ok := rolled[name]; ok {
			rep.Units = append(rep.Units, u)
		} else if u, ok := done[name]; ok {
			rep.Units = append(rep.Units, u)
		}
	}
	if resume != nil && !resume.Started.IsZero() {
		rep.Started = resume.Started
	}
}

// deployOf is the deploy of the request: the release chosen under the
// lock (the tag resolved, or one of the history), the pre-pull, and what a
// rollout taken over had done.
func (r Runner) deployOf(ctx context.Context, req Request, s Settings, names []string, done map[string]fleetroll.UnitReport) (fleetroll.Deploy, error) {
	// The store refuses a release of another image than the service's.
	store := coord.ReleaseStore{KAPI: r.Etcd, Image: s.Image}
	d := fleetroll.Deploy{Releases: store, OnFailure: s.OnFailure, NoPull: !s.PrePulls(),
		Pull: fleetroll.PullOptions{Timeout: s.PullTimeout, Reason: coord.PullReason(r.Etcd)}}
	to, err := r.release(ctx, req, s, store)
	if err != nil {
		return d, err
	}
	d.To = to
	if req.Resume != nil {
		t := &fleetroll.TakenOver{}
		for _, n := range names {
			t.Done = append(t.Done, done[n])
		}
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		hist, err := store.History(hctx, req.Service)
		if err != nil {
			return d, err
		}
		for i, rel := range hist { // newest first
			if rel.Rollout == req.ID {
				if i+1 < len(hist) {
					t.From = &hist[i+1]
				}
				break
			}
		}
		d.TakenOver = t
	}
	return d, nil
}

// release is the release the request deploys: the image's tag resolved
// through the registry's API, its digest, or a release of the history.
// The image is the settings'; only a checked tag or digest comes from a
// trigger.
func (r Runner) release(ctx context.Context, req Request, s Settings, store coord.ReleaseStore) (fleetroll.Release, error) {
	c := req.Deploy
	if c.Rollback {
		var to *fleetroll.Release
		var err error
		if c.To != "" {
			to, err = store.Find(ctx, req.Service, c.To)
		} else {
			to, err = store.Previous(ctx, req.Service)
		}
		if err != nil {
			return fleetroll.Release{}, err
		}
		rel := *to
		rel.Trigger = req.Trigger
		rel.Trigger.Repository, rel.Trigger.Tag, rel.Trigger.Digest = rel.Repository(), rel.Tag, rel.Digest()
		return rel, nil
	}
	if s.Image == "" {
		return fleetroll.Release{}, errors.New("no image to deploy (image, --image)")
	}
	digest, tag := c.Ref, ""
	if !fleetroll.ValidDigest(digest) {
		tag = cmp.Or(c.Ref, "latest")
		if r.Resolver == nil {
			return fleetroll.Release{}, errors.New("no registry to resolve the tag with")
		}
		d, err := r.Resolver.Resolve(ctx, s.Image, tag)
		if err != nil {
			return fleetroll.Release{}, err
		}
		digest = d
	}
	image, err := fleetroll.PinnedImage(s.Image, digest)
	if err != nil {
		return fleetroll.Release{}, err
	}
	t := req.Trigger
	if fromCLI(t) {
		// The operator's trigger names what they asked for; a sender's
		// stays as it was sent.
		t.Repository, t.Digest, t.Tag = s.Image, digest, tag
	}
	return fleetroll.Release{Image: image, Tag: cmp.Or(t.Tag, tag), Trigger: t}, nil
}

// fromCLI tells a command's trigger from a sender's.
func fromCLI(t fleetroll.Trigger) bool { return t.Source == "" || t.Source == "cli" }

// restoredIsRestart tells whether the recovery of a unit in flight
// restarted it: it had been stopped (its stop requested, or further on),
// and it runs again. A unit only drained was never stopped.
func restoredIsRestart(p fleetroll.Phase, u fleetroll.UnitReport) bool {
	if u.Outcome != fleetroll.OutcomeRestarted {
		return false
	}
	switch p {
	case fleetroll.PhaseStart, fleetroll.PhaseHealth:
		return true
	case fleetroll.PhaseStop:
		return slices.ContainsFunc(u.Phases, func(s fleetroll.Span) bool { return s.Phase == fleetroll.PhaseStop })
	}
	return false
}

// Recover restores what a fleetroll that is gone left in flight on the
// service (its intent record), under the service's lock, and records that
// rollout as interrupted. It reports whether there was anything to
// restore.
func (r Runner) Recover(ctx context.Context, service string, s Settings, owner string, say func(string)) (bool, error) {
	if r.Etcd == nil {
		return false, fmt.Errorf("recover %s: the intent records are in etcd: %w", service, ErrNeedsEtcd)
	}
	id := fleetroll.NewID()
	s = s.Complete(service)
	opts := s.Options()
	opts.RolloutID, opts.Logger, opts.Clock = id, r.logger().With("service", service), r.Clock
	g := &guard{etcd: r.Etcd, fleet: r.Fleet, service: service, settings: s, lock: LockWait, owner: owner, rollout: id,
		trigger: fleetroll.Trigger{Source: "recover"}, roll: opts,
		say: func(format string, a ...any) {
			msg := fmt.Sprintf(format, a...)
			if say == nil {
				opts.Logger.Warn(msg) // a receiver's recovery: worth a warning
				return
			}
			say(msg)
		}}
	// Only the recovery: no canary pause, no blue-green sets.
	g.settings.Canary, g.settings.CanaryWait, g.settings.Strategy = 0, 0, StrategyRolling
	_, release, err := g.prepare(ctx)
	if err != nil {
		return g.recovered, fmt.Errorf("recover %s: %w", service, err)
	}
	release()
	return g.recovered, nil
}

func (r Runner) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

func (r Runner) clock() fleetroll.Clock { return clockOr(r.Clock) }

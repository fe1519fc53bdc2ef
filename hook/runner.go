package hook

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
)

// execute runs one rollout to its end: plan, roll, record, count. ctx is
// cancelled on shutdown; the roller then brings the unit it is restarting
// back up before returning. Callbacks go out later (report), once the
// service's slot is free. It returns false when a rollout of the durable
// queue stopped before its end (shutdown, or its lease lost): it is not
// recorded then, and its trigger stays queued with its progress.
func (s *Server) execute(ctx context.Context, j Job) (ended bool) {
	log := s.log.With("rollout_id", j.ID, "service", j.Service, "request_id", j.Trigger.RequestID)
	log.Info("rollout started", "source", j.Trigger.Source, "repository", j.Trigger.Repository, "tag", j.Trigger.Tag)
	if rec, ok := s.store.Get(j.ID); ok {
		rec.Status = fleetroll.StatusRunning
		s.notify("started", rec)
	}

	t0 := s.opt.Clock.Now()
	rep, err := s.roll(ctx, j)
	final, _ := s.store.Get(j.ID)
	final.By = s.opt.Owner
	if rep != nil {
		// The roller's record, with the queue's trigger and metadata.
		final.Version, final.Status, final.Started, final.Finished, final.Units, final.Error = rep.Version, rep.Status, rep.Started, rep.Finished, rep.Units, rep.Error
		final.Release, final.Pull, final.Phase, final.Canary, final.Strategy = rep.Release, rep.Pull, rep.Phase, rep.Canary, rep.Strategy
	} else {
		// It failed (or was stopped) before the roller began.
		final.Started, final.Finished = t0, s.opt.Clock.Now()
		final.Status, final.Error = fleetroll.StatusFailed, err.Error()
		if errors.Is(err, context.Canceled) {
			final.Status = fleetroll.StatusInterrupted
		}
	}
	if j.entry != "" && (ctx.Err() != nil || errors.Is(err, fleetroll.ErrFenced) || (j.lease != nil && j.lease() != nil)) {
		// Shut down, or its lease is in doubt (etcd out of reach): another
		// receiver may take over, so this one neither records an end nor
		// reports one.
		s.store.Update(j.ID, func(r *fleetroll.Report) { *r = final.Clone() })
		why := "shutdown"
		if err != nil {
			why = err.Error()
		}
		log.Warn("rollout stopped before its end; its trigger stays queued, to be resumed", "restarted", final.Restarted(), "error", why)
		return false
	}
	// The history first: once the API shows the rollout finished, every
	// receiver and fleetroll status see it too.
	s.record(ctx, final)
	s.store.Update(j.ID, func(r *fleetroll.Report) { *r = final.Clone() })
	s.metrics.rollouts.WithLabelValues(j.Service, string(final.Status)).Inc()
	for _, u := range final.Units {
		if u.Outcome == fleetroll.OutcomeRestarted {
			s.metrics.unitRestart.WithLabelValues(j.Service).Observe(time.Duration(u.Total).Seconds())
		}
	}
	if err != nil {
		log.Error("rollout "+string(final.Status), "error", err.Error())
	} else {
		log.Info("rollout succeeded", "units", len(final.Units))
	}
	return true
}

// roll plans and runs the rollout. The report is nil when the roll never
// began (no plan, the lock refused, etcd unreachable).
func (s *Server) roll(ctx context.Context, j Job) (*fleetroll.Report, error) {
	svc, ok := s.Config().Service(j.Service)
	if !ok {
		return nil, fmt.Errorf("service %q is no longer configured", j.Service)
	}
	opts := svc.RollOptions(s.opt.Roll)
	opts.RolloutID = j.ID
	opts.Logger = s.log.With("service", j.Service, "request_id", j.Trigger.RequestID)
	policy := svc.Policy(s.opt.Policy)
	if j.entry != "" && policy.Lock == fleetroll.LockFail {
		// A queued trigger is never dropped: it waits for the lock (held
		// by a CLI, or by a receiver gone until its lease ends).
		policy.Lock = fleetroll.LockWait
	}
	// Units already restarted by this rollout, before another receiver
	// (or this one, before a restart) stopped running it.
	done := map[string]fleetroll.UnitReport{}
	if j.Resume != nil {
		for _, u := range j.Resume.Units {
			if u.Outcome == fleetroll.OutcomeRestarted {
				done[u.Unit] = u
			}
		}
	}
	safety := coord.Safety{KAPI: s.opt.Etcd, Policy: policy, Fleet: s.opt.Fleet, Instances: svc.Ports,
		Owner: s.opt.Owner + ", rollout " + j.ID, Rollout: j.ID, Trigger: j.Trigger, Roll: opts,
		OnRecover: func(msg string) { s.log.Warn(msg, "rollout_id", j.ID, "service", j.Service) },
		OnRestored: func(in coord.Intent, restored []fleetroll.UnitReport) {
			if in.Rollout != j.ID {
				return
			}
			for i, u := range in.Units {
				if i < len(restored) && restoredIsRestart(u.Phase, restored[i]) {
					r := restored[i]
					r.Error = "restarted by the recovery of its rollout, taken over from " + in.Owner
					done[u.Unit] = r
				}
			}
		}}
	hooks, release, err := safety.Prepare(ctx, j.Service)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", j.Service, err)
	}
	defer release()
	// The plan is made under the lock, once what a dead fleetroll left in
	// flight is back.
	plan, err := fleetroll.MakePlan(ctx, s.opt.Fleet, hooks.Target(svc.Target()))
	if err != nil {
		return nil, fmt.Errorf("plan %s: %w", j.Service, err)
	}
	order := make([]string, len(plan.Units))
	for i, u := range plan.Units {
		order[i] = u.Name
	}
	var names []string // the units done, in the plan's order
	if len(done) > 0 {
		plan.Units = slices.DeleteFunc(plan.Units, func(u fleetroll.PlannedUnit) bool {
			if _, ok := done[u.Name]; ok {
				names = append(names, u.Name)
				return true
			}
			return false
		})
		s.log.Info("resuming rollout", "rollout_id", j.ID, "service", j.Service, "done", strings.Join(names, ","))
		s.store.Update(j.ID, func(r *fleetroll.Report) {
			if r.Queue == nil {
				r.Queue = &fleetroll.QueueInfo{}
			}
			r.Queue.Resumed = append(r.Queue.Resumed, fleetroll.Resumption{At: s.opt.Clock.Now(), By: s.opt.Owner, Done: names})
		})
	}
	s.store.Update(j.ID, func(r *fleetroll.Report) {
		if j.Resume == nil || j.Resume.Started.IsZero() {
			r.Started = s.opt.Clock.Now()
		} else {
			r.Started = j.Resume.Started
		}
		r.Units = r.Units[:0]
		for _, name := range order {
			if u, ok := done[name]; ok {
				r.Units = append(r.Units, u)
			}
		}
		for _, u := range plan.Units {
			r.Units = append(r.Units, fleetroll.UnitReport{Unit: u.Name, Outcome: fleetroll.OutcomePending, LastState: u.State})
		}
	})
	if s.durable != nil && j.entry != "" {
		s.durable.progress(ctx, j)
	}
	var before *fleetroll.CanaryReport // the canary pause before a takeover
	if j.Resume != nil {
		before = j.Resume.Canary
	}
	if c := hooks.Canary; c != nil {
		decide := c.Decide
		hooks.Canary = &fleetroll.Canary{N: c.N, Done: names, Decide: func(ctx context.Context, id string, canaries []string, ready func()) (fleetroll.Decision, error) {
			return s.pauseUntilNewer(ctx, j, decide, id, canaries, ready)
		}}
		if (before != nil && before.Kind == fleetroll.DecisionPromote) || len(names) > c.N {
			hooks.Canary = nil // promoted before the takeover
		}
	}
	opts.Hooks = hooks
	opts.OnEvent = func(e fleetroll.Event) { s.progress(ctx, j, e) }
	roller, err := fleetroll.NewRoller(s.opt.Fleet, opts)
	if err != nil {
		return nil, err
	}
	policy = safety.Policy.WithDefaults(j.Service)
	to, deploy, err := s.releaseOf(ctx, policy, j.Trigger)
	if err != nil {
		return nil, fmt.Errorf("%s: %w; nothing was touched", j.Service, err)
	}
	var takenOver *fleetroll.TakenOver
	if deploy && j.Resume != nil {
		if takenOver, err = s.takenOver(ctx, j, names, done); err != nil {
			return nil, fmt.Errorf("%s: %w; nothing was touched", j.Service, err)
		}
	}
	var rep *fleetroll.Report
	switch {
	case len(plan.Units) == 0 && len(done) > 0:
		// Everything was restarted before the takeover.
		now := s.opt.Clock.Now()
		rep = &fleetroll.Report{Version: fleetroll.SchemaVersion, ID: j.ID, Service: j.Service, Status: fleetroll.StatusSucceeded, Started: now, Finished: now}
	case !deploy:
		rep, err = roller.Roll(ctx, plan)
	default:
		rep, err = roller.Deploy(ctx, plan, fleetroll.Deploy{
			To: to, Releases: coord.ReleaseStore{KAPI: s.opt.Etcd}, OnFailure: policy.OnFailure,
			Pull:      fleetroll.PullOptions{Timeout: policy.PullTimeout, Reason: coord.PullReason(s.opt.Etcd)},
			TakenOver: takenOver,
		})
	}
	if rep != nil && len(done) > 0 {
		// The record covers the whole rollout: the units done before the
		// takeover, in the plan's order, then this roll's.
		// A deploy's rollback lists the units done before too.
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
		if j.Resume != nil && !j.Resume.Started.IsZero() {
			rep.Started = j.Resume.Started
		}
	}
	if rep != nil && rep.Canary == nil && before != nil {
		rep.Canary = before
	}
	return rep, err
}

// takenOver is what a deploy resumed from another fleetroll had done: the
// release it replaced (the one before its own in the history, when it had
// written its own), and the units done (names, in the plan's order).
func (s *Server) takenOver(ctx context.Context, j Job, names []string, done map[string]fleetroll.UnitReport) (*fleetroll.TakenOver, error) {
	t := &fleetroll.TakenOver{}
	for _, n := range names {
		t.Done = append(t.Done, done[n])
	}
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	hist, err := coord.ReleaseStore{KAPI: s.opt.Etcd}.History(hctx, j.Service)
	if err != nil {
		return nil, err
	}
	for i, r := range hist { // newest first
		if r.Rollout == j.ID {
			if i+1 < len(hist) {
				t.From = &hist[i+1]
			}
			break
		}
	}
	return t, nil
}

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

// releaseOf is the release a trigger deploys to a service with an image:
// the digest the registry or GitHub sent, or the pushed tag resolved
// through the registry's API (Docker Hub sends no digest). The image is
// the configuration's; only a checked tag or digest comes from the
// trigger. A manual trigger without an image, or a service without one,
// restarts (false).
func (s *Server) releaseOf(ctx context.Context, p fleetroll.Policy, t fleetroll.Trigger) (fleetroll.Release, bool, error) {
	if p.Image == "" || (t.Source == string(SourceManual) && t.Tag == "" && t.Digest == "") {
		return fleetroll.Release{}, false, nil
	}
	digest := t.Digest
	if !fleetroll.ValidDigest(digest) {
		tag := t.Tag
		if tag == "" {
			tag = "latest"
		}
		d, err := s.opt.Resolver.Resolve(ctx, p.Image, tag)
		if err != nil {
			return fleetroll.Release{}, false, err
		}
		digest = d
	}
	image, err := fleetroll.PinnedImage(p.Image, digest)
	if err != nil {
		return fleetroll.Release{}, false, err
	}
	return fleetroll.Release{Image: image, Tag: t.Tag, Trigger: t}, true, nil
}

// progress puts the unit's record carried by a roller event into the
// rollout's record (and, with the durable queue, into its entry).
func (s *Server) progress(ctx context.Context, j Job, e fleetroll.Event) {
	s.store.update(j.ID, change{kind: string(e.Kind), unit: e.Unit, phase: e.Phase}, func(r *fleetroll.Report) {
		if e.Unit == "" && e.Canary != nil {
			// The rollout's own step: its canary pause began or ended.
			r.Status, r.Canary = e.Status, e.Canary
			return
		}
		for i := range r.Units {
			if r.Units[i].Unit == e.Unit {
				r.Units[i] = e.Progress
			}
		}
	})
	if s.durable != nil && j.entry != "" {
		s.durable.progress(ctx, j)
	}
}

// recoverOnly restores what a fleetroll that is gone left in flight on a
// service (its intent record), when there is one: at start-up, and when a
// service's lock expired. It takes the lock like a rollout would.
func (s *Server) recoverOnly(ctx context.Context, service string) {
	svc, ok := s.Config().Service(service)
	if !ok || s.opt.Etcd == nil {
		return
	}
	policy := svc.Policy(s.opt.Policy)
	if policy.Lock == fleetroll.LockOff {
		return
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	in, err := coord.Intents{KAPI: s.opt.Etcd}.Get(gctx, service)
	cancel()
	if err != nil {
		s.log.Warn("intent unreadable", "service", service, "error", err.Error())
		return
	}
	if in == nil {
		return
	}
	policy.Lock = fleetroll.LockWait
	id := fleetroll.NewID()
	opts := svc.RollOptions(s.opt.Roll)
	opts.RolloutID = id
	opts.Logger = s.log.With("service", service)
	safety := coord.Safety{KAPI: s.opt.Etcd, Policy: policy, Fleet: s.opt.Fleet, Owner: s.opt.Owner + ", recovery " + id,
		Rollout: id, Trigger: fleetroll.Trigger{Source: "recover"}, Roll: opts,
		OnRecover: func(msg string) { s.log.Warn(msg, "service", service) }}
	_, release, err := safety.Prepare(ctx, service)
	if err != nil {
		s.log.Error("recovery failed", "service", service, "error", err.Error())
		return
	}
	release()
}

// serviceNames are the configured services.
func (s *Server) serviceNames() []string {
	var out []string
	for _, svc := range s.Config().Services {
		out = append(out, svc.Name)
	}
	return out
}

// report hands the rollout's result to the outbox, for the Docker Hub
// callbacks of its trigger and of the triggers it superseded. It runs once
// the service's slot is free. The description is a short outcome: never
// fleet's addresses or an error's text.
func (s *Server) report(j Job) {
	final, ok := s.store.Get(j.ID)
	if !ok {
		return
	}
	if final.Status.Final() {
		s.notify(string(final.Status), final)
	}
	if len(j.Callbacks) == 0 {
		return
	}
	var urls []string
	for _, cb := range j.Callbacks {
		if !s.opt.Callbacks.Allowed(cb) {
			s.log.Warn("callback skipped: origin not on the allow-list", "rollout_id", j.ID, "callback_origin", originOf(cb))
			continue
		}
		urls = append(urls, cb)
	}
	res := CallbackResult{State: "success", Context: "fleetroll", Description: Outcome(final)}
	switch final.Status {
	case fleetroll.StatusSucceeded:
	case fleetroll.StatusFailed:
		res.State = "failure"
	default:
		res.State = "error"
	}
	if s.opt.PublicURL != "" {
		res.TargetURL = s.statusURL(final.ID)
	}
	if s.outbox == nil || !s.outbox.Post(j.ID, urls, res) {
		s.log.Warn("callbacks not sent: the outbox is closed or full", "rollout_id", j.ID, "callbacks", len(urls))
	}
}

// Outcome is a short, outsider-safe sentence on how a rollout ended: the
// service, the status and, for a halt, the unit and the phase.
func Outcome(r fleetroll.Report) string {
	switch r.Status {
	case fleetroll.StatusSucceeded:
		if done, _ := r.Done(); r.Strategy == fleetroll.StrategyBlueGreen {
			return fmt.Sprintf("%s: %d new unit(s) serve, blue-green", r.Service, done)
		}
		return fmt.Sprintf("%s: %d unit(s) restarted", r.Service, r.Restarted())
	case fleetroll.StatusFailed, fleetroll.StatusInterrupted:
		for _, u := range r.Units {
			if u.Outcome == fleetroll.OutcomeFailed || u.Outcome == fleetroll.OutcomeInterrupted {
				return fmt.Sprintf("%s: rollout %s at %s (%s); %d unit(s) restarted", r.Service, r.Status, u.Unit, u.Phase, r.Restarted())
			}
		}
		return fmt.Sprintf("%s: rollout %s before any unit was touched", r.Service, r.Status)
	default:
		return fmt.Sprintf("%s: rollout %s", r.Service, r.Status)
	}
}

// record saves the rollout in etcd's history, when fleetroll has etcd, so
// that every receiver and fleetroll status can show it.
func (s *Server) record(ctx context.Context, final fleetroll.Report) {
	if s.opt.Etcd == nil {
		return
	}
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := (coord.History{KAPI: s.opt.Etcd}).Save(hctx, final); err != nil {
		s.log.Warn("rollout record not saved", "rollout_id", final.ID, "error", err.Error())
	}
}

// pauseUntilNewer is a canary pause that a newer trigger of the service
// ends: the newer rollout restarts every instance, the canaries too. The
// supersession is written as the pause's decision, so a promote or abort
// that came first wins.
func (s *Server) pauseUntilNewer(ctx context.Context, j Job, decide func(context.Context, string, []string, func()) (fleetroll.Decision, error),
	id string, canaries []string, ready func()) (fleetroll.Decision, error) {
	type result struct {
		d   fleetroll.Decision
		err error
	}
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	got := make(chan result, 1)
	go func() {
		d, err := decide(dctx, id, canaries, ready)
		got <- result{d, err}
	}()
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		select {
		case r := <-got:
			return r.d, r.err
		case <-ctx.Done():
			r := <-got
			return r.d, r.err
		case <-s.queue.Changed():
		case <-check.C:
		}
		if !s.queue.Newer(ctx, j) {
			continue
		}
		d := fleetroll.Decision{Kind: fleetroll.DecisionSupersede, By: s.opt.Owner, Reason: "a newer trigger of " + j.Service + " is queued"}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := coord.Pauses{KAPI: s.opt.Etcd}.Decide(wctx, id, d)
		cancel()
		if err != nil && !errors.Is(err, coord.ErrDecided) {
			s.log.Warn("supersession not recorded", "rollout_id", id, "service", j.Service, "error", err.Error())
			continue
		}
		// The pause sees its decision (this one, or one that came first).
		r := <-got
		return r.d, r.err
	}
}

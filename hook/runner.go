package hook

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
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
	// stopped: shut down, or its lease is in doubt (etcd out of reach):
	// another receiver may take over, so this one neither records an end
	// nor reports one.
	stopped := func(err error) bool {
		return j.entry != "" && (ctx.Err() != nil || errors.Is(err, fleetroll.ErrFenced) || (j.lease != nil && j.lease() != nil))
	}
	// Whether it stopped before its end is decided once: where the
	// runner asks before saving the record, or here when it never began.
	var decided *bool
	rep, err := s.roll(ctx, j, func(rep *fleetroll.Report, err error) bool {
		e := !stopped(err)
		decided = &e
		if e {
			*rep = s.finalOf(j, rep, nil, t0)
		}
		return e
	})
	final := s.finalOf(j, rep, err, t0)
	if (decided != nil && !*decided) || (decided == nil && stopped(err)) {
		s.store.Update(j.ID, func(r *fleetroll.Report) { *r = final.Clone() })
		why := "shutdown"
		if err != nil {
			why = err.Error()
		}
		log.Warn("rollout stopped before its end; its trigger stays queued, to be resumed", "restarted", final.Restarted(), "error", why)
		return false
	}
	if rep == nil {
		// The runner records what it ran; a trigger that failed before
		// the roll began is recorded here. The history first: once the API
		// shows the rollout finished, every receiver and fleetroll status
		// see it too.
		s.record(ctx, final)
	}
	// The metrics first: whoever sees the record's end (the API, a test)
	// then finds it counted.
	s.metrics.rollouts.WithLabelValues(j.Service, string(final.Status)).Inc()
	s.om.finished(final)
	for _, u := range final.Units {
		if u.Outcome == fleetroll.OutcomeRestarted {
			s.metrics.unitRestart.WithLabelValues(j.Service).Observe(time.Duration(u.Total).Seconds())
		}
	}
	s.store.Update(j.ID, func(r *fleetroll.Report) { *r = final.Clone() })
	if err != nil {
		log.Error("rollout "+string(final.Status), "error", err.Error())
	} else {
		log.Info("rollout succeeded", "units", len(final.Units))
	}
	return true
}

// finalOf is the rollout's record at its end: the runner's (nil when the
// roll never began, with err), with the queue's trigger and metadata.
func (s *Server) finalOf(j Job, rep *fleetroll.Report, err error, t0 time.Time) fleetroll.Report {
	final, _ := s.store.Get(j.ID)
	final.By = s.opt.Owner
	if rep != nil {
		final.Version, final.Status, final.Started, final.Finished, final.Units, final.Error = rep.Version, rep.Status, rep.Started, rep.Finished, rep.Units, rep.Error
		final.Release, final.Pull, final.Phase, final.Canary, final.Strategy = rep.Release, rep.Pull, rep.Phase, rep.Canary, rep.Strategy
		final.Prune = rep.Prune
		final.NotLaunched = rep.NotLaunched
		return final
	}
	final.Started, final.Finished = t0, s.opt.Clock.Now()
	final.Status, final.Error = fleetroll.StatusFailed, err.Error()
	if errors.Is(err, context.Canceled) {
		final.Status = fleetroll.StatusInterrupted
	}
	return final
}

// roll builds the rollout's request of the job and runs it. The report is
// nil when the roll never began (no plan, the lock refused, etcd
// unreachable). record adjusts the record before the runner saves it.
func (s *Server) roll(ctx context.Context, j Job, record func(*fleetroll.Report, error) bool) (*fleetroll.Report, error) {
	req, err := s.request(ctx, j)
	if err != nil {
		return nil, err
	}
	req.Record = record
	return s.opt.Run(ctx, req)
}

// request is the rollout request of a queued trigger: the service's
// settings, its trigger, what it deploys, and where its progress goes.
func (s *Server) request(ctx context.Context, j Job) (rollout.Request, error) {
	svc, ok := s.Config().Service(j.Service)
	if !ok {
		return rollout.Request{}, fmt.Errorf("service %q is no longer configured", j.Service)
	}
	set := svc.Settings.Clone()
	if j.entry != "" && set.Lock == rollout.LockFail {
		// A queued trigger is never dropped: it waits for the lock (held
		// by a CLI, or by a receiver gone until its lease ends).
		set.Lock = rollout.LockWait
	}
	req := rollout.Request{ID: j.ID, Service: j.Service, Settings: set, Trigger: j.Trigger, Owner: s.opt.Owner + ", rollout " + j.ID,
		Resume:  j.Resume,
		Deploy:  deployOf(set, j.Trigger),
		OnEvent: func(e fleetroll.Event) { s.progress(ctx, j, e) },
		OnPlanned: func(rec fleetroll.Report) {
			s.store.Update(j.ID, func(r *fleetroll.Report) {
				if j.Resume != nil {
					var done []string
					for _, u := range rec.Units {
						if u.Outcome == fleetroll.OutcomeRestarted {
							done = append(done, u.Unit)
						}
					}
					if len(done) > 0 {
						if r.Queue == nil {
							r.Queue = &fleetroll.QueueInfo{}
						}
						r.Queue.Resumed = append(r.Queue.Resumed, fleetroll.Resumption{At: s.opt.Clock.Now(), By: s.opt.Owner, Done: done})
					}
				}
				r.Started, r.Units = rec.Started, rec.Units
			})
			if s.durable != nil && j.entry != "" {
				s.durable.progress(ctx, j, nil)
			}
		},
		Decide: func(next rollout.DecideFunc) rollout.DecideFunc {
			return func(ctx context.Context, id string, canaries []string, ready func()) (fleetroll.Decision, error) {
				return s.pauseUntilNewer(ctx, j, next, id, canaries, ready)
			}
		},
	}
	return req, nil
}

// deployOf is what a trigger deploys to a service with an image: the
// digest the registry or GitHub sent, or the pushed tag (Docker Hub sends
// no digest), which the runner resolves through the registry's API. A
// manual trigger without a tag or digest, or a service without an image,
// restarts (nil).
func deployOf(set rollout.Settings, t fleetroll.Trigger) *rollout.Change {
	if set.Image == "" || (t.Source == string(SourceManual) && t.Tag == "" && t.Digest == "") {
		return nil
	}
	if fleetroll.ValidDigest(t.Digest) {
		return &rollout.Change{Ref: t.Digest}
	}
	return &rollout.Change{Ref: t.Tag}
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
		s.durable.progress(ctx, j, &coord.EntryEvent{Kind: string(e.Kind), Unit: e.Unit, Phase: e.Phase})
	}
}

// recoverOnly restores what a fleetroll that is gone left in flight on a
// service (its intent record), when there is one: at start-up, and when a
// service's lock expired. It takes the lock like a rollout would.
func (s *Server) recoverOnly(ctx context.Context, service string) {
	svc, ok := s.Config().Service(service)
	if !ok || s.opt.Etcd == nil || runnerOf(s.opt).LockOf(svc.Settings, svc.Settings.Image != "") == rollout.LockOff {
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
	if _, err := runnerOf(s.opt).Recover(ctx, service, svc.Settings, s.opt.Owner+", recovery", nil); err != nil {
		s.log.Error("recovery failed", "service", service, "error", err.Error())
	}
}

// runnerOf is the rollout runner of the options. Options.Clock is the
// queue's: the rollouts run on the real one.
func runnerOf(opt Options) rollout.Runner {
	return rollout.Runner{Fleet: opt.Fleet, Etcd: opt.Etcd, Resolver: opt.Resolver, Logger: opt.Logger}
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
			s.om.callbacks.WithLabelValues(callbackNotAllowed).Inc()
			continue
		}
		urls = append(urls, cb)
	}
	res := CallbackResult{State: "success", Context: "fleetroll", Description: Outcome(final)}
	switch final.Status {
	case fleetroll.StatusSucceeded:
	case fleetroll.StatusFailed, fleetroll.StatusRefused:
		res.State = "failure"
	default:
		res.State = "error"
	}
	if s.opt.PublicURL != "" {
		res.TargetURL = s.pageURL(final.ID)
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
	case fleetroll.StatusRefused:
		return fmt.Sprintf("%s: rollout refused, nothing was touched: its release is quarantined, or its tag is outside the tag policy", r.Service)
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

package hook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
)

// execute runs one rollout to its end: plan, roll, record, count, report
// back. ctx is cancelled on shutdown; the roller then brings the unit it is
// restarting back up before returning.
func (s *Server) execute(ctx context.Context, r Rollout) {
	log := s.log.With("rollout_id", r.ID, "service", r.Service, "request_id", r.Trigger.RequestID)
	log.Info("rollout started", "source", string(r.Trigger.Source), "repository", r.Trigger.Event.Repository, "tag", r.Trigger.Event.Tag)

	rep, err := s.roll(ctx, r)
	now := time.Now().UTC()
	final, _ := s.store.Update(r.ID, func(ro *Rollout) {
		ro.Finished = &now
		ro.Status = StatusSucceeded
		if rep != nil {
			ro.Units = progressFromReport(rep)
		}
		if err != nil {
			ro.Error = err.Error()
			ro.Status = StatusFailed
			if errors.Is(err, context.Canceled) {
				ro.Status = StatusCancelled
			}
		}
	})
	s.record(ctx, final, rep, log)
	s.metrics.rollouts.WithLabelValues(r.Service, string(final.Status)).Inc()
	if rep != nil {
		for _, u := range rep.Units {
			if u.Outcome == fleetroll.OutcomeRestarted {
				s.metrics.unitRestart.WithLabelValues(r.Service).Observe(time.Duration(u.Total).Seconds())
			}
		}
	}
	if err != nil {
		log.Error("rollout "+string(final.Status), "error", err.Error())
	} else {
		log.Info("rollout succeeded", "units", len(final.Units))
	}
	s.report(ctx, final, log)
}

func (s *Server) roll(ctx context.Context, r Rollout) (*fleetroll.Report, error) {
	svc, ok := s.Config().Service(r.Service)
	if !ok {
		return nil, fmt.Errorf("service %q is no longer configured", r.Service)
	}
	plan, err := fleetroll.MakePlan(ctx, s.opt.Fleet, svc.Target())
	if err != nil {
		return nil, fmt.Errorf("plan %s: %w", r.Service, err)
	}
	s.store.Update(r.ID, func(ro *Rollout) {
		ro.Units = nil
		for _, u := range plan.Units {
			ro.Units = append(ro.Units, UnitProgress{Unit: u.Name, Phase: "pending", State: u.State})
		}
	})
	safety := svc.Safety(s.opt.Safety)
	safety.Owner = coord.Owner("fleetroll serve, rollout " + r.ID)
	hooks, release, err := safety.Prepare(ctx, r.Service)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.Service, err)
	}
	defer release()
	opts := svc.RollOptions(s.opt.Roll)
	opts.Hooks = hooks
	opts.RolloutID = r.ID
	opts.Logger = s.log.With("service", r.Service, "request_id", r.Trigger.RequestID)
	opts.OnEvent = func(e fleetroll.Event) { s.progress(r.ID, e) }
	roller, err := fleetroll.NewRoller(s.opt.Fleet, opts)
	if err != nil {
		return nil, err
	}
	return roller.Roll(ctx, plan)
}

// progress records a roller event in the rollout's unit list.
func (s *Server) progress(id string, e fleetroll.Event) {
	s.store.Update(id, func(ro *Rollout) {
		for i := range ro.Units {
			u := &ro.Units[i]
			if u.Unit != e.Unit {
				continue
			}
			u.State = e.State
			switch e.Kind {
			case fleetroll.EventStopped:
				u.Stop = fleetroll.Seconds(e.Elapsed)
			case fleetroll.EventRunning:
				u.Start = fleetroll.Seconds(e.Elapsed)
			case fleetroll.EventFailed:
				if e.Err != nil {
					u.Error = e.Err.Error()
				}
			}
			u.Phase = string(e.Kind)
		}
	})
}

func progressFromReport(rep *fleetroll.Report) []UnitProgress {
	out := make([]UnitProgress, len(rep.Units))
	for i, u := range rep.Units {
		out[i] = UnitProgress{Unit: u.Unit, Phase: string(u.Outcome), Stop: u.Stop, Start: u.Start,
			State: u.LastState, Error: u.Error, LeftStopped: u.LeftStopped, Machine: u.Machine, MovedFrom: u.MovedFrom}
	}
	return out
}

// report posts the result to the Docker Hub callback of the rollout's
// trigger and of every trigger it superseded: their images are deployed (or
// not) by this rollout.
func (s *Server) report(ctx context.Context, final Rollout, log *slog.Logger) {
	targets := []Rollout{final}
	for _, id := range final.Supersedes {
		if ro, ok := s.store.Get(id); ok {
			targets = append(targets, ro)
		}
	}
	res := CallbackResult{State: "success", Context: "fleetroll"}
	switch final.Status {
	case StatusSucceeded:
		res.Description = fmt.Sprintf("%s: %d unit(s) restarted", final.Service, len(final.Units))
	case StatusCancelled:
		res.State, res.Description = "error", fmt.Sprintf("%s: rollout cancelled: %s", final.Service, final.Error)
	default:
		res.State, res.Description = "failure", fmt.Sprintf("%s: rollout failed: %s", final.Service, final.Error)
	}
	if s.opt.PublicURL != "" {
		res.TargetURL = s.statusURL(final.ID)
	}
	// Callbacks go out even during shutdown, each bounded by its timeout.
	cctx := context.WithoutCancel(ctx)
	for _, t := range targets {
		cb := t.Trigger.Event.CallbackURL
		if t.Trigger.Source != SourceDockerHub || cb == "" {
			continue
		}
		if !s.opt.Callbacks.Allowed(cb) {
			log.Warn("callback skipped: origin not on the allow-list", "rollout_id", t.ID, "callback_origin", originOf(cb))
			continue
		}
		if err := s.opt.Callbacks.Send(cctx, cb, res); err != nil {
			log.Warn("callback failed", "rollout_id", t.ID, "callback_origin", originOf(cb), "error", err.Error())
			continue
		}
		log.Info("callback sent", "rollout_id", t.ID, "state", res.State, "callback_origin", originOf(cb))
	}
}

// record saves the rollout in etcd's history, when fleetroll has etcd, so
// that every receiver and fleetroll status can show it.
func (s *Server) record(ctx context.Context, final Rollout, rep *fleetroll.Report, log *slog.Logger) {
	if s.opt.Safety.KAPI == nil {
		return
	}
	rec := coord.Record{ID: final.ID, Service: final.Service, Status: string(final.Status), Error: final.Error,
		Trigger: strings.TrimSpace(fmt.Sprintf("%s %s:%s", final.Trigger.Source, final.Trigger.Event.Repository, final.Trigger.Event.Tag)),
		By:      s.opt.Safety.Owner}
	if final.Started != nil {
		rec.Started = *final.Started
	}
	if final.Finished != nil {
		rec.Finished = *final.Finished
	}
	if rep != nil {
		rec.Units = rep.Units
	}
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := (coord.History{KAPI: s.opt.Safety.KAPI}).Save(hctx, rec); err != nil {
		log.Warn("rollout record not saved", "error", err.Error())
	}
}

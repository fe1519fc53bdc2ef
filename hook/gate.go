package hook

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	client "go.etcd.io/etcd/client/v2"
)

// GateCheckTimeout bounds the etcd reads of the release gate (the
// current release and the quarantine of each matched service).
const GateCheckTimeout = 5 * time.Second

// releaseGate refuses, as a trigger arrives, what the runner would refuse
// under the lock: a digest quarantined for the service, and a sender's tag
// outside its tag policy. A refused trigger is answered 409, recorded as a
// refused rollout (the store and the history) and reported to its Docker
// Hub callback as a failure; nothing is queued for it. What the gate
// cannot tell (a push naming only a tag, etcd out of reach) goes on: the
// runner checks again under the lock.
type releaseGate struct {
	etcd   client.KeysAPI
	config func() *Config
	// refused records a refused trigger and reports it to its callback.
	refused func(ctx context.Context, rec fleetroll.Report, callback string)
}

// check returns the services of order whose trigger goes on, and the 409
// answer of each one refused.
func (g *releaseGate) check(ctx context.Context, log *slog.Logger, requestID string, source Source, received time.Time,
	matches map[string]Event, order []string) (kept []string, refused []map[string]any) {
	if g == nil || g.etcd == nil {
		return order, nil
	}
	ctx, cancel := context.WithTimeout(ctx, GateCheckTimeout)
	defer cancel()
	cfg := g.config()
	for _, service := range order {
		ev := matches[service]
		svc, found := cfg.Service(service)
		if !found || svc.Settings.Image == "" || (ev.Digest == "" && ev.Tag == "") {
			kept = append(kept, service)
			continue
		}
		trigger := ev.Trigger(source, requestID, received)
		ans, rec := g.judge(ctx, log, service, svc.Settings, trigger)
		if ans == nil {
			kept = append(kept, service)
			continue
		}
		g.refused(ctx, *rec, ev.CallbackURL)
		refused = append(refused, ans)
	}
	return kept, refused
}

// judge is the 409 answer and the record of a refused trigger, or nil when
// it goes on.
func (g *releaseGate) judge(ctx context.Context, log *slog.Logger, service string, s rollout.Settings, t fleetroll.Trigger) (map[string]any, *fleetroll.Report) {
	cur, err := coord.ReleaseStore{KAPI: g.etcd}.Current(ctx, service)
	if err != nil {
		log.Warn("release gate: the current release could not be read; the runner checks under the lock", "service", service, "error", err.Error())
		return nil, nil
	}
	var q *coord.Quarantined
	if fleetroll.ValidDigest(t.Digest) {
		if q, err = (coord.Quarantine{KAPI: g.etcd}).Get(ctx, service, t.Digest); err != nil {
			log.Warn("release gate: the quarantine could not be read; the runner checks under the lock", "service", service, "error", err.Error())
			return nil, nil
		}
	}
	why := ""
	if q != nil {
		why = rollout.QuarantineReason(*q)
	} else {
		current, err := rollout.CurrentVersion(ctx, coord.ReleaseStore{KAPI: g.etcd}, service, cur)
		if err != nil {
			log.Warn("release gate: the release history could not be read; the runner checks under the lock", "service", service, "error", err.Error())
			return nil, nil
		}
		why = rollout.TagRefusal(s, t, t.Tag, current)
	}
	if why == "" {
		return nil, nil
	}
	rec := refusedRecord(service, t, cur, s.Image, why)
	log.Warn("trigger refused: "+why, "rollout_id", rec.ID, "service", service, "tag", t.Tag, "digest", t.Digest)
	_, body := problem(http.StatusConflict, fmt.Sprintf("%s: refused, nothing was queued for %s", why, service))
	m := body.(map[string]any)
	m["service"], m["id"], m["status"] = service, rec.ID, string(fleetroll.StatusRefused)
	if t.Tag != "" {
		m["tag"] = t.Tag
	}
	if t.Digest != "" {
		m["digest"] = t.Digest
	}
	if q != nil {
		m["quarantined"] = q
		m["clear"] = fmt.Sprintf("fleetroll release clear %s %s", service, q.Digest)
	} else {
		m["tag_policy"] = string(s.TagPolicy)
		if cur != nil {
			m["current_tag"] = cur.Tag
		}
	}
	return m, &rec
}

// refusedRecord is the record of a trigger refused as it arrived: a
// rollout that never ran.
func refusedRecord(service string, t fleetroll.Trigger, cur *fleetroll.Release, image, why string) fleetroll.Report {
	now := t.Received
	to := fleetroll.Release{Tag: t.Tag, Trigger: t}
	if pinned, err := fleetroll.PinnedImage(image, t.Digest); err == nil {
		to.Image = pinned
	}
	return fleetroll.Report{Version: fleetroll.SchemaVersion, ID: fleetroll.NewID(), Service: service, Status: fleetroll.StatusRefused,
		Trigger: t, Started: now, Finished: now, Units: []fleetroll.UnitReport{},
		Release: &fleetroll.ReleaseChange{From: cur, To: to}, Error: why + "; nothing was queued"}
}

// refusedTrigger records a trigger the gate refused (this receiver's
// store, the history) and reports it: notifications, and its Docker Hub
// callback as a failure.
func (s *Server) refusedTrigger(ctx context.Context, rec fleetroll.Report, callback string) {
	rec.By = s.opt.Owner
	s.store.Put(rec)
	s.record(ctx, rec)
	s.metrics.rollouts.WithLabelValues(rec.Service, string(rec.Status)).Inc()
	s.notify(string(rec.Status), rec)
	if callback == "" || !s.opt.Callbacks.Allowed(callback) {
		return
	}
	res := CallbackResult{State: "failure", Context: "fleetroll", Description: Outcome(rec)}
	if s.opt.PublicURL != "" {
		res.TargetURL = s.pageURL(rec.ID)
	}
	if s.outbox == nil || !s.outbox.Post(rec.ID, []string{callback}, res) {
		s.log.Warn("callback not sent: the outbox is closed or full", "rollout_id", rec.ID)
	}
}

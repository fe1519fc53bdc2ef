package rollout

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
)

// ErrRefused is what a RefusedError is: a deploy refused before anything
// was touched.
var ErrRefused = errors.New("refused")

// RefusedError is a deploy refused under the lock before anything was
// touched: its release is quarantined (Quarantined), or a sender's tag is
// outside the service's tag policy.
type RefusedError struct {
	Service string
	Release fleetroll.Release
	// Quarantined is the digest's quarantine, when that is why.
	Quarantined *coord.Quarantined
	Reason      string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("deploy of %s to %s refused: %s; nothing was touched", e.Release.Image, e.Service, e.Reason)
}

func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// QuarantineReason says why a digest is quarantined and how to clear it:
// the sentence of a refusal (the runner's, the receiver's 409).
func QuarantineReason(q coord.Quarantined) string {
	return fmt.Sprintf("%s is quarantined for %s since rollout %s (%s): %s; `fleetroll release clear %s %s` lifts it",
		q.Digest, q.Service, q.Rollout, q.At.UTC().Format(time.RFC3339), q.Reason, q.Service, q.Digest)
}

// BySender tells a sender's trigger (Docker Hub, a registry, GitHub, a
// poll of the registry) from an operator's (the CLI, POST /rollouts, a
// rollback or a recovery): only a sender's is bound by the tag policy.
func BySender(t fleetroll.Trigger) bool {
	switch t.Source {
	case "", "cli", "manual", fleetroll.TriggerRollback, "recover":
		return false
	}
	return true
}

// TagRefusal judges a sender's tag against the service's tag policy and
// the current version (CurrentVersion; "": none): "" when it is allowed
// (or not a sender's, or the policy is glob), else why not.
func TagRefusal(s Settings, t fleetroll.Trigger, tag, current string) string {
	if !BySender(t) || !s.TagPolicy.Semver() {
		return ""
	}
	if ok, why := s.TagPolicy.Allows(current, tag, s.Prerelease); !ok {
		return why
	}
	return ""
}

// CurrentVersion is the version a sender's tag is judged against: the
// current release's tag when it is a semantic version, else the newest
// such tag of the service's release history (a release deployed by
// digest, or by a tag such as latest, does not let a sender move the
// service below the last version it ran); "" when there is none.
func CurrentVersion(ctx context.Context, store coord.ReleaseStore, service string, cur *fleetroll.Release) (string, error) {
	if cur == nil {
		return "", nil
	}
	if fleetroll.IsVersionTag(cur.Tag) {
		return cur.Tag, nil
	}
	hist, err := store.History(ctx, service)
	if err != nil {
		return "", err
	}
	for _, rel := range hist { // newest first
		if fleetroll.IsVersionTag(rel.Tag) {
			return rel.Tag, nil
		}
	}
	return "", nil
}

// refusal is why the release of d may not be deployed now (nil: it may):
// its digest is quarantined for the service, or a sender's tag is outside
// the tag policy. It runs under the lock, the release resolved.
func (r Runner) refusal(ctx context.Context, req Request, s Settings, d fleetroll.Deploy) (*RefusedError, *fleetroll.Release, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cur, err := d.Releases.Current(cctx, req.Service)
	if err != nil {
		return nil, nil, err
	}
	if req.Resume != nil && cur != nil && cur.Rollout == req.ID {
		return nil, cur, nil // taken over after its release was written: it goes on
	}
	q, err := coord.Quarantine{KAPI: r.Etcd}.Get(cctx, req.Service, d.To.Digest())
	if err != nil {
		return nil, cur, err
	}
	if q != nil {
		return &RefusedError{Service: req.Service, Release: d.To, Quarantined: q, Reason: QuarantineReason(*q)}, cur, nil
	}
	if BySender(req.Trigger) && s.TagPolicy.Semver() {
		current, err := CurrentVersion(cctx, coord.ReleaseStore{KAPI: r.Etcd}, req.Service, cur)
		if err != nil {
			return nil, cur, err
		}
		if why := TagRefusal(s, req.Trigger, d.To.Tag, current); why != "" {
			return &RefusedError{Service: req.Service, Release: d.To, Reason: why}, cur, nil
		}
	}
	return nil, cur, nil
}

// refused is the record of a refused deploy: it never ran.
func (r Runner) refused(req Request, re *RefusedError, cur *fleetroll.Release) *fleetroll.Report {
	now := r.clock().Now()
	rep := &fleetroll.Report{Version: fleetroll.SchemaVersion, ID: req.ID, Service: req.Service, Status: fleetroll.StatusRefused,
		Trigger: req.Trigger, By: req.Owner, Started: now, Finished: now, Units: []fleetroll.UnitReport{},
		Release: &fleetroll.ReleaseChange{From: cur, To: re.Release}, Error: re.Error()}
	if fromCLI(req.Trigger) {
		rep.Trigger = re.Release.Trigger
	}
	return rep
}

// quarantine records the digest a deploy rolled back from (or gave up:
// its rollback failed, or a blue-green deploy failed before its switch),
// or whose canaries were aborted, as bad for the service: a later deploy of it is
// refused until an operator clears it.
func (r Runner) quarantine(ctx context.Context, req Request, rep *fleetroll.Report, err error, log *slog.Logger) {
	if r.Etcd == nil || rep == nil || rep.Release == nil || err == nil {
		return
	}
	var rb *fleetroll.RolledBackError
	var gu *fleetroll.GaveUpError
	var ce *fleetroll.CanaryError
	aborted := errors.As(err, &ce) && ce.Err == nil && ce.Decision.Kind == fleetroll.DecisionAbort
	if !errors.As(err, &rb) && !errors.As(err, &gu) && rep.Status != fleetroll.StatusRolledBack && !aborted {
		return
	}
	to := rep.Release.To
	q := coord.Quarantined{Service: req.Service, Digest: to.Digest(), Image: to.Image, Tag: to.Tag,
		Reason: cmp.Or(rep.Error, err.Error()), Rollout: req.ID, At: r.clock().Now().UTC()}
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := (coord.Quarantine{KAPI: r.Etcd}).Add(qctx, q); err != nil {
		log.Warn("release not quarantined", "digest", q.Digest, "error", err.Error())
		return
	}
	msg := fmt.Sprintf("release %s of %s quarantined: a deploy of it is refused until `fleetroll release clear %s %s`", q.Digest, q.Service, q.Service, q.Digest)
	log.Warn(msg, "digest", q.Digest)
	if req.Say != nil {
		req.Say(msg)
	}
}

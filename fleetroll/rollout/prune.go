package rollout

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
)

// prunes tells whether a rollout that ended with rep prunes: a deploy or
// rollback that succeeded, with etcd (the history), and with the pre-pull
// on (the prune runs the pre-pull's units, which need the site's
// fleetroll-pull@ drop-in).
func (r Runner) prunes(s Settings, rep *fleetroll.Report, err error) bool {
	return err == nil && rep != nil && rep.Status == fleetroll.StatusSucceeded && rep.Release != nil &&
		r.Etcd != nil && s.PrePulls()
}

// prune removes the service's older release images from every machine
// after a release that succeeded: those of its history other than the
// current and the previous (what a rollback needs without the registry).
// It is best effort: a failure is logged and recorded, never the
// rollout's error. Nil when there is nothing to remove.
func (r Runner) prune(ctx context.Context, roller *fleetroll.Roller, service string, s Settings, change *fleetroll.ReleaseChange,
	log *slog.Logger, say func(format string, a ...any)) *fleetroll.PruneReport {
	store := coord.ReleaseStore{KAPI: r.Etcd, Image: s.Image}
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cur, err := store.Current(hctx, service)
	var hist []fleetroll.Release
	if err == nil {
		hist, err = store.History(hctx, service)
	}
	if err != nil {
		log.Warn("prune skipped: the release history could not be read", "error", err.Error())
		return &fleetroll.PruneReport{Keep: []string{}, Remove: []string{}, Machines: []fleetroll.MachinePrune{},
			Error: fmt.Sprintf("not pruned: %v", err)}
	}
	current := ""
	if cur != nil {
		current = cur.Image
	}
	keep := keepOf(hist, current, change)
	// Another service may run the same repository: what it needs (its
	// current and previous releases) is kept too.
	others, err := r.othersNeed(hctx, service, s.Image)
	if err != nil {
		log.Warn("prune skipped: the other services' releases could not be read", "error", err.Error())
		return &fleetroll.PruneReport{Keep: keep, Remove: []string{}, Machines: []fleetroll.MachinePrune{},
			Error: fmt.Sprintf("not pruned: %v", err)}
	}
	for _, img := range others {
		if !slices.Contains(keep, img) {
			keep = append(keep, img)
		}
	}
	remove := prunable(hist, keep)
	if len(remove) == 0 {
		return nil
	}
	say("removing %d older images of %s from every machine (keeping %d)", len(remove), service, len(keep))
	rep, err := roller.Prune(ctx, service, keep, remove, fleetroll.PruneOptions{Timeout: s.PullTimeout, Result: coord.PruneResult(r.Etcd)})
	if err != nil {
		log.Warn("prune incomplete; the rollout succeeded", "error", err.Error())
	}
	return rep
}

// keepOf are the images a prune keeps: the current release, the one a
// rollback would go back to, and both ends of the rollout's change.
func keepOf(hist []fleetroll.Release, current string, change *fleetroll.ReleaseChange) []string {
	var keep []string
	add := func(img string) {
		if img != "" && !slices.Contains(keep, img) {
			keep = append(keep, img)
		}
	}
	add(current)
	if p := coord.PreviousIn(hist, current); p != nil {
		add(p.Image)
	}
	if change != nil {
		add(change.To.Image)
		if change.From != nil {
			add(change.From.Image)
		}
	}
	return keep
}

// prunable are the images of the history (newest first) that a prune
// removes: each pinned image once, none of keep. Nothing outside the
// history is ever named.
func prunable(hist []fleetroll.Release, keep []string) []string {
	var out []string
	for _, rel := range hist {
		if rel.Validate() != nil || slices.Contains(keep, rel.Image) || slices.Contains(out, rel.Image) {
			continue
		}
		if len(out) == fleetroll.MaxPruneImages {
			break
		}
		out = append(out, rel.Image)
	}
	return out
}

// othersNeed are the images that other services of the same repository
// need: their current and previous releases.
func (r Runner) othersNeed(ctx context.Context, service, image string) ([]string, error) {
	store := coord.ReleaseStore{KAPI: r.Etcd}
	services, err := store.Services(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, other := range services {
		if other == service {
			continue
		}
		cur, err := store.Current(ctx, other)
		if err != nil {
			return nil, err
		}
		if cur == nil || cur.Repository() != image {
			continue
		}
		out = append(out, cur.Image)
		hist, err := store.History(ctx, other)
		if err != nil {
			return nil, err
		}
		if p := coord.PreviousIn(hist, cur.Image); p != nil {
			out = append(out, p.Image)
		}
	}
	return out, nil
}

package fleetroll

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/coreos/fleet/schema"
)

// PruneResultsPrefix is where a prune unit leaves what it did with each
// image: PruneResultsPrefix/SERVICE/ROLLOUT/MACHINE (with a TTL).
const PruneResultsPrefix = "/fleetroll/prunes"

// MaxPruneImages bounds the images one prune removes (the release history
// keeps 20 by default).
const MaxPruneImages = 64

// PruneOptions say how to prune.
type PruneOptions struct {
	// Timeout bounds the whole prune (DefaultPullTimeout when zero).
	Timeout time.Duration
	// Result reads what a prune unit left at
	// PruneResultsPrefix/SERVICE/ROLLOUT/MACHINE (etcd); "" when nothing.
	Result func(ctx context.Context, key string) string
}

// PruneReport is the removal of a service's older releases after a
// rollout that succeeded: the images kept everywhere, those to remove, and
// what each machine did.
type PruneReport struct {
	Keep     []string       `json:"keep"`
	Remove   []string       `json:"remove"`
	Seconds  Seconds        `json:"seconds"`
	Machines []MachinePrune `json:"machines"`
	// Error is why the prune did not run on every machine, when it did not.
	Error string `json:"error,omitempty"`
}

// MachinePrune is the prune on one machine: the images it removed, those
// it kept (the engine refused: an image in use by a container) and those
// it did not have.
type MachinePrune struct {
	Machine string      `json:"machine"`
	Unit    string      `json:"unit"`
	Seconds Seconds     `json:"seconds"`
	Removed []string    `json:"removed,omitempty"`
	Kept    []KeptImage `json:"kept,omitempty"`
	Absent  []string    `json:"absent,omitempty"`
	Error   string      `json:"error,omitempty"`
}

// KeptImage is an image a machine was asked to remove and kept, and why.
type KeptImage struct {
	Image string `json:"image"`
	Why   string `json:"why"`
}

// PruneUnit returns fleetroll's one-shot unit that removes images on one
// machine: an instance of the pre-pull's template (fleetroll-pull@, whose
// drop-in names the engine), fleetroll-pull@SERVICE-ROLLOUT-MACHINE-prune.
// It is built only from validated pinned images and names that fleetroll
// checked. The engine removes an image without force: one in use by a
// container is kept. What it did with each image goes to etcd at the key
// it returns.
func PruneUnit(service, rollout, machineID string, images []string) (*schema.Unit, string, error) {
	if err := ValidateServiceName(service); err != nil {
		return nil, "", err
	}
	if !ValidRolloutID(rollout) {
		return nil, "", fmt.Errorf("rollout ID %q is not 12 hex digits", rollout)
	}
	if !validMachineID(machineID) {
		return nil, "", fmt.Errorf("machine ID %q: want letters, digits and dashes", machineID)
	}
	if len(images) == 0 || len(images) > MaxPruneImages {
		return nil, "", fmt.Errorf("prune: %d images, want 1 to %d", len(images), MaxPruneImages)
	}
	for _, img := range images {
		if err := (Release{Image: img}).Validate(); err != nil {
			return nil, "", err
		}
	}
	short := shortID(machineID)
	name := PullPrefix + service + "-" + rollout + "-" + short + "-prune.service"
	key := PruneResultsPrefix + "/" + service + "/" + rollout + "/" + short
	opt := func(section, name, value string) *schema.UnitOption {
		return &schema.UnitOption{Section: section, Name: name, Value: value}
	}
	// Each image: absent, removed, or kept with the engine's last line.
	// The result, one entry per image after a ';', goes to etcd.
	script := `res=; for i in $$REMOVE; do ` +
		`if ! "$$DOCKER" image inspect "$$i" >/dev/null 2>&1; then res="$$res;absent $$i"; ` +
		`elif out=$$("$$DOCKER" rmi "$$i" 2>&1); then res="$$res;removed $$i"; ` +
		`else res="$$res;kept $$i $$(echo "$$out" | tail -n 1 | tr -d ";" | cut -c1-200)"; fi; done; ` +
		`echo "$$res"; ` +
		`curl -sS -m 5 -o /dev/null -X PUT "$$ETCD/v2/keys$$RESULT_KEY" --data-urlencode "value=$$res" -d ttl=3600`
	u := &schema.Unit{Name: name, DesiredState: "launched", Options: []*schema.UnitOption{
		opt("Unit", "Description", fmt.Sprintf("fleetroll: remove %d older images of %s (rollout %s)", len(images), service, rollout)),
		opt("Service", "Type", "oneshot"),
		opt("Service", "RemainAfterExit", "yes"),
		opt("Service", "Environment", "DOCKER=/usr/bin/docker"),
		opt("Service", "Environment", "ETCD=http://127.0.0.1:2379"),
		opt("Service", "Environment", `"REMOVE=`+strings.Join(images, " ")+`"`),
		opt("Service", "Environment", "RESULT_KEY="+key),
		opt("Service", "ExecStart", "/bin/sh -c '"+script+"'"),
		opt("X-Fleet", "MachineID", machineID),
	}}
	return u, key, nil
}

// ParsePruneResult reads what a prune unit left: for each image asked
// for, absent, removed, or kept and why. Entries naming an image not asked
// for are ignored; an image the result does not name is missing.
func ParsePruneResult(result string, asked []string) (m MachinePrune, missing []string) {
	seen := map[string]bool{}
	for entry := range strings.SplitSeq(result, ";") {
		verb, rest, _ := strings.Cut(strings.TrimSpace(entry), " ")
		img, why, _ := strings.Cut(rest, " ")
		if !slices.Contains(asked, img) || seen[img] {
			continue
		}
		seen[img] = true
		switch verb {
		case "removed":
			m.Removed = append(m.Removed, img)
		case "absent":
			m.Absent = append(m.Absent, img)
		case "kept":
			m.Kept = append(m.Kept, KeptImage{Image: img, Why: cmp.Or(strings.TrimSpace(why), "the engine refused")})
		default:
			seen[img] = false
		}
	}
	for _, img := range asked {
		if !seen[img] {
			missing = append(missing, img)
		}
	}
	return m, missing
}

// PrunedStatus judges a prune unit as PulledStatus judges a pull.
func PrunedStatus(st *schema.UnitState) (string, bool, error) {
	switch {
	case st == nil:
		return "waiting for fleet to schedule the prune", false, nil
	case st.SystemdActiveState == "active":
		return "pruned", true, nil
	case st.SystemdActiveState == "failed":
		return "", false, errors.New("the prune unit failed")
	}
	return "pruning (" + DescribeState(st) + ")", false, nil
}

// Prune removes the service's images named in remove from every machine
// fleet lists, in parallel, through one-shot units pinned to each machine
// (the pre-pull's template), and keeps those named in keep: an image in
// both is kept. It is the clean-up after a release: every machine, since
// an instance fleet moved left its images behind where it ran. The units
// are destroyed before it returns, whatever happens. The report says what
// each machine removed, kept and did not have; the error, when there is
// one, is the first machine's failure (nothing else is undone by it).
func (r *Roller) Prune(ctx context.Context, service string, keep, remove []string, opt PruneOptions) (*PruneReport, error) {
	clock := r.opt.Clock
	t0 := clock.Now()
	todo := []string{}
	for _, img := range remove {
		if !slices.Contains(keep, img) && !slices.Contains(todo, img) {
			todo = append(todo, img)
		}
	}
	rep := &PruneReport{Keep: append([]string{}, keep...), Remove: todo, Machines: []MachinePrune{}}
	fail := func(err error) (*PruneReport, error) {
		rep.Error, rep.Seconds = err.Error(), Seconds(clock.Now().Sub(t0))
		return rep, err
	}
	if len(todo) == 0 {
		return rep, nil
	}
	timeout := opt.Timeout
	if timeout <= 0 {
		timeout = DefaultPullTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ips, err := r.fleet.MachineIPs(ctx)
	if err != nil {
		return fail(fmt.Errorf("prune %s: fleet's machines: %w", service, err))
	}
	ids := make([]string, 0, len(ips))
	for id := range ips {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	units := make([]*schema.Unit, len(ids))
	keys := make([]string, len(ids))
	for i, id := range ids {
		u, key, err := PruneUnit(service, r.opt.RolloutID, id, todo)
		if err != nil {
			return fail(fmt.Errorf("prune %s: %w", service, err))
		}
		units[i], keys[i] = u, key
		rep.Machines = append(rep.Machines, MachinePrune{Machine: shortID(id), Unit: u.Name})
	}
	r.opt.Logger.Info("prune", "rollout_id", r.opt.RolloutID, "service", service, "images", len(todo), "machines", len(ids))
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, u := range units {
			err := r.until(dctx, clock.Now().Add(20*time.Second), 20*time.Second, func(ctx context.Context) (bool, error) {
				err := r.fleet.DestroyUnit(ctx, u.Name)
				return err == nil || errors.Is(err, ErrNotFound), err
			})
			if err != nil && !errors.Is(err, ErrNotFound) {
				r.opt.Logger.Error("prune unit not destroyed", "rollout_id", r.opt.RolloutID, "unit", u.Name, "error", err.Error())
			}
		}
	}()
	r.states = nil // one unit each: polled on its own
	deadline := t0.Add(timeout)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for i, u := range units {
		wg.Go(func() {
			err := r.pullOne(ctx, u, deadline, timeout, PrunedStatus)
			var m MachinePrune
			var missing []string
			if err == nil {
				text := ""
				if opt.Result != nil {
					text = opt.Result(context.WithoutCancel(ctx), keys[i])
				}
				m, missing = ParsePruneResult(text, todo)
				if len(missing) > 0 {
					err = fmt.Errorf("the prune unit left no word on %s", strings.Join(missing, ", "))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			p := &rep.Machines[i]
			p.Removed, p.Kept, p.Absent = m.Removed, m.Kept, m.Absent
			p.Seconds = Seconds(clock.Now().Sub(t0))
			log := r.opt.Logger.With("rollout_id", r.opt.RolloutID, "service", service, "machine", p.Machine, "unit", u.Name)
			if err != nil {
				p.Error = err.Error()
				log.Warn("prune failed on a machine", "error", p.Error)
				if first == nil {
					first = fmt.Errorf("prune %s on machine %s: %w", service, p.Machine, err)
				}
				return
			}
			log.Info("pruned", "removed", len(p.Removed), "kept", len(p.Kept), "absent", len(p.Absent))
		})
	}
	wg.Wait()
	rep.Seconds = Seconds(clock.Now().Sub(t0))
	return rep, first
}

package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/coreos/fleet/schema"
)

// DefaultPullTimeout bounds the pre-pull of a release on every machine.
const DefaultPullTimeout = 10 * time.Minute

// PullPrefix is the name of fleetroll's pre-pull units:
// fleetroll-pull@SERVICE-ROLLOUT-MACHINE.service. Being instances of one
// template, they take the site's settings (DOCKER, ETCD) from a drop-in
// fleetroll-pull@.service.d/, as the service's units do.
const PullPrefix = "fleetroll-pull@"

// PullErrorsPrefix is where a failed pull leaves the engine's last words:
// PullErrorsPrefix/SERVICE/ROLLOUT/MACHINE (with a TTL), for fleetroll to
// name the registry's error.
const PullErrorsPrefix = "/fleetroll/pulls"

// MachinePull is the pre-pull on one machine.
type MachinePull struct {
	Machine string  `json:"machine"`
	Unit    string  `json:"unit"`
	Seconds Seconds `json:"seconds"`
	// Why this machine pulls: the instances it runs, or that an instance
	// fleet had not placed yet could land on it.
	Why   string `json:"why,omitempty"`
	Error string `json:"error,omitempty"`
}

// PlacementWait bounds how long a pre-pull waits for fleet to publish the
// machine of an instance it has not placed yet; past it, every machine
// pulls.
const PlacementWait = 10 * time.Second

// PullReport is the pre-pull of a rollout: the image, and each machine's
// pull in parallel.
type PullReport struct {
	Image    string        `json:"image"`
	Seconds  Seconds       `json:"seconds"`
	Machines []MachinePull `json:"machines"`
}

// PullError is a pre-pull that failed: nothing was stopped.
type PullError struct {
	Image   string
	Machine string
	Err     error
}

func (e *PullError) Error() string {
	return fmt.Sprintf("pull %s on machine %s: %v; no instance was touched", e.Image, e.Machine, e.Err)
}

func (e *PullError) Unwrap() error { return e.Err }

// PullOptions say how to pre-pull.
type PullOptions struct {
	// Timeout bounds the whole pre-pull (DefaultPullTimeout when zero).
	Timeout time.Duration
	// Reason, when set, reads what a failed pull unit left at
	// PullErrorsPrefix/SERVICE/ROLLOUT/MACHINE (etcd); "" when nothing.
	Reason func(ctx context.Context, key string) string
	// PlacementWait bounds the wait for fleet to place an instance
	// (PlacementWait when zero).
	PlacementWait time.Duration
}

// PullUnit returns fleetroll's one-shot unit that pulls image on one
// machine. It is built only from a validated pinned image and names that
// fleetroll checked, never from a payload's text.
func PullUnit(service, rollout, machineID, image string) (*schema.Unit, string, error) {
	if err := ValidateServiceName(service); err != nil {
		return nil, "", err
	}
	if !ValidRolloutID(rollout) {
		return nil, "", fmt.Errorf("rollout ID %q is not 12 hex digits", rollout)
	}
	if err := (Release{Image: image}).Validate(); err != nil {
		return nil, "", err
	}
	short := shortID(machineID)
	if !validMachineID(machineID) {
		return nil, "", fmt.Errorf("machine ID %q: want letters, digits and dashes", machineID)
	}
	name := PullPrefix + service + "-" + rollout + "-" + short + ".service"
	errKey := PullErrorsPrefix + "/" + service + "/" + rollout + "/" + short
	opt := func(section, name, value string) *schema.UnitOption {
		return &schema.UnitOption{Section: section, Name: name, Value: value}
	}
	// The image is present: nothing to do. Otherwise pull it; a failure
	// leaves the engine's last lines in etcd for fleetroll to report.
	script := `if "$$DOCKER" image inspect "$$IMAGE" >/dev/null 2>&1; then echo "$$IMAGE is present"; exit 0; fi; ` +
		`if out=$$("$$DOCKER" pull "$$IMAGE" 2>&1); then echo "pulled $$IMAGE"; exit 0; fi; ` +
		`echo "$$out" >&2; ` +
		`curl -sS -m 5 -o /dev/null -X PUT "$$ETCD/v2/keys$$ERROR_KEY" --data-urlencode "value=$$(echo "$$out" | tail -n 3)" -d ttl=3600; exit 1`
	u := &schema.Unit{Name: name, DesiredState: "launched", Options: []*schema.UnitOption{
		opt("Unit", "Description", "fleetroll: pull "+image+" for "+service+" (rollout "+rollout+")"),
		opt("Service", "Type", "oneshot"),
		opt("Service", "RemainAfterExit", "yes"),
		opt("Service", "Environment", "DOCKER=/usr/bin/docker"),
		opt("Service", "Environment", "ETCD=http://127.0.0.1:2379"),
		opt("Service", "Environment", "IMAGE="+image),
		opt("Service", "Environment", "ERROR_KEY="+errKey),
		opt("Service", "ExecStart", "/bin/sh -c '"+script+"'"),
		opt("X-Fleet", "MachineID", machineID),
	}}
	return u, errKey, nil
}

func validMachineID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

// PulledStatus judges a pre-pull unit: done once systemd reports it active
// (a oneshot with RemainAfterExit), failed when it failed.
func PulledStatus(st *schema.UnitState) (string, bool, error) {
	switch {
	case st == nil:
		return "waiting for fleet to schedule the pull", false, nil
	case st.SystemdActiveState == "active":
		return "pulled", true, nil
	case st.SystemdActiveState == "failed":
		return "", false, errors.New("the pull failed")
	}
	return "pulling (" + DescribeState(st) + ")", false, nil
}

// Pull has every machine that runs one of the plan's units pull image, in
// parallel, through one-shot fleet units pinned to each machine, and waits
// until all have it. Whatever happens (Ctrl-C included) the units are
// destroyed before it returns. A failure is a *PullError naming the machine
// and, when opt.Reason can tell, the registry's error.
func (r *Roller) Pull(ctx context.Context, plan *Plan, image string, opt PullOptions) (*PullReport, error) {
	clock := r.opt.Clock
	t0 := clock.Now()
	rep := &PullReport{Image: image, Machines: []MachinePull{}}
	timeout := opt.Timeout
	if timeout <= 0 {
		timeout = DefaultPullTimeout
	}
	wait := opt.PlacementWait
	if wait <= 0 {
		wait = PlacementWait
	}
	machines, err := r.pullMachines(ctx, plan, min(timeout, wait))
	if err != nil {
		return rep, fmt.Errorf("pull %s: %w", image, err)
	}
	ids := make([]string, 0, len(machines))
	for id := range machines {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	type pull struct {
		unit *schema.Unit
		key  string
	}
	pulls := make([]pull, len(ids))
	for i, id := range ids {
		u, key, err := PullUnit(plan.Service, r.opt.RolloutID, id, image)
		if err != nil {
			return rep, fmt.Errorf("pull %s: %w", image, err)
		}
		pulls[i] = pull{u, key}
		rep.Machines = append(rep.Machines, MachinePull{Machine: shortID(id), Unit: u.Name, Why: strings.Join(machines[id], "; ")})
	}
	r.opt.Logger.Info("pre-pull", "rollout_id", r.opt.RolloutID, "image", image, "machines", len(ids))
	defer func() {
		// Destroyed whatever happened, even when ctx was cancelled.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, p := range pulls {
			err := r.until(dctx, clock.Now().Add(20*time.Second), 20*time.Second, func(ctx context.Context) (bool, error) {
				err := r.fleet.DestroyUnit(ctx, p.unit.Name)
				return err == nil || errors.Is(err, ErrNotFound), err
			})
			if err != nil && !errors.Is(err, ErrNotFound) {
				r.opt.Logger.Error("pre-pull unit not destroyed", "rollout_id", r.opt.RolloutID, "unit", p.unit.Name, "error", err.Error())
			}
		}
	}()
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	deadline := t0.Add(timeout)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first *PullError
	for i, p := range pulls {
		wg.Go(func() {
			err := r.pullOne(pctx, p.unit, deadline, timeout, PulledStatus)
			if err != nil && !errors.Is(err, context.Canceled) && opt.Reason != nil {
				if why := strings.TrimSpace(opt.Reason(context.WithoutCancel(ctx), p.key)); why != "" {
					err = fmt.Errorf("%w: %s", err, why)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			rep.Machines[i].Seconds = Seconds(clock.Now().Sub(t0))
			if err != nil {
				rep.Machines[i].Error = err.Error()
				if first == nil {
					first = &PullError{Image: image, Machine: rep.Machines[i].Machine, Err: err}
					cancel() // one failure halts the rollout: stop waiting for the others
				}
			}
		})
	}
	wg.Wait()
	rep.Seconds = Seconds(clock.Now().Sub(t0))
	if first != nil {
		if ctx.Err() != nil {
			return rep, fmt.Errorf("pull %s interrupted; no instance was touched: %w", image, ctx.Err())
		}
		return rep, first
	}
	return rep, nil
}

// pullMachines are the machines a pre-pull covers, each with why: those
// that run the plan's units. A unit fleet has not placed yet (no machine
// published) is waited for, up to wait; past it, every machine fleet lists
// pulls, since the unit could land on any. A plan with units never covers
// zero machines.
func (r *Roller) pullMachines(ctx context.Context, plan *Plan, wait time.Duration) (map[string][]string, error) {
	machines := map[string][]string{}
	left := plan.Names()
	deadline := r.opt.Clock.Now().Add(wait)
	for {
		var unknown []string
		for _, name := range left {
			st, err := r.fleet.UnitState(ctx, name)
			switch {
			case err != nil && !errors.Is(err, ErrNotFound):
				return nil, fmt.Errorf("where %s runs: %w", name, err)
			case err == nil && st.MachineID != "":
				machines[st.MachineID] = append(machines[st.MachineID], "runs "+name)
			default:
				unknown = append(unknown, name)
			}
		}
		left = unknown
		if len(left) == 0 || !r.opt.Clock.Now().Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-r.opt.Clock.After(r.opt.PollInterval):
		}
	}
	if len(left) > 0 {
		ips, err := r.fleet.MachineIPs(ctx)
		if err != nil {
			return nil, fmt.Errorf("fleet's machines, for %s not placed yet: %w", strings.Join(left, ", "), err)
		}
		why := fmt.Sprintf("%s not placed by fleet after %s: it could land here", strings.Join(left, ", "), wait)
		r.opt.Logger.Warn("pre-pull on every machine: instances not placed yet", "rollout_id", r.opt.RolloutID, "units", strings.Join(left, ","), "machines", len(ips))
		for id := range ips {
			machines[id] = append(machines[id], why)
		}
	}
	if len(machines) == 0 && len(plan.Units) > 0 {
		return nil, errors.New("no machine to pull on: fleet lists none")
	}
	return machines, nil
}

// pullOne creates one pull (or prune) unit and waits until judge says it
// is done.
func (r *Roller) pullOne(ctx context.Context, u *schema.Unit, deadline time.Time, timeout time.Duration,
	judge func(*schema.UnitState) (string, bool, error)) error {
	err := r.until(ctx, deadline, timeout, func(ctx context.Context) (bool, error) {
		// Not abandoned half-way when ctx ends: a create fleet carries out
		// after Pull's destroy would leave the unit behind. It is bounded by
		// the request timeout.
		return true, r.fleet.CreateUnit(context.WithoutCancel(ctx), u)
	})
	if err != nil {
		return err
	}
	var last *schema.UnitState
	return r.waitState(ctx, u.Name, deadline, timeout, judge, &last, nil)
}

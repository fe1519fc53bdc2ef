package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/urfave/cli/v2"
)

// fleetFlags are the fleet connection flags, named as fleetctl names them.
func fleetFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "endpoint", Value: fleetroll.DefaultEndpoint, EnvVars: []string{"FLEETCTL_ENDPOINT", "FLEETROLL_ENDPOINT"},
			Usage: "fleet API endpoint: unix://PATH, http://HOST:PORT or https://HOST:PORT"},
		&cli.DurationFlag{Name: "request-timeout", Value: 10 * time.Second, EnvVars: []string{"FLEETROLL_REQUEST_TIMEOUT"},
			Usage: "timeout of each fleet API request"},
	}
}

func logFlags(level string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-level", Value: level, EnvVars: []string{"FLEETROLL_LOG_LEVEL"}, Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"FLEETROLL_LOG_FORMAT"}, Usage: "text or json (logs go to stderr)"},
	}
}

// rollFlags are the per-roll settings, shared with serve.
func rollFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "ports", EnvVars: []string{"FLEETROLL_PORTS"},
			Usage: "instances to restart: 8901,8902 or 8901-8904 (default: every launched instance)"},
		&cli.DurationFlag{Name: "grace", Value: fleetroll.DefaultGrace, EnvVars: []string{"FLEETROLL_GRACE"},
			Usage: "wait after an instance runs before the next one"},
		&cli.DurationFlag{Name: "stop-timeout", Value: fleetroll.DefaultStopTimeout, EnvVars: []string{"FLEETROLL_STOP_TIMEOUT"},
			Usage: "how long an instance may take to stop"},
		&cli.DurationFlag{Name: "start-timeout", Value: fleetroll.DefaultStartTimeout, EnvVars: []string{"FLEETROLL_START_TIMEOUT"},
			Usage: "how long an instance may take to run again"},
		&cli.DurationFlag{Name: "poll-interval", Value: fleetroll.DefaultPollInterval, EnvVars: []string{"FLEETROLL_POLL_INTERVAL"},
			Usage: "how often to ask fleet for a unit's state"},
		&cli.DurationFlag{Name: "nudge-interval", Value: fleetroll.DefaultNudgeInterval, EnvVars: []string{"FLEETROLL_NUDGE_INTERVAL"},
			Usage: "re-assert a unit's target state this often while fleet has not acted on it (0: off; see docs/how-it-works.md)"},
		&cli.StringFlag{Name: "max-unavailable", Value: "1", EnvVars: []string{"FLEETROLL_MAX_UNAVAILABLE"},
			Usage: "instances down at once, counting those already down: N, or P% of the instances rolled"},
	}
}

// rollOptionsFrom reads rollFlags' settings.
func rollOptionsFrom(c *cli.Context) (fleetroll.Options, error) {
	u, err := fleetroll.ParseUnavailable(c.String("max-unavailable"))
	if err != nil {
		return fleetroll.Options{}, usageErr("--max-unavailable: %w", err)
	}
	return fleetroll.Options{
		Grace:          c.Duration("grace"),
		StopTimeout:    c.Duration("stop-timeout"),
		StartTimeout:   c.Duration("start-timeout"),
		PollInterval:   c.Duration("poll-interval"),
		NudgeInterval:  c.Duration("nudge-interval"),
		MaxUnavailable: u,
	}, nil
}

func restartCommand() *cli.Command {
	flags := append(fleetFlags(), rollFlags()...)
	flags = append(flags,
		&cli.BoolFlag{Name: "dry-run", EnvVars: []string{"FLEETROLL_DRY_RUN"}, Usage: "print the plan and exit"},
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", EnvVars: []string{"FLEETROLL_OUTPUT"}, Usage: "text or json"},
	)
	flags = append(flags, safetyFlags()...)
	flags = append(flags, logFlags("warn")...)
	return &cli.Command{
		Name:      "restart",
		Usage:     "restart a service's instances one at a time",
		ArgsUsage: "SERVICE | UNIT...",
		Description: `Restarts each instance through the fleet API: stop, wait until fleet reports it
stopped, start, wait until it runs on a machine, wait the grace period, then the
next. Halts on the first failure; the remaining instances are not touched.

Examples:
   fleetroll restart my-service --ports 8901,8902,8903
   fleetroll restart my-service --ports 8901-8904 --grace 30s
   fleetroll restart my-service --dry-run            # every launched instance
   fleetroll restart my-service@8901.service my-service@8902.service
   FLEETCTL_ENDPOINT=http://127.0.0.1:49153 fleetroll restart my-service -o json
   fleetroll restart my-service --lock fail --drain --health-path /healthz

Exit codes: 0 all restarted; 1 the roll failed or halted, or fleet could not
be reached; 2 usage or plan errors (bad flags, bad port list, unknown units);
130 interrupted (the unit being restarted is brought back up first).`,
		Flags:        flags,
		Action:       restartAction,
		OnUsageError: onUsageError,
	}
}

// restartOptions is everything a restart needs, validated before any call.
type restartOptions struct {
	endpoint       string
	requestTimeout time.Duration
	target         fleetroll.Target
	roll           fleetroll.Options
	dryRun         bool
	output         string
}

func restartOptionsFrom(c *cli.Context) (*restartOptions, error) {
	o := &restartOptions{
		endpoint:       c.String("endpoint"),
		requestTimeout: c.Duration("request-timeout"),
		dryRun:         c.Bool("dry-run"),
		output:         c.String("output"),
	}
	var err error
	if o.roll, err = rollOptionsFrom(c); err != nil {
		return nil, err
	}
	args := c.Args().Slice()
	switch {
	case len(args) == 0:
		return nil, usageErr("restart: name a service (my-service) or units (my-service@8901.service)")
	case len(args) == 1 && !strings.Contains(args[0], "@"):
		o.target.Service = args[0]
	default:
		o.target.Units = args
	}
	if p := c.String("ports"); p != "" {
		if len(o.target.Units) > 0 {
			return nil, usageErr("restart: --ports goes with a service name, not with unit names")
		}
		inst, err := fleetroll.ParseInstances(p)
		if err != nil {
			return nil, usageErr("--ports: %w", err)
		}
		o.target.Instances = inst
	}
	if _, err := policyFrom(c); err != nil {
		return nil, err // before fleet is asked anything
	}
	return o, o.validate()
}

func (o *restartOptions) validate() error {
	if err := o.target.Validate(); err != nil {
		return usageErr("restart: %w", err)
	}
	if err := o.roll.Validate(); err != nil {
		return usageErr("restart: %w", err)
	}
	for name, d := range map[string]time.Duration{"--stop-timeout": o.roll.StopTimeout, "--start-timeout": o.roll.StartTimeout,
		"--poll-interval": o.roll.PollInterval, "--request-timeout": o.requestTimeout} {
		if d <= 0 {
			return usageErr("%s must be positive, got %s", name, d)
		}
	}
	if o.output != "text" && o.output != "json" {
		return usageErr("--output %q: want text or json", o.output)
	}
	return nil
}

func restartAction(c *cli.Context) error {
	o, err := restartOptionsFrom(c)
	if err != nil {
		return err
	}
	logger, fleet, err := connect(c, o.endpoint, o.requestTimeout)
	if err != nil {
		return err
	}
	ctx := c.Context
	out, errw := c.App.Writer, c.App.ErrWriter

	plan, safety, err := planFor(c, fleet, o, "restart", false)
	if err != nil {
		return err
	}

	for _, n := range plan.NotLaunched {
		fmt.Fprintf(errw, "warning: %s is not launched in fleet: it is not restarted (fleetroll recover %s brings back what a killed fleetroll left down)\n", n, plan.Service)
	}
	if o.dryRun {
		return printPlan(out, o, plan)
	}

	o.roll.RolloutID = fleetroll.NewID()
	o.roll.Logger = logger
	prepareSafety(&safety, o, plan.Service, fleetroll.Trigger{Source: "cli"}, errw)
	hooks, release, err := safety.Prepare(ctx, plan.Service)
	if err != nil {
		return &exitError{exitFailed, fmt.Errorf("restart %s: %w", plan.Service, err)}
	}
	defer release()
	if plan, err = replan(ctx, fleet, o, hooks, plan); err != nil {
		return err
	}
	o.roll.Hooks = hooks
	if b := hooks.BlueGreen; b != nil {
		fmt.Fprintf(errw, "rollout %s: replacing %d unit(s) of %s with new ones on %s (blue-green)\n", o.roll.RolloutID, len(plan.Units), plan.Service, strings.Join(b.Spare, ","))
	} else {
		fmt.Fprintf(errw, "rollout %s: restarting %d unit(s) of %s, %s at a time\n", o.roll.RolloutID, len(plan.Units), plan.Service, o.roll.MaxUnavailable)
	}
	onEvent, _, stopView := progress(ctx, errw, plan)
	defer stopView()
	o.roll.OnEvent = onEvent
	roller, err := fleetroll.NewRoller(fleet, o.roll)
	if err != nil {
		return usageErr("restart: %w", err)
	}
	rep, rollErr := roller.Roll(ctx, plan)
	stopView()
	rep.Trigger = fleetroll.Trigger{Source: "cli"}
	return finish(c, o, safety, logger, rep, rollErr, plan.NotLaunched)
}

// finish records a rollout in etcd's history (when etcd is used), prints it
// and turns its result into the exit code.
func finish(c *cli.Context, o *restartOptions, safety coord.Safety, logger *slog.Logger, rep *fleetroll.Report, rollErr error, notLaunched []string) error {
	ctx, out := c.Context, c.App.Writer
	rep.By = safety.Owner
	if safety.KAPI != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err := coord.History{KAPI: safety.KAPI}.Save(sctx, *rep)
		cancel()
		if err != nil {
			logger.Warn("rollout record not saved", "rollout_id", rep.ID, "error", err.Error())
		}
	}
	if o.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return &exitError{exitFailed, err}
		}
	} else {
		printSummary(out, rep, notLaunched)
	}
	if rollErr == nil {
		return nil
	}
	return exitFor(rep.Status, rollErr)
}

// exitFor carries err with the exit code of a rollout that ended in status
// s without succeeding.
func exitFor(s fleetroll.Status, err error) error {
	switch s {
	case fleetroll.StatusInterrupted:
		return &exitError{exitInterrupted, err}
	case fleetroll.StatusRolledBack:
		return &exitError{exitRolledBack, err}
	case fleetroll.StatusAborted:
		return &exitError{exitAborted, err}
	default:
		return &exitError{exitFailed, err}
	}
}

// planFor builds the safety of the flags and the plan of the options: with
// blue-green, of the instances that serve now (the port sets swap at each
// rollout), while the safety keeps the configured ones to check the record
// against.
func planFor(c *cli.Context, fleet fleetroll.Fleet, o *restartOptions, verb string, needEtcd bool) (*fleetroll.Plan, coord.Safety, error) {
	safety, err := safetyFrom(c, fleet, "fleetroll "+verb+" "+o.target.Service, needEtcd)
	if err != nil {
		return nil, safety, err
	}
	safety.Instances = o.target.Instances
	if p := safety.Policy; p.Strategy == fleetroll.StrategyBlueGreen {
		live, _, err := coord.Lives{KAPI: safety.KAPI}.Resolve(c.Context, o.target.Service, o.target.Instances, p.SparePorts)
		if err != nil {
			return nil, safety, &exitError{exitFailed, fmt.Errorf("%s %s: %w", verb, o.target.Service, err)}
		}
		o.target.Instances = live
	}
	plan, err := makePlan(c.Context, fleet, o)
	return plan, safety, err
}

// replan makes the plan again when the hooks, made under the lock, target
// other instances: another blue-green rollout swapped the sets meanwhile.
func replan(ctx context.Context, fleet fleetroll.Fleet, o *restartOptions, hooks fleetroll.Hooks, plan *fleetroll.Plan) (*fleetroll.Plan, error) {
	t := hooks.Target(o.target)
	if slices.Equal(t.Instances, o.target.Instances) {
		return plan, nil
	}
	o.target = t
	return makePlan(ctx, fleet, o)
}

// prepareSafety tells the safety which rollout it serves (its intent
// record), how to recover a dead holder's units, and where to say what it
// waits for and recovers.
func prepareSafety(safety *coord.Safety, o *restartOptions, service string, trigger fleetroll.Trigger, errw io.Writer) {
	safety.Rollout, safety.Trigger, safety.Roll = o.roll.RolloutID, trigger, o.roll
	safety.OnLockWait = func(holder string) {
		fmt.Fprintf(errw, "waiting for the lock of %s, held by %s\n", service, holder)
	}
	safety.OnRecover = func(msg string) { fmt.Fprintln(errw, msg) }
}

// makePlan plans the options' target; its errors carry their exit codes.
func makePlan(ctx context.Context, fleet fleetroll.Fleet, o *restartOptions) (*fleetroll.Plan, error) {
	plan, err := fleetroll.MakePlan(ctx, fleet, o.target)
	var pe *fleetroll.PlanError
	switch {
	case errors.As(err, &pe):
		return nil, &exitError{exitUsage, err}
	case err != nil && ctx.Err() != nil:
		return nil, &exitError{exitInterrupted, fmt.Errorf("interrupted while planning; nothing was touched: %w", err)}
	case err != nil:
		return nil, &exitError{exitFailed, fmt.Errorf("cannot reach fleet at %s: %w", o.endpoint, err)}
	}
	return plan, nil
}

func printPlan(w io.Writer, o *restartOptions, plan *fleetroll.Plan) error {
	if o.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(plan)
	}
	fmt.Fprintf(w, "plan: restart %d unit(s) of %s, one at a time (grace %s, stop timeout %s, start timeout %s)\n",
		len(plan.Units), plan.Service, o.roll.Grace, o.roll.StopTimeout, o.roll.StartTimeout)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for i, u := range plan.Units {
		fmt.Fprintf(tw, "  %d.\t%s\t%s\n", i+1, u.Name, u.State)
	}
	return tw.Flush()
}

func printEvent(w io.Writer, e fleetroll.Event) {
	switch e.Kind {
	case fleetroll.EventStopping:
		fmt.Fprintf(w, "%s: stopping\n", e.Unit)
	case fleetroll.EventStopped:
		fmt.Fprintf(w, "%s: stopped in %s (%s)\n", e.Unit, e.Elapsed.Round(time.Millisecond), e.State)
	case fleetroll.EventStarting:
		fmt.Fprintf(w, "%s: starting\n", e.Unit)
	case fleetroll.EventRecovering:
		fmt.Fprintf(w, "%s: bringing back up (%v)\n", e.Unit, e.Err)
	case fleetroll.EventRunning:
		fmt.Fprintf(w, "%s: running in %s (%s)\n", e.Unit, e.Elapsed.Round(time.Millisecond), e.State)
	case fleetroll.EventHealthy:
		fmt.Fprintf(w, "%s: healthy and back in after %s\n", e.Unit, e.Elapsed.Round(time.Millisecond))
	case fleetroll.EventFailed:
		fmt.Fprintf(w, "%s: FAILED after %s: %v\n", e.Unit, e.Elapsed.Round(time.Millisecond), e.Err)
	case fleetroll.EventPhase:
		fmt.Fprintf(w, "%s: %s\n", e.Unit, map[fleetroll.Phase]string{fleetroll.PhaseDrain: "draining (out of the proxy)",
			fleetroll.PhaseHealth: "health gate", fleetroll.PhaseGrace: "grace period"}[e.Phase])
	case fleetroll.EventPaused:
		fmt.Fprintf(w, "rollout %s paused after its canaries %s: fleetroll promote %s, or fleetroll abort %s\n",
			e.RolloutID, strings.Join(e.Canary.Units, ", "), e.RolloutID, e.RolloutID)
	case fleetroll.EventDecided:
		if e.Err != nil {
			fmt.Fprintf(w, "rollout %s: %v\n", e.RolloutID, e.Err)
		} else {
			fmt.Fprintf(w, "rollout %s promoted by %s\n", e.RolloutID, e.Canary.By)
		}
	}
}

func printSummary(w io.Writer, rep *fleetroll.Report, notLaunched []string) {
	took := rep.Finished.Sub(rep.Started).Round(time.Millisecond)
	if rep.Strategy == fleetroll.StrategyBlueGreen {
		var launched, retired []string
		for _, u := range rep.Units {
			switch u.Outcome {
			case fleetroll.OutcomeLaunched:
				launched = append(launched, u.Unit)
			case fleetroll.OutcomeRetired:
				retired = append(retired, u.Unit)
			}
		}
		fmt.Fprintf(w, "rollout %s of %s %s (blue-green) in %s: launched %s; retired %s\n", rep.ID, rep.Service, rep.Status, took,
			orNone(launched), orNone(retired))
	} else {
		fmt.Fprintf(w, "rollout %s of %s %s: %d/%d restarted in %s\n", rep.ID, rep.Service, rep.Status, rep.Restarted(), len(rep.Units), took)
	}
	if len(notLaunched) > 0 {
		fmt.Fprintf(w, "  WARNING: not launched, so not restarted: %s\n", strings.Join(notLaunched, ", "))
	}
	if rc := rep.Release; rc != nil {
		from := "none (a first deploy)"
		if rc.From != nil {
			from = rc.From.Image
		}
		fmt.Fprintf(w, "  release: %s -> %s\n", from, rc.To.Image)
	}
	if p := rep.Pull; p != nil {
		fmt.Fprintf(w, "  pre-pull: %d machine(s) in %s\n", len(p.Machines), p.Seconds)
		for _, m := range p.Machines {
			if m.Error != "" {
				fmt.Fprintf(w, "    %s: %s\n", m.Machine, m.Error)
			}
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, u := range rep.Units {
		line := fmt.Sprintf("  %s\t%s", u.Unit, u.Outcome)
		if u.Outcome != fleetroll.OutcomeUntouched {
			line += fmt.Sprintf("\tstop %s\tstart %s", u.Stop, u.Start)
		}
		if u.MovedFrom != "" {
			line += fmt.Sprintf("\tnow on %s, moved from %s", u.Machine, u.MovedFrom)
		}
		if u.LeftStopped {
			line += "\tLEFT DOWN"
		}
		if d := u.ImageDigest; len(d) > 19 {
			line += "\t" + d[:19]
		}
		fmt.Fprintln(tw, line)
	}
	_ = tw.Flush()
}

func orNone(units []string) string {
	if len(units) == 0 {
		return "none"
	}
	return strings.Join(units, ", ")
}

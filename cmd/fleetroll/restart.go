package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	"github.com/urfave/cli/v2"
)

// fleetFlags are the fleet connection flags, named as fleetctl names them.
func fleetFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "endpoint", Value: fleetroll.DefaultEndpoint, EnvVars: []string{"FLEETCTL_ENDPOINT", "FLEETROLL_ENDPOINT"},
			Usage: "fleet API endpoint: unix://PATH, http://HOST:PORT or https://HOST:PORT"},
		&cli.DurationFlag{Name: "request-timeout", Value: 10 * time.Second, EnvVars: []string{"FLEETROLL_REQUEST_TIMEOUT"},
			Usage: "timeout of each fleet API request"},
		&cli.StringFlag{Name: "ca-file", EnvVars: []string{"FLEETCTL_CA_FILE", "FLEETROLL_CA_FILE"},
			Usage: "with an https:// --endpoint: CA that signed fleet's certificate (default: the system's)"},
		&cli.StringFlag{Name: "cert-file", EnvVars: []string{"FLEETCTL_CERT_FILE", "FLEETROLL_CERT_FILE"},
			Usage: "with an https:// --endpoint: client certificate for fleet (with --key-file)"},
		&cli.StringFlag{Name: "key-file", EnvVars: []string{"FLEETCTL_KEY_FILE", "FLEETROLL_KEY_FILE"},
			Usage: "with an https:// --endpoint: client certificate's key"},
	}
}

func logFlags(level string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-level", Value: level, EnvVars: []string{"FLEETROLL_LOG_LEVEL"}, Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"FLEETROLL_LOG_FORMAT"}, Usage: "text or json (logs go to stderr)"},
	}
}

// configFlag reads a service's settings from serve's configuration file.
func configFlag(usage string) cli.Flag {
	return &cli.StringFlag{Name: "config", EnvVars: []string{"FLEETROLL_CONFIG"}, Usage: usage}
}

// rolloutFlags are the flags of restart, deploy and rollback.
func rolloutFlags(skip []string, extra ...cli.Flag) []cli.Flag {
	flags := append(fleetFlags(), configFlag("YAML file of serve: the service's settings are read from it (flags given go over them)"))
	flags = append(flags, extra...)
	flags = append(flags, &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", EnvVars: []string{"FLEETROLL_OUTPUT"}, Usage: "text or json"})
	flags = append(flags, settingsFlags(skip...)...)
	flags = append(flags, etcdFlags()...)
	return append(flags, logFlags("warn")...)
}

func restartCommand() *cli.Command {
	return &cli.Command{
		Name:      "restart",
		Usage:     "restart a service's instances one at a time",
		ArgsUsage: "SERVICE | UNIT...",
		Description: `Restarts each instance through the fleet API: stop, wait until fleet reports it
stopped, start, wait until it runs on a machine, wait the grace period, then the
next. Halts on the first failure; the remaining instances are not touched.

With etcd (fleet's own, found at the default endpoint, or --etcd-endpoints),
it takes the service's lock, writes an intent record before each stop (so that
the next fleetroll brings back what a killed one left down) and records the
rollout for fleetroll status. --config FILE reads the service's settings
from serve's configuration.

Examples:
   fleetroll restart my-service --ports 8901,8902,8903
   fleetroll restart my-service --ports 8901-8904 --grace 30s
   fleetroll restart my-service --dry-run            # every launched instance
   fleetroll restart my-service@8901.service my-service@8902.service
   fleetroll restart my-service --config /etc/fleetroll/config.yaml
   FLEETCTL_ENDPOINT=http://127.0.0.1:49153 fleetroll restart my-service -o json
   fleetroll restart my-service --lock fail --drain --health-path /healthz

Exit codes: 0 all restarted; 1 the roll failed or halted, or fleet or etcd
could not be reached; 2 usage or plan errors (bad flags, bad port list,
unknown units); 4 the canaries were not promoted (fleetroll abort, or an ill
canary at the end of --canary-wait), the other instances untouched; 130
interrupted (the unit being restarted is brought back up first).`,
		Flags: rolloutFlags([]string{"image", "on-failure", "pull-timeout", "no-pre-pull"},
			&cli.BoolFlag{Name: "dry-run", EnvVars: []string{"FLEETROLL_DRY_RUN"}, Usage: "print the plan and exit"}),
		Action: func(c *cli.Context) error {
			return runRollout(c, "restart", nil)
		},
		OnUsageError: onUsageError,
	}
}

// target is the service (or the units) a rollout command names.
func targetOf(c *cli.Context, verb string) (service string, units []string, err error) {
	args := c.Args().Slice()
	switch {
	case len(args) == 0:
		return "", nil, usageErr("%s: name a service (my-service) or units (my-service@8901.service)", verb)
	case len(args) == 1 && !strings.Contains(args[0], "@"):
		service = args[0]
	case verb != "restart":
		return "", nil, usageErr("%s: name one service (my-service)", verb)
	default:
		units = args
		if c.IsSet("ports") {
			return "", nil, usageErr("%s: --ports goes with a service name, not with unit names", verb)
		}
		// The units' service, for its settings (--config).
		for _, u := range units {
			s, _, _ := strings.Cut(u, "@")
			if service != "" && s != service && c.String("config") != "" {
				return "", nil, usageErr("%s: with --config, name the units of one service", verb)
			}
			service = s
		}
	}
	if err := (fleetroll.Target{Service: service, Units: units}).Validate(); err != nil {
		return "", nil, usageErr("%s: %w", verb, err)
	}
	return service, units, nil
}

// runRollout is restart, deploy and rollback: parse, build the request,
// run, print. change, for deploy and rollback, says what is deployed.
func runRollout(c *cli.Context, verb string, change func(s *rollout.Settings) (*rollout.Change, error)) error {
	service, units, err := targetOf(c, verb)
	if err != nil {
		return err
	}
	var deploy *rollout.Change
	settings, err := settingsOf(c, service, func(s *rollout.Settings) error {
		if change == nil {
			return nil
		}
		deploy, err = change(s)
		return err
	})
	if err != nil {
		return err
	}
	output, err := outputOf(c)
	if err != nil {
		return err
	}
	endpoint := c.String("endpoint")
	if c.Duration("request-timeout") <= 0 {
		return usageErr("--request-timeout must be positive")
	}
	logger, fleet, err := connect(c, endpoint, c.Duration("request-timeout"))
	if err != nil {
		return err
	}
	ctx, out, errw := c.Context, c.App.Writer, c.App.ErrWriter
	kapi, noEtcd, err := etcdFor(ctx, c, fleet)
	if err != nil && !c.Bool("dry-run") {
		return err
	}
	req := rollout.Request{ID: fleetroll.NewID(), Service: service, Units: units, Settings: settings,
		Trigger: fleetroll.Trigger{Source: "cli"}, Owner: rollout.Owner("fleetroll " + verb + " " + service), Deploy: deploy}
	reg, err := registryFrom(c)
	if err != nil {
		return err
	}
	runner := rollout.Runner{Fleet: fleet, Etcd: kapi, Resolver: reg, Logger: logger}
	if c.Bool("dry-run") {
		plan, err := runner.Plan(ctx, req)
		if err != nil {
			return planErr(ctx, endpoint, err)
		}
		for _, n := range plan.NotLaunched {
			fmt.Fprintf(errw, "warning: %s is loaded in fleet but not launched: a rollout would not restart it\n", n)
		}
		if s := req.Settings.Complete(service); s.BlueGreen() {
			// The plan of fleet's units is the live set; the new units go
			// on the other set (the spare ports, or the ports).
			next := []string(s.SparePorts)
			if kapi != nil {
				if _, next, err = (coord.Lives{KAPI: kapi}).Resolve(ctx, service, s.Ports, s.SparePorts); err != nil {
					return &exitError{exitFailed, fmt.Errorf("%s: %w", verb, err)}
				}
			}
			return printBlueGreenPlan(out, output, s, plan, next)
		}
		return printPlan(out, output, req.Settings, plan)
	}
	if err := runner.Check(req); err != nil {
		if errors.Is(err, rollout.ErrNeedsEtcd) {
			// Not the user's words: etcd is not there.
			if noEtcd != "" {
				fmt.Fprintln(errw, noEtcd) // why there is none
			}
			return &exitError{exitFailed, fmt.Errorf("%s: %w; nothing was touched", verb, err)}
		}
		return usageErr("%s: %w", verb, err)
	}
	// Said once the rollout is known to go on (its plan made).
	warned := false
	warn := func() {
		if warned {
			return
		}
		warned = true
		if noEtcd != "" {
			fmt.Fprintln(errw, noEtcd)
		}
		if kapi != nil && runner.LockOf(req.Settings, req.Deploy != nil) == rollout.LockOff {
			fmt.Fprintln(errw, "fleetroll: warning: --lock off: no intent record is written, so a fleetroll killed mid-rollout can leave an instance down that nothing brings back")
		}
	}

	var stopView func()
	var view func(fleetroll.Event)
	say := func(msg string) { fmt.Fprintln(errw, msg) }
	req.Say = func(msg string) {
		warn()
		say(msg)
	}
	req.OnPlanned = func(rec fleetroll.Report) {
		warn()
		var names []string
		for _, u := range rec.Units {
			names = append(names, u.Unit)
		}
		switch s := req.Settings; {
		case req.Deploy != nil:
			fmt.Fprintf(errw, "rollout %s: deploying to %d unit(s) of %s\n", req.ID, len(names), service)
		case s.BlueGreen():
			fmt.Fprintf(errw, "rollout %s: replacing %d unit(s) of %s with new ones (blue-green)\n", req.ID, len(names), service)
		default:
			fmt.Fprintf(errw, "rollout %s: restarting %d unit(s) of %s, %s at a time\n", req.ID, len(names), service, s.MaxUnavailable)
		}
		plan := &fleetroll.Plan{Service: service}
		for _, n := range names {
			plan.Units = append(plan.Units, fleetroll.PlannedUnit{Name: n})
		}
		view, say, stopView = progress(ctx, errw, plan)
	}
	req.OnEvent = func(e fleetroll.Event) {
		if view != nil {
			view(e)
		}
	}
	rep, rollErr := runRequest(ctx, runner, req)
	if stopView != nil {
		stopView()
	}
	if rep == nil {
		return planErr(ctx, endpoint, rollErr)
	}
	if output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return &exitError{exitFailed, err}
		}
	} else {
		printSummary(out, rep)
	}
	if rollErr == nil {
		return nil
	}
	return exitFor(rep.Status, rollErr)
}

// runRequest runs a rollout's request (a test sees the request here).
var runRequest = func(ctx context.Context, r rollout.Runner, req rollout.Request) (*fleetroll.Report, error) {
	return r.Run(ctx, req)
}

// planErr gives an error of a rollout that never began its exit code: 2
// for a bad target, 130 when interrupted, 1 otherwise.
func planErr(ctx context.Context, endpoint string, err error) error {
	var pe *fleetroll.PlanError
	switch {
	case errors.As(err, &pe):
		return &exitError{exitUsage, err}
	case ctx.Err() != nil:
		return &exitError{exitInterrupted, fmt.Errorf("interrupted before any unit was touched: %w", err)}
	case errors.Is(err, rollout.ErrFleet):
		return &exitError{exitFailed, fmt.Errorf("cannot reach fleet at %s: %w", endpoint, err)}
	}
	return &exitError{exitFailed, err}
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
	case fleetroll.StatusRefused:
		return &exitError{exitRefused, err}
	default:
		return &exitError{exitFailed, err}
	}
}

func printPlan(w io.Writer, output string, s rollout.Settings, plan *fleetroll.Plan) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(plan)
	}
	how := fmt.Sprintf("%s at a time", s.MaxUnavailable)
	fmt.Fprintf(w, "plan: restart %d unit(s) of %s, %s (grace %s, stop timeout %s, start timeout %s)\n",
		len(plan.Units), plan.Service, how, s.Grace, s.StopTimeout, s.StartTimeout)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for i, u := range plan.Units {
		fmt.Fprintf(tw, "  %d.\t%s\t%s\n", i+1, u.Name, u.State)
	}
	return tw.Flush()
}

// blueGreenPlan is a blue-green dry run's plan (-o json): the live set
// (fleet's units now, which go once the new ones are announced) and the
// new units, with their sidekicks, on the other set of ports.
type blueGreenPlan struct {
	*fleetroll.Plan
	Strategy string        `json:"strategy"`
	New      []newUnitPlan `json:"new_units"`
}

type newUnitPlan struct {
	Name     string `json:"name"`
	Sidekick string `json:"sidekick,omitempty"`
}

func printBlueGreenPlan(w io.Writer, output string, s rollout.Settings, plan *fleetroll.Plan, next []string) error {
	bg := blueGreenPlan{Plan: plan, Strategy: s.Strategy, New: []newUnitPlan{}}
	for _, port := range next {
		n := newUnitPlan{Name: fleetroll.UnitName(plan.Service, port)}
		if s.Sidekick != "" {
			n.Sidekick = fleetroll.UnitName(s.Sidekick, port)
		}
		bg.New = append(bg.New, n)
	}
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(bg)
	}
	fmt.Fprintf(w, "plan: blue-green rollout of %s: %d new unit(s) on ports %s, each placed, running and healthy, then the switch; then the %d live unit(s) go (placement timeout %s, start timeout %s, stop timeout %s)\n",
		plan.Service, len(bg.New), strings.Join(next, ","), len(plan.Units), s.PlacementTimeout, s.StartTimeout, s.StopTimeout)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  new (started first):")
	for i, n := range bg.New {
		side := ""
		if n.Sidekick != "" {
			side = "with " + n.Sidekick
		}
		fmt.Fprintf(tw, "  %d.\t%s\t%s\n", i+1, n.Name, side)
	}
	fmt.Fprintln(tw, "  live (drained, stopped and destroyed after the switch):")
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
			fleetroll.PhaseHealth: "health gate", fleetroll.PhaseWatch: "watched after its start", fleetroll.PhaseGrace: "grace period"}[e.Phase])
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

func printSummary(w io.Writer, rep *fleetroll.Report) {
	notLaunched := rep.NotLaunched
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
			line := m.Why
			if m.Error != "" {
				line = m.Error
			}
			fmt.Fprintf(w, "    %s: %s\n", m.Machine, line)
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

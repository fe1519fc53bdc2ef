package main

import (
	"fmt"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/urfave/cli/v2"
)

func recoverCommand() *cli.Command {
	flags := append(fleetFlags(), &cli.DurationFlag{Name: "start-timeout", Value: fleetroll.DefaultStartTimeout, EnvVars: []string{"FLEETROLL_START_TIMEOUT"},
		Usage: "how long a unit may take to run again"})
	for _, f := range safetyFlags() {
		switch f.Names()[0] {
		case "lock", "canary", "canary-wait":
			continue // recovery always takes the lock, waiting for it, and rolls nothing
		}
		flags = append(flags, f)
	}
	flags = append(flags, logFlags("warn")...)
	return &cli.Command{
		Name:      "recover",
		Usage:     "restore the units a killed fleetroll left in flight, and record its rollout as interrupted",
		ArgsUsage: "SERVICE",
		Description: `Takes the service's lock (waiting for it), reads the intent record a rollout
writes before it drains or stops a unit (/fleetroll/intents/SERVICE) and, when
its fleetroll is gone, starts each unit it names, waits until it runs, passes
the health gate and is announced again (with --health-path and --drain, as the
rollout had them), then records that rollout in the history as interrupted.
restart, deploy, rollback and serve do the same before their own roll.

Exit codes: 0 restored, or nothing to restore; 1 a unit could not be
restored, or etcd or fleet could not be reached; 2 usage errors.`,
		Flags: flags,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErr("recover: name one service (my-service)")
			}
			service := c.Args().First()
			if err := fleetroll.ValidateServiceName(service); err != nil {
				return usageErr("recover: %w", err)
			}
			logger, fleet, err := connect(c, c.String("endpoint"), c.Duration("request-timeout"))
			if err != nil {
				return err
			}
			safety, err := safetyFrom(c, fleet, "fleetroll recover "+service, true)
			if err != nil {
				return err
			}
			safety.Policy.Lock = fleetroll.LockWait
			o := &restartOptions{roll: fleetroll.Options{RolloutID: fleetroll.NewID(), Logger: logger, StartTimeout: c.Duration("start-timeout")}}
			recovered := false
			prepareSafety(&safety, o, service, fleetroll.Trigger{Source: "cli"}, c.App.ErrWriter)
			safety.OnRecover = func(msg string) {
				recovered = true
				fmt.Fprintln(c.App.ErrWriter, msg)
			}
			_, release, err := safety.Prepare(c.Context, service)
			if err != nil {
				return &exitError{exitFailed, fmt.Errorf("recover %s: %w", service, err)}
			}
			release()
			if !recovered {
				fmt.Fprintf(c.App.Writer, "nothing to recover: no rollout of %s was left in flight\n", service)
			}
			return nil
		},
		OnUsageError: onUsageError,
	}
}

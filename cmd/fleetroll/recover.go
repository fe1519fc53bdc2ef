package main

import (
	"fmt"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	"github.com/urfave/cli/v2"
)

func recoverCommand() *cli.Command {
	flags := append(fleetFlags(), configFlag("YAML file of serve: the service's settings (health gate, drain) are read from it"))
	// Recovery always takes the lock, waiting for it, and rolls nothing:
	// of the settings, only what brings a unit back counts.
	flags = append(flags, settingsFlags("ports", "grace", "max-unavailable", "lock", "image", "on-failure", "pull-timeout", "no-pre-pull",
		"canary", "canary-wait", "strategy", "spare-ports", "sidekick", "placement-timeout")...)
	flags = append(flags, etcdFlags()...)
	flags = append(flags, logFlags("warn")...)
	return &cli.Command{
		Name:      "recover",
		Usage:     "restore the units a killed fleetroll left in flight, and record its rollout as interrupted",
		ArgsUsage: "SERVICE",
		Description: `Takes the service's lock (waiting for it), reads the intent record a rollout
writes before it drains or stops a unit (/fleetroll/intents/SERVICE) and, when
its fleetroll is gone, starts each unit it names, waits until it runs, passes
the health gate and is announced again (with --health-path and --drain, or the
service's --config: the intent record does not hold them), then records that
rollout in the history as interrupted. A blue-green rollout's recovery keeps
one full set and destroys the other.
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
			settings, err := settingsOf(c, service, nil)
			if err != nil {
				return err
			}
			logger, fleet, err := connect(c, c.String("endpoint"), c.Duration("request-timeout"))
			if err != nil {
				return err
			}
			kapi, noEtcd, err := etcdFor(c.Context, c, fleet)
			if err != nil {
				return err
			}
			if kapi == nil {
				return &exitError{exitFailed, fmt.Errorf("recover %s: the intent records are in etcd, and there is none: %s", service, noEtcd)}
			}
			r := rollout.Runner{Fleet: fleet, Etcd: kapi, Logger: logger}
			did, err := r.Recover(c.Context, service, settings, rollout.Owner("fleetroll recover "+service),
				func(msg string) { fmt.Fprintln(c.App.ErrWriter, msg) })
			if err != nil {
				return &exitError{exitFailed, err}
			}
			if !did {
				fmt.Fprintf(c.App.Writer, "nothing to recover: no rollout of %s was left in flight\n", service)
			}
			return nil
		},
		OnUsageError: onUsageError,
	}
}

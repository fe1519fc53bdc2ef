package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/urfave/cli/v2"
)

// decideCommand is fleetroll promote and fleetroll abort: a decision on a
// rollout paused after its canaries, through etcd, wherever it runs (a
// restart, a deploy, serve).
func decideCommand(kind fleetroll.DecisionKind) *cli.Command {
	usage := map[fleetroll.DecisionKind]string{
		fleetroll.DecisionPromote: "let a rollout paused after its canaries roll the other instances",
		fleetroll.DecisionAbort:   "stop a rollout paused after its canaries (a deploy rolls the canaries back)",
	}[kind]
	return &cli.Command{
		Name:      string(kind),
		Usage:     usage,
		ArgsUsage: "ROLLOUT-ID",
		Description: `A rollout with --canary N pauses once its first N instances are back, and
waits for this decision (or its --canary-wait). The decision is written to
etcd (/fleetroll/paused/ROLLOUT-ID), where the paused fleetroll watches.

Exit codes: 0 decided; 1 etcd could not be reached, or the pause was decided
by someone else first; 2 usage errors, or no such rollout is paused.`,
		Flags: etcdFlagsUsage("etcd client URLs, comma-separated, where the rollouts are recorded"),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErr("%s: name one rollout ID", kind)
			}
			id, ok := rolloutID(c.Args().First())
			if !ok {
				return usageErr("%s: rollout ID %q: want 12 hex digits", kind, c.Args().First())
			}
			h, err := etcdFrom(c)
			if err != nil {
				return err
			}
			host, _ := os.Hostname()
			d := fleetroll.Decision{Kind: kind, By: fmt.Sprintf("fleetroll %s on %s", kind, host)}
			ps, err := coord.Pauses{KAPI: h}.Decide(c.Context, id, d)
			switch {
			case errors.Is(err, coord.ErrNotPaused):
				return usageErr("%s: %w", kind, err)
			case err != nil:
				return &exitError{exitFailed, fmt.Errorf("%s: %w", kind, err)}
			}
			fmt.Fprintf(c.App.Writer, "rollout %s of %s: %s (canaries %s)\n", id, ps.Service, kind, strings.Join(ps.Canaries, ", "))
			return nil
		},
		OnUsageError: onUsageError,
	}
}

// rolloutID reads a rollout ID as an operator may type it: IDs are 12
// lower-case hex digits, and ABCDEF012345 names the same rollout as
// abcdef012345.
func rolloutID(s string) (string, bool) {
	id := strings.ToLower(s)
	return id, fleetroll.ValidRolloutID(id)
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/urfave/cli/v2"
)

// releaseCommand is fleetroll release list and clear: the digests a
// service must not be deployed again (quarantined by a deploy that rolled
// back from them, or whose canaries were aborted), read and cleared in
// etcd. The etcd flags are the parent's, so that they may follow the
// arguments ("release clear my-service sha256:… --etcd-endpoints …").
func releaseCommand() *cli.Command {
	return &cli.Command{
		Name:  "release",
		Usage: "list or clear a service's quarantined releases (digests a deploy of is refused)",
		Description: `A deploy that rolled back, or whose canaries were aborted, quarantines the
digest it left, for that service, in etcd (/fleetroll/quarantine/SERVICE): a
later deploy of it, by a sender or by fleetroll deploy, is refused (serve
answers 409, the rollout is recorded as refused) until it is cleared.
See docs/releases.md.

Examples:
   fleetroll release list my-service --etcd-endpoints http://10.0.0.1:2379
   fleetroll release list my-service -o json
   fleetroll release clear my-service sha256:4f1c9a0b2c3d…
   fleetroll release clear my-service 4f1c9a0b2c3d

Exit codes: 0 done; 1 etcd could not be reached; 2 usage errors, or (clear)
no such digest is quarantined for the service.`,
		Flags: append(etcdFlagsUsage("etcd client URLs, comma-separated, where the releases are kept"),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", EnvVars: []string{"FLEETROLL_OUTPUT"}, Usage: "text or json (list)"}),
		Subcommands: []*cli.Command{
			{
				Name:         "list",
				Usage:        "show a service's current release and its quarantined digests, newest first",
				ArgsUsage:    "SERVICE",
				Action:       releaseList,
				OnUsageError: onUsageError,
			},
			{
				Name:         "clear",
				Usage:        "lift the quarantine of a digest: a deploy of it goes again",
				ArgsUsage:    "SERVICE DIGEST",
				Description:  "DIGEST is sha256:HEX, or its first 12 hex digits or more.",
				Action:       releaseClear,
				OnUsageError: onUsageError,
			},
		},
		OnUsageError: onUsageError,
	}
}

func releaseList(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("release list: name one service")
	}
	service := c.Args().First()
	if err := fleetroll.ValidateServiceName(service); err != nil {
		return usageErr("release list: %w", err)
	}
	out, err := outputOf(c)
	if err != nil {
		return err
	}
	kapi, err := etcdFrom(c)
	if err != nil {
		return err
	}
	cur, err := coord.ReleaseStore{KAPI: kapi}.Current(c.Context, service)
	if err != nil {
		return &exitError{exitFailed, fmt.Errorf("release list: cannot read etcd at %s: %w", c.String("etcd-endpoints"), err)}
	}
	quarantined, err := coord.Quarantine{KAPI: kapi}.List(c.Context, service)
	if err != nil {
		return &exitError{exitFailed, fmt.Errorf("release list: cannot read etcd at %s: %w", c.String("etcd-endpoints"), err)}
	}
	if out == "json" {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"service": service, "current": cur, "quarantined": quarantined})
	}
	if cur != nil {
		fmt.Fprintf(c.App.Writer, "release:  %s\n", describeRelease(*cur))
	} else {
		fmt.Fprintln(c.App.Writer, "release:  none yet")
	}
	return printQuarantined(c.App.Writer, quarantined)
}

// printQuarantined prints a service's quarantined digests as a table
// (status and release list).
func printQuarantined(w io.Writer, list []coord.Quarantined) error {
	if len(list) == 0 {
		fmt.Fprintln(w, "quarantined: none")
		return nil
	}
	fmt.Fprintf(w, "quarantined: %d (a deploy of them is refused; fleetroll release clear SERVICE DIGEST lifts one)\n", len(list))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DIGEST\tTAG\tROLLOUT\tSINCE\tREASON")
	for _, q := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", q.Digest, orDash(q.Tag), q.Rollout, q.At.Local().Format(time.DateTime), q.Reason)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func releaseClear(c *cli.Context) error {
	if c.NArg() != 2 {
		return usageErr("release clear: name a service and a digest")
	}
	service, digest := c.Args().Get(0), c.Args().Get(1)
	if err := fleetroll.ValidateServiceName(service); err != nil {
		return usageErr("release clear: %w", err)
	}
	if !coord.ValidDigestPrefix(digest) {
		return usageErr("release clear: %q: want sha256:HEX, or its first 12 hex digits or more", digest)
	}
	kapi, err := etcdFrom(c)
	if err != nil {
		return err
	}
	q, err := coord.Quarantine{KAPI: kapi}.Clear(c.Context, service, digest)
	switch {
	case errors.Is(err, coord.ErrNotQuarantined):
		return usageErr("release clear: %w", err)
	case err != nil:
		return &exitError{exitFailed, fmt.Errorf("release clear (etcd at %s): %w", c.String("etcd-endpoints"), err)}
	}
	fmt.Fprintf(c.App.Writer, "%s of %s cleared: a deploy of it goes again (it was quarantined by rollout %s: %s)\n", q.Digest, service, q.Rollout, q.Reason)
	return nil
}

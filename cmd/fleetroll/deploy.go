package main

import (
	"context"
	"fmt"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/fleetroll/release"
	"github.com/urfave/cli/v2"
)

// releaseFlags are the release settings of the roll policy, shared by
// deploy, rollback and serve (whose services may override them).
func releaseFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "on-failure", Value: string(fleetroll.OnFailureHalt), EnvVars: []string{"FLEETROLL_ON_FAILURE"},
			Usage: "when an instance fails on the new release: halt, or rollback (write the previous release back and restart the instances moved)"},
		&cli.DurationFlag{Name: "pull-timeout", Value: fleetroll.DefaultPullTimeout, EnvVars: []string{"FLEETROLL_PULL_TIMEOUT"},
			Usage: "how long every machine may take to pre-pull the release"},
		&cli.StringFlag{Name: "registry-credentials-file", EnvVars: []string{"FLEETROLL_REGISTRY_CREDENTIALS_FILE"},
			Usage: "USER:PASSWORD for the registry, to resolve tags of private images (default: anonymous)"},
		&cli.BoolFlag{Name: "no-pre-pull", EnvVars: []string{"FLEETROLL_NO_PRE_PULL"},
			Usage: "skip the pre-pull: each instance pulls the release as it starts, while it is down (for comparison)"},
		&cli.DurationFlag{Name: "resolve-timeout", Value: release.DefaultTimeout, EnvVars: []string{"FLEETROLL_RESOLVE_TIMEOUT"},
			Usage: "how long resolving a tag to its digest may take"},
	}
}

// releaseCommandFlags: the flags of deploy and rollback. Their lock waits by
// default: a deploy always holds the service's lock.
func releaseCommandFlags(extra ...cli.Flag) []cli.Flag {
	flags := append(fleetFlags(), rollFlags()...)
	flags = append(flags, extra...)
	flags = append(flags, releaseFlags()...)
	flags = append(flags, &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", EnvVars: []string{"FLEETROLL_OUTPUT"}, Usage: "text or json"})
	for _, f := range safetyFlags() {
		if sf, ok := f.(*cli.StringFlag); ok && sf.Name == "lock" {
			c := *sf
			c.Value = string(fleetroll.LockWait)
			c.Usage = "the service's lock in etcd: wait (until it is free) or fail (refuse when held); a deploy always takes it"
			f = &c
		}
		flags = append(flags, f)
	}
	return append(flags, logFlags("warn")...)
}

func deployCommand() *cli.Command {
	return &cli.Command{
		Name:      "deploy",
		Usage:     "move a service to an image pinned by digest: pre-pull it, then restart the instances one at a time",
		ArgsUsage: "SERVICE",
		Description: `Resolves the image to its digest (a tag through the registry's API), has every
machine that runs an instance pull it, writes it as the service's release in
etcd (/fleetroll/releases/SERVICE), then restarts the instances one at a time;
each starts the pinned image (units/my-service@.service). A pull that fails
halts before any instance is stopped. See docs/releases.md.

Examples:
   fleetroll deploy my-service --image registry.example.com/team/my-service:v2
   fleetroll deploy my-service --image registry.example.com/team/my-service@sha256:4f1c...
   fleetroll deploy my-service --image docker.io/team/my-service:v3 --on-failure rollback --health-path /healthz

Exit codes: 0 deployed; 1 the deploy failed or halted (a pull, a unit); 2 usage
errors; 3 a unit failed and the deploy was rolled back (--on-failure rollback):
every instance it moved runs the previous release again; 130 interrupted.`,
		Flags: releaseCommandFlags(&cli.StringFlag{Name: "image", EnvVars: []string{"FLEETROLL_IMAGE"},
			Usage: "REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST"}),
		Action: func(c *cli.Context) error {
			image, ref, err := fleetroll.SplitImageRef(c.String("image"))
			if err != nil {
				return usageErr("deploy: --image: %w", err)
			}
			return deployAction(c, "deploy", image, func(ctx context.Context, _ coord.ReleaseStore, service string) (fleetroll.Release, error) {
				reg, err := registryFrom(c)
				if err != nil {
					return fleetroll.Release{}, err
				}
				digest, err := reg.Resolve(ctx, image, ref)
				if err != nil {
					return fleetroll.Release{}, &exitError{exitFailed, fmt.Errorf("deploy %s: %w; nothing was touched", service, err)}
				}
				r := fleetroll.Release{Image: image + "@" + digest, Trigger: fleetroll.Trigger{Source: "cli", Repository: image, Digest: digest}}
				if !fleetroll.ValidDigest(ref) {
					r.Tag, r.Trigger.Tag = ref, ref
				}
				return r, nil
			})
		},
		OnUsageError: onUsageError,
	}
}

func rollbackCommand() *cli.Command {
	return &cli.Command{
		Name:      "rollback",
		Usage:     "deploy an earlier release of a service (by default the one before the current)",
		ArgsUsage: "SERVICE",
		Description: `Deploys a release from the service's history in etcd, like deploy: pre-pull,
then one instance at a time. --to names it by the rollout that deployed it or
by its digest (sha256:... or its first 12 hex digits or more).

Examples:
   fleetroll rollback my-service
   fleetroll rollback my-service --to 5f0c2a9b1e77
   fleetroll rollback my-service --to sha256:4f1c9a0b2c3d

Exit codes: as deploy's.`,
		Flags: releaseCommandFlags(&cli.StringFlag{Name: "to", EnvVars: []string{"FLEETROLL_ROLLBACK_TO"},
			Usage: "ROLLOUT-ID or DIGEST of the release to return to (default: the previous one)"}),
		Action: func(c *cli.Context) error {
			return deployAction(c, "rollback", "", func(ctx context.Context, store coord.ReleaseStore, service string) (fleetroll.Release, error) {
				var to *fleetroll.Release
				var err error
				if want := c.String("to"); want != "" {
					to, err = store.Find(ctx, service, want)
				} else {
					to, err = store.Previous(ctx, service)
				}
				if err != nil {
					return fleetroll.Release{}, &exitError{exitFailed, fmt.Errorf("rollback %s: %w; nothing was touched", service, err)}
				}
				r := *to
				r.Trigger = fleetroll.Trigger{Source: "cli", Repository: r.Repository(), Tag: r.Tag, Digest: r.Digest()}
				return r, nil
			})
		},
		OnUsageError: onUsageError,
	}
}

// registryFrom is the registry client of the flags.
func registryFrom(c *cli.Context) (release.Registry, error) {
	reg := release.Registry{Timeout: c.Duration("resolve-timeout")}
	if f := c.String("registry-credentials-file"); f != "" {
		auth, err := release.CredentialsFromFile(f)
		if err != nil {
			return reg, usageErr("--registry-credentials-file: %w", err)
		}
		reg.Auth = auth
	}
	return reg, nil
}

// deployAction runs deploy or rollback: plan, lock, the release to deploy
// (chosen under the lock), then the roller's Deploy.
func deployAction(c *cli.Context, verb, image string,
	choose func(ctx context.Context, store coord.ReleaseStore, service string) (fleetroll.Release, error)) error {
	o, err := restartOptionsFrom(c)
	if err != nil {
		return err
	}
	if o.target.Service == "" || len(o.target.Units) > 0 {
		return usageErr("%s: name one service (my-service)", verb)
	}
	logger, fleet, err := connect(c, o.endpoint, o.requestTimeout)
	if err != nil {
		return err
	}
	ctx, errw := c.Context, c.App.ErrWriter
	plan, safety, err := planFor(c, fleet, o, verb, true)
	if err != nil {
		return err
	}
	store := coord.ReleaseStore{KAPI: safety.KAPI}
	if image == "" {
		// rollback: the service's own image.
		cur, err := store.Current(ctx, plan.Service)
		if err != nil {
			return &exitError{exitFailed, fmt.Errorf("%s %s: %w", verb, plan.Service, err)}
		}
		if cur == nil {
			return &exitError{exitFailed, fmt.Errorf("%s %s: it has no release yet (deploy one first); nothing was touched", verb, plan.Service)}
		}
		image = cur.Repository()
	}
	safety.Policy.Image = image
	policy := safety.Policy.WithDefaults(plan.Service)
	o.roll.RolloutID = fleetroll.NewID()
	o.roll.Logger = logger
	prepareSafety(&safety, o, plan.Service, fleetroll.Trigger{Source: "cli"}, errw)
	hooks, unlock, err := safety.Prepare(ctx, plan.Service)
	if err != nil {
		return &exitError{exitFailed, fmt.Errorf("%s %s: %w", verb, plan.Service, err)}
	}
	defer unlock()
	if plan, err = replan(ctx, fleet, o, hooks, plan); err != nil {
		return err
	}
	to, err := choose(ctx, store, plan.Service)
	if err != nil {
		return err
	}
	o.roll.Hooks = hooks
	fmt.Fprintf(errw, "rollout %s: deploying %s to %d unit(s) of %s\n", o.roll.RolloutID, to.Image, len(plan.Units), plan.Service)
	onEvent, say, stopView := progress(ctx, errw, plan)
	defer stopView()
	o.roll.OnEvent = onEvent
	roller, err := fleetroll.NewRoller(fleet, o.roll)
	if err != nil {
		return usageErr("%s: %w", verb, err)
	}
	rep, rollErr := roller.Deploy(ctx, plan, fleetroll.Deploy{
		To: to, Releases: store, OnFailure: policy.OnFailure, NoPull: c.Bool("no-pre-pull"),
		Pull: fleetroll.PullOptions{Timeout: policy.PullTimeout, Reason: coord.PullReason(safety.KAPI)},
		Note: say,
	})
	stopView()
	rep.Trigger = to.Trigger
	return finish(c, o, safety, logger, rep, rollErr, plan.NotLaunched)
}

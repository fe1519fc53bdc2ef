package main

import (
	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/release"
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/urfave/cli/v2"
)

// registryFlags say how tags are resolved to digests (deploy, serve).
func registryFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "registry-credentials-file", EnvVars: []string{"FLEETROLL_REGISTRY_CREDENTIALS_FILE"},
			Usage: "USER:PASSWORD for every registry, to resolve tags of private images (default: docker's config.json, $DOCKER_CONFIG or ~/.docker, for the registry, else anonymous)"},
		&cli.DurationFlag{Name: "resolve-timeout", Value: release.DefaultTimeout, EnvVars: []string{"FLEETROLL_RESOLVE_TIMEOUT"},
			Usage: "how long resolving a tag to its digest may take"},
	}
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
halts before any instance is stopped. A deploy always holds the service's
lock. See docs/releases.md.

Examples:
   fleetroll deploy my-service --image registry.example.com/team/my-service:v2
   fleetroll deploy my-service --image registry.example.com/team/my-service@sha256:4f1c...
   fleetroll deploy my-service --image docker.io/team/my-service:v3 --on-failure rollback --health-path /healthz
   fleetroll deploy my-service --config /etc/fleetroll/config.yaml --image registry.example.com/team/my-service:v4

Exit codes: 0 deployed; 1 the deploy failed or halted (a pull, a unit); 2 usage
errors; 3 a unit failed and the deploy was rolled back (--on-failure rollback):
every instance it moved runs the previous release again; 4 the canaries were
aborted; 5 refused: the release is quarantined (fleetroll release list), nothing
was touched; 130 interrupted.`,
		Flags: rolloutFlags(nil, registryFlags()...),
		Action: func(c *cli.Context) error {
			return runRollout(c, "deploy", func(s *rollout.Settings) (*rollout.Change, error) {
				if s.Image == "" {
					return nil, usageErr("deploy: --image is required (or image: in the service's --config)")
				}
				if !c.IsSet("image") {
					return &rollout.Change{}, nil // the configured image's latest
				}
				image, ref, err := fleetroll.SplitImageRef(s.Image)
				if err != nil {
					return nil, usageErr("deploy: --image: %w", err)
				}
				s.Image = image
				return &rollout.Change{Ref: ref}, nil
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
		Flags: rolloutFlags([]string{"image"}, &cli.StringFlag{Name: "to", EnvVars: []string{"FLEETROLL_ROLLBACK_TO"},
			Usage: "ROLLOUT-ID or DIGEST of the release to return to (default: the previous one)"}),
		Action: func(c *cli.Context) error {
			return runRollout(c, "rollback", func(*rollout.Settings) (*rollout.Change, error) {
				return &rollout.Change{Rollback: true, To: c.String("to")}, nil
			})
		},
		OnUsageError: onUsageError,
	}
}

// registryFrom is the registry client of the flags (with its defaults for
// a command without them): the credentials file's, else docker's config's
// for each registry, else anonymous.
func registryFrom(c *cli.Context) (release.Registry, error) {
	reg := release.Registry{Timeout: release.DefaultTimeout, Keychain: authn.DefaultKeychain}
	if c.IsSet("resolve-timeout") {
		reg.Timeout = c.Duration("resolve-timeout")
	}
	if f := c.String("registry-credentials-file"); f != "" {
		auth, err := release.CredentialsFromFile(f)
		if err != nil {
			return reg, usageErr("--registry-credentials-file: %w", err)
		}
		reg.Auth = auth
	}
	if reg.Timeout <= 0 {
		return reg, usageErr("--resolve-timeout must be positive")
	}
	return reg, nil
}

package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	"github.com/fleetroll/fleetroll/hook"
	"github.com/urfave/cli/v2"
	client "go.etcd.io/etcd/client/v2"
)

// setting is one flag of rollout.Settings: its definition (its default
// shown from rollout.Defaults) and how it sets the field. A flag sets its
// field only when given (on the command line or through its env var), so
// that it can go over a service's --config settings.
type setting struct {
	flag  cli.Flag
	apply func(c *cli.Context, name string, s *rollout.Settings) error
}

// settingFlags are the flags of the per-service settings, in one table for
// every command that rolls: restart, deploy, rollback and serve.
func settingFlags() []setting {
	def := rollout.Defaults()
	dur := func(name string, value time.Duration, usage string, set func(*rollout.Settings, time.Duration)) setting {
		return setting{&cli.DurationFlag{Name: name, Value: value, EnvVars: []string{envOf(name)}, Usage: usage},
			func(c *cli.Context, name string, s *rollout.Settings) error { set(s, c.Duration(name)); return nil }}
	}
	str := func(name, value, usage string, set func(*rollout.Settings, string) error) setting {
		return setting{&cli.StringFlag{Name: name, Value: value, EnvVars: []string{envOf(name)}, Usage: usage},
			func(c *cli.Context, name string, s *rollout.Settings) error { return set(s, c.String(name)) }}
	}
	integer := func(name string, value int, usage string, set func(*rollout.Settings, int)) setting {
		return setting{&cli.IntFlag{Name: name, Value: value, EnvVars: []string{envOf(name)}, Usage: usage},
			func(c *cli.Context, name string, s *rollout.Settings) error { set(s, c.Int(name)); return nil }}
	}
	boolean := func(name, usage string, set func(*rollout.Settings, bool)) setting {
		return setting{&cli.BoolFlag{Name: name, EnvVars: []string{envOf(name)}, Usage: usage},
			func(c *cli.Context, name string, s *rollout.Settings) error { set(s, c.Bool(name)); return nil }}
	}
	// The settings of the drain and of the health gate need it on: given
	// without, they are refused rather than dropped.
	drainOf := func(flag string, set func(*fleetroll.DrainPolicy, *cli.Context)) func(c *cli.Context, name string, s *rollout.Settings) error {
		return func(c *cli.Context, name string, s *rollout.Settings) error {
			if s.Drain == nil {
				return fmt.Errorf("--%s needs the drain on (--drain, or drain: in the service's configuration)", flag)
			}
			set(s.Drain, c)
			return nil
		}
	}
	healthOf := func(flag string, set func(*fleetroll.HealthPolicy, *cli.Context)) func(c *cli.Context, name string, s *rollout.Settings) error {
		return func(c *cli.Context, name string, s *rollout.Settings) error {
			if s.Health == nil {
				return fmt.Errorf("--%s needs the health gate on (--health-path, or health: in the service's configuration)", flag)
			}
			set(s.Health, c)
			return nil
		}
	}
	ports := func(flag string, dst func(*rollout.Settings) *rollout.PortList) func(*rollout.Settings, string) error {
		return func(s *rollout.Settings, v string) error {
			in, err := fleetroll.ParseInstances(v)
			if err != nil {
				return fmt.Errorf("--%s: %w", flag, err)
			}
			*dst(s) = in
			return nil
		}
	}
	return []setting{
		str("ports", "", "instances: 8901,8902 or 8901-8904 (default: every launched instance)",
			ports("ports", func(s *rollout.Settings) *rollout.PortList { return &s.Ports })),
		dur("grace", def.Grace, "wait after an instance runs before the next one", func(s *rollout.Settings, d time.Duration) { s.Grace = d }),
		dur("min-healthy-time", def.MinHealthyTime, "watch each instance this long once it runs and passed its health gate, the last one included; "+
			"a failure in it fails the rollout there (0: no watch; it runs alongside --grace)", func(s *rollout.Settings, d time.Duration) { s.MinHealthyTime = d }),
		dur("progress-deadline", def.ProgressDeadline, "halt (or roll back, with --on-failure rollback) when no instance got through its stop, start and watch for this long",
			func(s *rollout.Settings, d time.Duration) { s.ProgressDeadline = d }),
		dur("stop-timeout", def.StopTimeout, "how long an instance may take to stop", func(s *rollout.Settings, d time.Duration) { s.StopTimeout = d }),
		dur("start-timeout", def.StartTimeout, "how long an instance may take to run again", func(s *rollout.Settings, d time.Duration) { s.StartTimeout = d }),
		dur("poll-interval", def.PollInterval, "how often to ask fleet for a unit's state", func(s *rollout.Settings, d time.Duration) { s.PollInterval = d }),
		dur("nudge-interval", def.NudgeInterval, "re-assert a unit's target state this often while fleet has not acted on it (0: off; see docs/how-it-works.md)",
			func(s *rollout.Settings, d time.Duration) { s.NudgeInterval = d }),
		str("max-unavailable", "1", "instances down at once, counting those already down: N, or P% of the instances rolled",
			func(s *rollout.Settings, v string) error {
				u, err := fleetroll.ParseUnavailable(v)
				if err != nil {
					return fmt.Errorf("--max-unavailable: %w", err)
				}
				s.MaxUnavailable = u
				return nil
			}),
		boolean("watch", "wake the waits on fleet's state writes in etcd (watches) instead of at the next poll; on when fleetroll has etcd, --watch=false polls alone (docs/how-it-works.md)",
			func(s *rollout.Settings, b bool) { s.Watch = &b }),
		str("lock", "", "the service's lock in etcd, which guards the intent record: wait (until it is free), fail (refuse when held) or off "+
			"(default: wait when fleetroll has etcd, off without)", func(s *rollout.Settings, v string) error {
			s.Lock = rollout.LockMode(v)
			return nil
		}),
		dur("lock-ttl", def.LockTTL, "TTL of the lock key (kept alive while held)", func(s *rollout.Settings, d time.Duration) { s.LockTTL = d }),
		boolean("drain", "take each instance out of the proxy (its etcd announcement) before stopping it", func(s *rollout.Settings, b bool) {
			switch {
			case !b:
				s.Drain = nil
			case s.Drain == nil:
				s.Drain = &fleetroll.DrainPolicy{}
			}
		}),
		{&cli.StringFlag{Name: "drain-prefix", Value: fleetroll.DefaultDrainPrefix, EnvVars: []string{envOf("drain-prefix")},
			Usage: "with --drain: where instances are announced, PREFIX/INSTANCE"},
			drainOf("drain-prefix", func(d *fleetroll.DrainPolicy, c *cli.Context) { d.Prefix = c.String("drain-prefix") })},
		{&cli.DurationFlag{Name: "drain-delay", Value: fleetroll.DefaultDrainDelay, EnvVars: []string{envOf("drain-delay")},
			Usage: "with --drain: wait after the announcement is removed, for requests in flight"},
			drainOf("drain-delay", func(d *fleetroll.DrainPolicy, c *cli.Context) { d.Delay = c.Duration("drain-delay") })},
		{&cli.DurationFlag{Name: "drain-timeout", Value: fleetroll.DefaultDrainTimeout, EnvVars: []string{envOf("drain-timeout")},
			Usage: "with --drain: wait for the announcement to come back after the start"},
			drainOf("drain-timeout", func(d *fleetroll.DrainPolicy, c *cli.Context) { d.Timeout = c.Duration("drain-timeout") })},
		str("health-path", "", "after the start, GET http://MACHINE_IP:PORT/PATH until healthy (empty: no gate)", func(s *rollout.Settings, v string) error {
			switch {
			case v == "":
				s.Health = nil
			case s.Health == nil:
				s.Health = &fleetroll.HealthPolicy{Path: v}
			default:
				s.Health.Path = v
			}
			return nil
		}),
		{&cli.IntFlag{Name: "health-successes", Value: fleetroll.DefaultHealthSuccesses, EnvVars: []string{envOf("health-successes")},
			Usage: "with --health-path: 2xx answers in a row that make an instance healthy"},
			healthOf("health-successes", func(h *fleetroll.HealthPolicy, c *cli.Context) { h.Successes = c.Int("health-successes") })},
		{&cli.DurationFlag{Name: "health-interval", Value: fleetroll.DefaultHealthInterval, EnvVars: []string{envOf("health-interval")},
			Usage: "with --health-path: between health checks"},
			healthOf("health-interval", func(h *fleetroll.HealthPolicy, c *cli.Context) { h.Interval = c.Duration("health-interval") })},
		{&cli.DurationFlag{Name: "health-timeout", Value: fleetroll.DefaultHealthTimeout, EnvVars: []string{envOf("health-timeout")},
			Usage: "with --health-path: how long an instance may take to become healthy"},
			healthOf("health-timeout", func(h *fleetroll.HealthPolicy, c *cli.Context) { h.Timeout = c.Duration("health-timeout") })},
		str("image", "", "REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]: the service's image; a rollout deploys a release of it pinned by digest (docs/releases.md)",
			func(s *rollout.Settings, v string) error {
				s.Image = v // deploy splits off the tag or digest
				return nil
			}),
		str("on-failure", string(def.OnFailure), "when an instance fails on the new release: halt, or rollback (write the previous release back and restart the instances moved)",
			func(s *rollout.Settings, v string) error {
				s.OnFailure = fleetroll.OnFailure(v)
				return nil
			}),
		dur("pull-timeout", def.PullTimeout, "how long every machine may take to pre-pull the release", func(s *rollout.Settings, d time.Duration) { s.PullTimeout = d }),
		boolean("no-pre-pull", "skip the pre-pull: each instance pulls the release as it starts, while it is down", func(s *rollout.Settings, b bool) {
			on := !b
			s.PrePull = &on
		}),
		str("tag-policy", string(def.TagPolicy), "which pushed tags a sender (serve) may deploy: glob (any its trigger matches), or patch, minor, major: "+
			"semantic versions not older than the current release's, within its major.minor, its major, or any (deploy and rollback are not bound by it)",
			func(s *rollout.Settings, v string) error {
				s.TagPolicy = fleetroll.TagPolicy(v)
				return nil
			}),
		boolean("prerelease", "with --tag-policy patch, minor or major: admit pre-release versions (v1.4.0-rc1)", func(s *rollout.Settings, b bool) { s.Prerelease = b }),
		integer("canary", 0, "pause after this many instances, until fleetroll promote ID or abort ID (0: no pause)", func(s *rollout.Settings, n int) { s.Canary = n }),
		dur("canary-wait", 0, "with --canary: promote on its own after this long if the canaries are still running and healthy (needs --health-path); abort if not",
			func(s *rollout.Settings, d time.Duration) { s.CanaryWait = d }),
		str("strategy", def.Strategy, "rolling (restart in place) or blue-green (new units on --spare-ports, then the old ones go)", func(s *rollout.Settings, v string) error {
			s.Strategy = v
			return nil
		}),
		str("spare-ports", "", "blue-green: the ports the new units take (8911-8913), as many as the live ones; the sets swap at each rollout",
			ports("spare-ports", func(s *rollout.Settings) *rollout.PortList { return &s.SparePorts })),
		str("sidekick", "", "blue-green: the template of each instance's sidekick (my-service-sidekick), launched and destroyed with it", func(s *rollout.Settings, v string) error {
			s.Sidekick = v
			return nil
		}),
		dur("placement-timeout", def.PlacementTimeout, "blue-green: how long fleet may take to place a new unit on a machine",
			func(s *rollout.Settings, d time.Duration) { s.PlacementTimeout = d }),
	}
}

// envOf is a flag's environment variable: FLEETROLL_NAME.
func envOf(flag string) string {
	return "FLEETROLL_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// settingsFlags are the flags of settingFlags, without those in skip.
func settingsFlags(skip ...string) []cli.Flag {
	var out []cli.Flag
	for _, s := range settingFlags() {
		if !slices.Contains(skip, s.flag.Names()[0]) {
			out = append(out, s.flag)
		}
	}
	return out
}

// applyFlags sets on s what the flags given say: a flag not given leaves
// its field as it is.
func applyFlags(c *cli.Context, s *rollout.Settings) error {
	for _, st := range settingFlags() {
		name := st.flag.Names()[0]
		if !c.IsSet(name) {
			continue
		}
		if err := st.apply(c, name, s); err != nil {
			return usageErr("%w", err)
		}
	}
	return nil
}

// settingsOf are a command's settings for a service: the defaults, then the
// service's settings in --config (when given), then the flags given; adjust
// (when set) sees them before they are validated.
func settingsOf(c *cli.Context, service string, adjust func(*rollout.Settings) error) (rollout.Settings, error) {
	s := rollout.Defaults()
	if file := c.String("config"); file != "" {
		cfg, err := hook.LoadConfig(file, rollout.Defaults())
		if err != nil {
			return s, usageErr("--config: %w", err)
		}
		svc, ok := cfg.Service(service)
		if !ok {
			return s, usageErr("--config %s: no service %q in it", file, service)
		}
		s = svc.Settings.Clone()
	}
	if err := applyFlags(c, &s); err != nil {
		return s, err
	}
	if adjust != nil {
		if err := adjust(&s); err != nil {
			return s, err
		}
	}
	if err := s.Validate(); err != nil {
		return s, usageErr("%w", err)
	}
	return s, nil
}

// etcdFlags are the etcd connection flags of the commands that roll.
func etcdFlags() []cli.Flag {
	return etcdFlagsUsage("etcd client URLs, comma-separated: the lock, intent records, history, drain, releases (when not given, the default is used only if it is this fleet cluster's own)")
}

// etcdFlagsUsage are the etcd connection flags, --etcd-endpoints with
// usage (status, promote and abort read etcd at the endpoint as given).
func etcdFlagsUsage(usage string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "etcd-endpoints", Value: "http://127.0.0.1:2379", EnvVars: []string{"FLEETROLL_ETCD_ENDPOINTS"},
			Usage: usage},
		&cli.StringFlag{Name: "etcd-ca-file", EnvVars: []string{"FLEETROLL_ETCD_CA_FILE"}, Usage: "CA of etcd's TLS certificate"},
		&cli.StringFlag{Name: "etcd-cert-file", EnvVars: []string{"FLEETROLL_ETCD_CERT_FILE"}, Usage: "client certificate for etcd"},
		&cli.StringFlag{Name: "etcd-key-file", EnvVars: []string{"FLEETROLL_ETCD_KEY_FILE"}, Usage: "client key for etcd"},
		&cli.DurationFlag{Name: "etcd-timeout", Value: 3 * time.Second, EnvVars: []string{"FLEETROLL_ETCD_TIMEOUT"}, Usage: "timeout of each etcd request"},
	}
}

// etcdFrom connects (does not dial) the etcd of the flags.
func etcdFrom(c *cli.Context) (client.KeysAPI, error) {
	kapi, err := coord.Connect(coord.Config{
		Endpoints: strings.Split(c.String("etcd-endpoints"), ","),
		CAFile:    c.String("etcd-ca-file"), CertFile: c.String("etcd-cert-file"), KeyFile: c.String("etcd-key-file"),
		Timeout: c.Duration("etcd-timeout"),
	})
	if err != nil {
		return nil, usageErr("--etcd-endpoints: %w", err)
	}
	return kapi, nil
}

// etcdFor is the etcd a rolling command uses: the one given (which must
// answer), or the default one when it answers and is this fleet cluster's
// own. Without one it returns nil and the line that says so, for the
// command to print once it goes on: the rollout then runs without the
// lock, intent records and history.
func etcdFor(ctx context.Context, c *cli.Context, fleet fleetroll.Fleet) (client.KeysAPI, string, error) {
	kapi, err := etcdFrom(c)
	if err != nil {
		return nil, "", err
	}
	ep := c.String("etcd-endpoints")
	if c.IsSet("etcd-endpoints") {
		pctx, cancel := context.WithTimeout(ctx, c.Duration("etcd-timeout"))
		defer cancel()
		if err := coord.Ping(pctx, kapi); err != nil {
			return nil, "", &exitError{exitFailed, fmt.Errorf("etcd unreachable, nothing was touched: %s (--etcd-endpoints) does not answer: %w", ep, err)}
		}
		return kapi, "", nil
	}
	// Each call is bounded by its client's timeout; the whole by this.
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	own, why, err := coord.FleetOwn(octx, kapi, fleet)
	if err != nil {
		// Whether fleet's etcd is there cannot be told: refuse rather
		// than go on without the lock.
		return nil, "", &exitError{exitFailed, fmt.Errorf("cannot reach fleet at %s: %w", c.String("endpoint"), err)}
	}
	if !own {
		return nil, fmt.Sprintf("fleetroll: no etcd of this fleet cluster at %s (%s): running without the lock, intent records and history; give --etcd-endpoints to use one", ep, why), nil
	}
	return kapi, "", nil
}

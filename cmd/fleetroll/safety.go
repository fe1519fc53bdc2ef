package main

import (
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/urfave/cli/v2"
)

// safetyFlags: etcd (like fleetctl's), the cluster lock, drain and the
// health gate. Their defaults are the roll policy's (fleetroll/policy.go).
func safetyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "etcd-endpoints", Value: "http://127.0.0.1:2379", EnvVars: []string{"FLEETROLL_ETCD_ENDPOINTS"}, Usage: "etcd client URLs, comma-separated (lock and drain)"},
		&cli.StringFlag{Name: "etcd-ca-file", EnvVars: []string{"FLEETROLL_ETCD_CA_FILE"}, Usage: "CA of etcd's TLS certificate"},
		&cli.StringFlag{Name: "etcd-cert-file", EnvVars: []string{"FLEETROLL_ETCD_CERT_FILE"}, Usage: "client certificate for etcd"},
		&cli.StringFlag{Name: "etcd-key-file", EnvVars: []string{"FLEETROLL_ETCD_KEY_FILE"}, Usage: "client key for etcd"},
		&cli.DurationFlag{Name: "etcd-timeout", Value: 3 * time.Second, EnvVars: []string{"FLEETROLL_ETCD_TIMEOUT"}, Usage: "timeout of each etcd request"},
		&cli.BoolFlag{Name: "watch", EnvVars: []string{"FLEETROLL_WATCH"}, Usage: "wake the waits on fleet's state writes in etcd (watches) instead of at the next poll (docs/how-it-works.md)"},
		&cli.BoolFlag{Name: "record", EnvVars: []string{"FLEETROLL_RECORD"}, Usage: "save each rollout's record in etcd for fleetroll status (always on when the lock or drain uses etcd)"},
		&cli.StringFlag{Name: "lock", Value: string(fleetroll.LockOff), EnvVars: []string{"FLEETROLL_LOCK"}, Usage: "cluster-wide lock per service in etcd: off, fail (refuse when held) or wait"},
		&cli.DurationFlag{Name: "lock-ttl", Value: fleetroll.DefaultLockTTL, EnvVars: []string{"FLEETROLL_LOCK_TTL"}, Usage: "TTL of the lock key (kept alive while held)"},
		&cli.BoolFlag{Name: "drain", EnvVars: []string{"FLEETROLL_DRAIN"}, Usage: "take each instance out of the proxy (its etcd announcement) before stopping it"},
		&cli.StringFlag{Name: "drain-prefix", Value: fleetroll.DefaultDrainPrefix, EnvVars: []string{"FLEETROLL_DRAIN_PREFIX"}, Usage: "where instances are announced: PREFIX/INSTANCE"},
		&cli.DurationFlag{Name: "drain-delay", Value: fleetroll.DefaultDrainDelay, EnvVars: []string{"FLEETROLL_DRAIN_DELAY"}, Usage: "wait after the announcement is removed, for requests in flight"},
		&cli.DurationFlag{Name: "drain-timeout", Value: fleetroll.DefaultDrainTimeout, EnvVars: []string{"FLEETROLL_DRAIN_TIMEOUT"}, Usage: "wait for the announcement to come back after the start"},
		&cli.StringFlag{Name: "health-path", EnvVars: []string{"FLEETROLL_HEALTH_PATH"}, Usage: "after the start, GET http://MACHINE_IP:PORT/PATH until healthy (empty: no gate)"},
		&cli.IntFlag{Name: "health-successes", Value: fleetroll.DefaultHealthSuccesses, EnvVars: []string{"FLEETROLL_HEALTH_SUCCESSES"}, Usage: "2xx answers in a row that make an instance healthy"},
		&cli.DurationFlag{Name: "health-interval", Value: fleetroll.DefaultHealthInterval, EnvVars: []string{"FLEETROLL_HEALTH_INTERVAL"}, Usage: "between health checks"},
		&cli.StringFlag{Name: "strategy", Value: fleetroll.StrategyRolling, EnvVars: []string{"FLEETROLL_STRATEGY"}, Usage: "rolling (restart in place) or blue-green (new units on --spare-ports, then the old ones go)"},
		&cli.StringFlag{Name: "spare-ports", EnvVars: []string{"FLEETROLL_SPARE_PORTS"}, Usage: "blue-green: the ports the new units take (8911-8913), as many as the live ones; the sets swap at each rollout"},
		&cli.StringFlag{Name: "sidekick", EnvVars: []string{"FLEETROLL_SIDEKICK"}, Usage: "blue-green: the template of each instance's sidekick (my-service-sidekick), launched and destroyed with it"},
		&cli.DurationFlag{Name: "placement-timeout", Value: fleetroll.DefaultPlacementTimeout, EnvVars: []string{"FLEETROLL_PLACEMENT_TIMEOUT"}, Usage: "blue-green: how long fleet may take to place a new unit on a machine"},
		&cli.IntFlag{Name: "canary", EnvVars: []string{"FLEETROLL_CANARY"}, Usage: "pause after this many instances, until fleetroll promote ID or abort ID (0: no pause)"},
		&cli.DurationFlag{Name: "canary-wait", EnvVars: []string{"FLEETROLL_CANARY_WAIT"}, Usage: "with --canary: promote on its own after this long if the canaries are still running and healthy (needs --health-path); abort if not"},
		&cli.DurationFlag{Name: "health-timeout", Value: fleetroll.DefaultHealthTimeout, EnvVars: []string{"FLEETROLL_HEALTH_TIMEOUT"}, Usage: "how long an instance may take to become healthy"},
	}
}

// policyFrom builds the roll policy of the flags: the lock always, drain
// with --drain, the health gate with --health-path, the release settings
// where the command has them (deploy, rollback, serve).
func policyFrom(c *cli.Context) (fleetroll.Policy, error) {
	p := fleetroll.Policy{Lock: fleetroll.LockMode(c.String("lock")), LockTTL: c.Duration("lock-ttl"),
		OnFailure: fleetroll.OnFailure(c.String("on-failure")), PullTimeout: c.Duration("pull-timeout"), Watch: c.Bool("watch"),
		Canary: c.Int("canary"), CanaryWait: c.Duration("canary-wait"),
		Strategy: c.String("strategy"), Sidekick: c.String("sidekick"), PlacementTimeout: c.Duration("placement-timeout")}
	if spare := c.String("spare-ports"); spare != "" {
		in, err := fleetroll.ParseInstances(spare)
		if err != nil {
			return p, usageErr("--spare-ports: %w", err)
		}
		p.SparePorts = in
	}
	if c.Bool("drain") {
		p.Drain = &fleetroll.DrainPolicy{Prefix: c.String("drain-prefix"), Delay: c.Duration("drain-delay"), Timeout: c.Duration("drain-timeout")}
	}
	if path := c.String("health-path"); path != "" {
		p.Health = &fleetroll.HealthPolicy{Path: path, Successes: c.Int("health-successes"),
			Interval: c.Duration("health-interval"), Timeout: c.Duration("health-timeout")}
	}
	if err := p.Validate(); err != nil {
		return p, usageErr("%w", err)
	}
	return p, nil
}

// safetyFrom builds the safety of the flags' policy; etcd is connected (not
// dialled) when the policy needs it, --record asks for it, needEtcd says so
// (a service of serve's configuration drains).
func safetyFrom(c *cli.Context, fleet fleetroll.Fleet, what string, needEtcd bool) (coord.Safety, error) {
	p, err := policyFrom(c)
	if err != nil {
		return coord.Safety{}, err
	}
	s := coord.Safety{Policy: p, Owner: coord.Owner(what), Fleet: fleet}
	if needEtcd || c.Bool("record") || s.Policy.NeedsEtcd() {
		h, err := etcdFrom(c)
		if err != nil {
			return s, err
		}
		s.KAPI = h.KAPI
	}
	if err := s.Validate(); err != nil {
		return s, usageErr("%w", err)
	}
	return s, nil
}

// etcdFlags are the etcd connection flags alone (fleetroll status).
func etcdFlags() []cli.Flag {
	var out []cli.Flag
	for _, f := range safetyFlags() {
		if strings.HasPrefix(f.Names()[0], "etcd-") {
			out = append(out, f)
		}
	}
	return out
}

func etcdFrom(c *cli.Context) (coord.History, error) {
	kapi, err := coord.Connect(coord.Config{
		Endpoints: strings.Split(c.String("etcd-endpoints"), ","),
		CAFile:    c.String("etcd-ca-file"), CertFile: c.String("etcd-cert-file"), KeyFile: c.String("etcd-key-file"),
		Timeout: c.Duration("etcd-timeout"),
	})
	if err != nil {
		return coord.History{}, usageErr("--etcd-endpoints: %w", err)
	}
	return coord.History{KAPI: kapi}, nil
}

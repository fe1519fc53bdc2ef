package fleetroll

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Defaults of the roll policy. The flags of restart and serve and serve's
// configuration file all take them from here, through Policy.WithDefaults.
const (
	DefaultLockTTL         = 30 * time.Second
	DefaultDrainPrefix     = "/services/{service}"
	DefaultDrainDelay      = 5 * time.Second
	DefaultDrainTimeout    = time.Minute
	DefaultHealthSuccesses = 3
	DefaultHealthInterval  = time.Second
	DefaultHealthTimeout   = 2 * time.Minute
)

// LockMode says what a roll does about the service's cluster-wide lock.
type LockMode string

const (
	LockOff  LockMode = "off"
	LockFail LockMode = "fail" // refuse when another fleetroll holds it
	LockWait LockMode = "wait" // wait until it is free
)

// Policy is what a roll does besides stopping and starting units: the
// cluster lock, draining each instance from the proxy, and the health gate.
// restart builds it from flags, serve from flags and each service's
// configuration; both then call WithDefaults and Validate.
type Policy struct {
	Lock    LockMode      `yaml:"-"`
	LockTTL time.Duration `yaml:"-"`
	// Drain, when set, takes each instance out of the proxy first.
	Drain *DrainPolicy `yaml:"drain"`
	// Health, when set, gates each instance after its start.
	Health *HealthPolicy `yaml:"health"`
	// Image, when set (REGISTRY/REPOSITORY), makes rollouts of the service
	// deploy releases of it: pinned by digest, pre-pulled, recorded in etcd
	// (docs/releases.md). A deploy always takes the service's lock.
	Image string `yaml:"image"`
	// OnFailure is what a deploy does when an instance fails on the new
	// release: halt (the default) or rollback.
	OnFailure OnFailure `yaml:"on_failure"`
	// PullTimeout bounds the pre-pull of a release on every machine.
	PullTimeout time.Duration `yaml:"pull_timeout"`
	// Watch wakes the waits on fleet's state writes in etcd (watches)
	// instead of at the next poll. Off by default: it finds a new state
	// sooner, yet made rolls slower on fleet v1.0.0 (docs/benchmarks.md).
	Watch bool `yaml:"-"`
	// Canary, when positive, pauses each rollout once its first Canary
	// units are back, until fleetroll promote (or the API) or abort;
	// CanaryWait, when positive, promotes it on its own after that long
	// if the canaries are still running and healthy, and aborts it if not
	// (it needs the health gate). Decisions go through etcd.
	Canary     int           `yaml:"canary"`
	CanaryWait time.Duration `yaml:"canary_wait"`
	// Strategy is how units are replaced: rolling (restarts in place, the
	// default) or blue-green (new units on SparePorts, then the old ones
	// go; docs/strategies.md). Blue-green swaps the two port sets at each
	// rollout and records the live one in etcd; Sidekick is the template
	// of each instance's sidekick, launched and destroyed with it, and
	// PlacementTimeout bounds the wait for fleet to schedule a new unit.
	Strategy         string        `yaml:"strategy"`
	SparePorts       []string      `yaml:"-"`
	Sidekick         string        `yaml:"sidekick"`
	PlacementTimeout time.Duration `yaml:"placement_timeout"`
}

// Strategies of Policy.Strategy.
const (
	StrategyRolling = "rolling"
)

// DrainPolicy says where instances are announced and how long a drain waits.
// Zero values take the defaults.
type DrainPolicy struct {
	// Prefix of the announcements, PREFIX/INSTANCE; {service} stands for
	// the service's name.
	Prefix string `yaml:"prefix"`
	// Delay after the announcement is gone, for requests in flight.
	Delay time.Duration `yaml:"delay"`
	// Timeout for the announcement to come back after the start.
	Timeout time.Duration `yaml:"timeout"`
}

// HealthPolicy is the health gate: GET http://MACHINE_IP:PORT/PATH until it
// answers 2xx Successes times in a row. Zero values take the defaults.
type HealthPolicy struct {
	Path      string        `yaml:"path"`
	Successes int           `yaml:"successes"`
	Interval  time.Duration `yaml:"interval"`
	Timeout   time.Duration `yaml:"timeout"`
}

// WithDefaults returns the policy with every zero setting at its default and
// {service} in the drain prefix replaced.
func (p Policy) WithDefaults(service string) Policy {
	orDefault(&p.Lock, LockOff)
	if p.Image != "" && p.Lock == LockOff {
		// A deploy writes the release: never two at once, from a CLI and
		// serve or from two receivers.
		p.Lock = LockWait
	}
	orDefault(&p.OnFailure, OnFailureHalt)
	orDefault(&p.Strategy, StrategyRolling)
	orDefault(&p.PlacementTimeout, DefaultPlacementTimeout)
	if p.Strategy == StrategyBlueGreen {
		if p.Lock == LockOff {
			// Blue-green writes which ports are live: one at a time.
			p.Lock = LockWait
		}
	}
	orDefault(&p.PullTimeout, DefaultPullTimeout)
	orDefault(&p.LockTTL, DefaultLockTTL)
	if p.Drain != nil {
		d := *p.Drain
		orDefault(&d.Prefix, DefaultDrainPrefix)
		d.Prefix = strings.ReplaceAll(d.Prefix, "{service}", service)
		orDefault(&d.Delay, DefaultDrainDelay)
		orDefault(&d.Timeout, DefaultDrainTimeout)
		p.Drain = &d
	}
	if p.Health != nil {
		h := *p.Health
		orDefault(&h.Successes, DefaultHealthSuccesses)
		orDefault(&h.Interval, DefaultHealthInterval)
		orDefault(&h.Timeout, DefaultHealthTimeout)
		p.Health = &h
	}
	return p
}

// orDefault sets *v to def when it is the zero value.
func orDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// NeedsEtcd reports whether the policy uses etcd (the lock, drain or
// releases).
func (p Policy) NeedsEtcd() bool {
	return p.Drain != nil || p.Image != "" || p.Watch || p.Canary > 0 || p.Strategy == StrategyBlueGreen || (p.Lock != "" && p.Lock != LockOff)
}

// Validate checks the policy; errors name the setting as the config file
// does (drain.delay), which the flags' names follow (--drain-delay).
func (p Policy) Validate() error {
	switch p.Lock {
	case "", LockOff, LockFail, LockWait:
	default:
		return fmt.Errorf("lock %q: want off, fail or wait", p.Lock)
	}
	if p.LockTTL < 0 {
		return errors.New("lock ttl must not be negative")
	}
	if d := p.Drain; d != nil {
		if d.Prefix != "" && !strings.HasPrefix(d.Prefix, "/") {
			return fmt.Errorf("drain.prefix %q: must start with /", d.Prefix)
		}
		if d.Delay < 0 || d.Timeout < 0 {
			return errors.New("drain.delay and drain.timeout must not be negative")
		}
	}
	if p.Image != "" {
		if err := ValidateImage(p.Image); err != nil {
			return err
		}
	}
	if _, err := ParseOnFailure(string(p.OnFailure)); err != nil {
		return err
	}
	if p.PullTimeout < 0 {
		return errors.New("pull timeout must not be negative")
	}
	switch {
	case p.Canary < 0:
		return fmt.Errorf("canary must not be negative, got %d", p.Canary)
	case p.CanaryWait < 0:
		return fmt.Errorf("canary_wait must not be negative, got %s", p.CanaryWait)
	case p.CanaryWait > 0 && p.Canary == 0:
		return errors.New("canary_wait needs canary (how many units roll before the pause)")
	case p.CanaryWait > 0 && p.Health == nil:
		return errors.New("canary_wait needs the health gate (health.path): the canaries are checked when the wait ends")
	}
	switch p.Strategy {
	case "", StrategyRolling:
		if len(p.SparePorts) > 0 {
			return errors.New("spare_ports are for strategy blue-green")
		}
	case StrategyBlueGreen:
		if len(p.SparePorts) == 0 {
			return errors.New("strategy blue-green needs spare_ports (--spare-ports 8911-8913): the ports the new instances take")
		}
		if p.Canary > 0 {
			return errors.New("canary is for strategy rolling: blue-green checks every new instance before the old ones go")
		}
		for _, in := range p.SparePorts {
			if !instanceRe.MatchString(in) {
				return fmt.Errorf("spare_ports: bad instance %q", in)
			}
		}
		if p.Sidekick != "" {
			if err := ValidateServiceName(p.Sidekick); err != nil {
				return fmt.Errorf("sidekick: %w", err)
			}
		}
		if p.PlacementTimeout < 0 {
			return errors.New("placement_timeout must not be negative")
		}
	default:
		return fmt.Errorf("strategy %q: want rolling or blue-green", p.Strategy)
	}
	if h := p.Health; h != nil {
		if !strings.HasPrefix(h.Path, "/") {
			return fmt.Errorf("health.path %q: want a path such as /healthz", h.Path)
		}
		if h.Successes < 0 || h.Interval < 0 || h.Timeout < 0 {
			return errors.New("health.successes, health.interval and health.timeout must not be negative")
		}
	}
	return nil
}

// Gate returns the health gate of the policy (defaults applied).
func (h HealthPolicy) Gate() *HealthGate {
	return &HealthGate{Path: h.Path, Successes: h.Successes, Interval: h.Interval, Timeout: h.Timeout}
}

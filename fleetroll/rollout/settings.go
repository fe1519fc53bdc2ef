// Package rollout is fleetroll's one use case: a request in, the rollout's
// record out. Run takes the service's lock, recovers what a killed
// fleetroll left in flight, plans, chooses and pre-pulls the release, runs
// the strategy (rolling, batches, canary, blue-green; restart or deploy),
// and records the history, in that order. Every entrance (restart, deploy,
// rollback, recover, each queued trigger of serve) builds a Request and
// calls it; none assembles a rollout itself.
package rollout

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
)

// LockMode says what a rollout does about the service's cluster-wide lock.
type LockMode string

const (
	// LockAuto (the default) is wait when fleetroll has etcd (fleet's own,
	// or the one given), off when it runs without it.
	LockAuto LockMode = ""
	LockOff  LockMode = "off"
	LockFail LockMode = "fail" // refuse when another fleetroll holds it
	LockWait LockMode = "wait" // wait until it is free
)

// Strategies of Settings.Strategy.
const (
	StrategyRolling   = fleetroll.StrategyRolling
	StrategyBlueGreen = fleetroll.StrategyBlueGreen
)

// Settings are every per-service setting of a rollout: one type, with one
// set of defaults (Defaults) and one validation (Validate). The flags of
// restart, deploy, rollback and serve and each service of serve's YAML
// configuration decode into it (the configuration embeds it inline); the
// YAML keys are the yaml tags, the flags their names with - for _ (drain
// and health nest: drain.delay is --drain-delay).
type Settings struct {
	// Ports are the instances (empty: every launched one).
	Ports PortList `yaml:"ports"`

	// How each unit is replaced.
	Grace          time.Duration         `yaml:"grace"`
	StopTimeout    time.Duration         `yaml:"stop_timeout"`
	StartTimeout   time.Duration         `yaml:"start_timeout"`
	PollInterval   time.Duration         `yaml:"poll_interval"`
	NudgeInterval  time.Duration         `yaml:"nudge_interval"` // 0: off
	MaxUnavailable fleetroll.Unavailable `yaml:"max_unavailable"`
	// Watch wakes the waits on fleet's state writes in etcd instead of at
	// the next poll: nil (the default) when fleetroll has etcd; true
	// needs it; false polls alone (docs/how-it-works.md).
	Watch *bool `yaml:"watch"`
	// MinHealthyTime keeps each instance under watch once it runs and
	// passed its health gate, the last one included (fleet's state, and
	// the health check when set): a failure in it fails the rollout at
	// that instance (0: no watch). It runs alongside the grace period.
	MinHealthyTime time.Duration `yaml:"min_healthy_time"`
	// ProgressDeadline halts a rollout (or rolls it back, with on_failure
	// rollback) when no instance got through its stop, start and watch for
	// that long (a canary pause excepted).
	ProgressDeadline time.Duration `yaml:"progress_deadline"`

	// Lock is the service's lock in etcd, which also guards the intent
	// record a rollout writes before it touches a unit (LockAuto: wait
	// with etcd). LockTTL is its key's TTL, kept alive while held.
	Lock    LockMode      `yaml:"lock"`
	LockTTL time.Duration `yaml:"lock_ttl"`

	// Drain, when set, takes each instance out of the proxy first; Health,
	// when set, gates each instance after its start.
	Drain  *fleetroll.DrainPolicy  `yaml:"drain"`
	Health *fleetroll.HealthPolicy `yaml:"health"`

	// Image (REGISTRY/REPOSITORY), when set, makes rollouts deploy releases
	// of it pinned by digest (docs/releases.md). OnFailure is what a
	// deploy does when an instance fails: halt or rollback. PullTimeout
	// bounds the pre-pull; PrePull (on by default) pulls the release on
	// every machine before any instance stops.
	Image       string              `yaml:"image"`
	OnFailure   fleetroll.OnFailure `yaml:"on_failure"`
	PullTimeout time.Duration       `yaml:"pull_timeout"`
	PrePull     *bool               `yaml:"pre_pull"`
	// TagPolicy says which pushed tags a sender may deploy: any its
	// trigger matches (glob), or semantic versions not older than the
	// current release's, within its major.minor (patch), its major
	// (minor) or any (major); Prerelease admits pre-releases then. An
	// operator's deploy and rollback are not bound by it.
	TagPolicy  fleetroll.TagPolicy `yaml:"tag_policy"`
	Prerelease bool                `yaml:"prerelease"`

	// Canary, when positive, pauses each rollout once its first Canary
	// units are back, until promote or abort; CanaryWait promotes (or
	// aborts) on its own after that long.
	Canary     int           `yaml:"canary"`
	CanaryWait time.Duration `yaml:"canary_wait"`

	// Strategy: rolling (in place) or blue-green (new units on SparePorts,
	// then the old ones go), with each instance's Sidekick and the wait
	// for fleet to place a new unit.
	Strategy         string        `yaml:"strategy"`
	SparePorts       PortList      `yaml:"spare_ports"`
	Sidekick         string        `yaml:"sidekick"`
	PlacementTimeout time.Duration `yaml:"placement_timeout"`
}

// Defaults of the watch after the start and of the progress deadline.
const (
	DefaultMinHealthyTime   = 10 * time.Second
	DefaultProgressDeadline = 10 * time.Minute
)

// Defaults are the settings of a service that sets nothing. Flags show
// these values as their defaults; a configuration is decoded over them.
func Defaults() Settings {
	on := true
	return Settings{
		Grace: fleetroll.DefaultGrace, StopTimeout: fleetroll.DefaultStopTimeout, StartTimeout: fleetroll.DefaultStartTimeout,
		MinHealthyTime: DefaultMinHealthyTime, ProgressDeadline: DefaultProgressDeadline,
		PollInterval: fleetroll.DefaultPollInterval, NudgeInterval: fleetroll.DefaultNudgeInterval,
		LockTTL: coord.DefaultLockTTL, OnFailure: fleetroll.OnFailureHalt, PullTimeout: fleetroll.DefaultPullTimeout, PrePull: &on,
		TagPolicy: fleetroll.TagPolicyGlob, Strategy: StrategyRolling, PlacementTimeout: fleetroll.DefaultPlacementTimeout,
	}
}

// Clone returns a copy that shares nothing with s.
func (s Settings) Clone() Settings {
	c := s
	c.Ports, c.SparePorts = slices.Clone(s.Ports), slices.Clone(s.SparePorts)
	if s.Drain != nil {
		d := *s.Drain
		c.Drain = &d
	}
	if s.Health != nil {
		h := *s.Health
		c.Health = &h
	}
	if s.PrePull != nil {
		p := *s.PrePull
		c.PrePull = &p
	}
	if s.Watch != nil {
		w := *s.Watch
		c.Watch = &w
	}
	return c
}

// Complete returns the settings with the nested defaults filled in (a
// drain or health gate turned on with some of its values) and {service}
// in the drain prefix replaced.
func (s Settings) Complete(service string) Settings {
	s = s.Clone()
	def := Defaults()
	orDefault(&s.LockTTL, def.LockTTL)
	orDefault(&s.OnFailure, def.OnFailure)
	orDefault(&s.PullTimeout, def.PullTimeout)
	orDefault(&s.TagPolicy, def.TagPolicy)
	orDefault(&s.Strategy, def.Strategy)
	orDefault(&s.PlacementTimeout, def.PlacementTimeout)
	orDefault(&s.StopTimeout, def.StopTimeout)
	orDefault(&s.StartTimeout, def.StartTimeout)
	orDefault(&s.PollInterval, def.PollInterval)
	orDefault(&s.ProgressDeadline, def.ProgressDeadline)
	if s.PrePull == nil {
		s.PrePull = def.PrePull
	}
	if d := s.Drain; d != nil {
		orDefault(&d.Prefix, fleetroll.DefaultDrainPrefix)
		d.Prefix = strings.ReplaceAll(d.Prefix, "{service}", service)
		orDefault(&d.Delay, fleetroll.DefaultDrainDelay)
		orDefault(&d.Timeout, fleetroll.DefaultDrainTimeout)
	}
	if h := s.Health; h != nil {
		orDefault(&h.Successes, fleetroll.DefaultHealthSuccesses)
		orDefault(&h.Interval, fleetroll.DefaultHealthInterval)
		orDefault(&h.Timeout, fleetroll.DefaultHealthTimeout)
	}
	return s
}

// orDefault sets *v to def when it is the zero value.
func orDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Uses says which of the settings need etcd ("" when none): each names
// itself as its flag does.
func (s Settings) Uses() []string {
	var out []string
	add := func(on bool, what string) {
		if on {
			out = append(out, what)
		}
	}
	add(s.Lock == LockFail || s.Lock == LockWait, "--lock "+string(s.Lock))
	add(s.Drain != nil, "--drain")
	add(s.Image != "", "a release (--image)")
	add(s.Watch != nil && *s.Watch, "--watch")
	add(s.Canary > 0, "--canary")
	add(s.Strategy == StrategyBlueGreen, "--strategy blue-green")
	return out
}

// BlueGreen tells whether the service replaces its units blue-green.
func (s Settings) BlueGreen() bool { return s.Strategy == StrategyBlueGreen }

// Validate checks every setting; errors name it as the configuration does
// (drain.delay), which the flags follow (--drain-delay).
func (s Settings) Validate() error {
	if err := (fleetroll.Target{Service: "x", Instances: s.Ports}).Validate(); err != nil {
		return fmt.Errorf("ports: %w", err)
	}
	for name, d := range map[string]time.Duration{"stop_timeout": s.StopTimeout, "start_timeout": s.StartTimeout, "poll_interval": s.PollInterval} {
		if d <= 0 {
			return fmt.Errorf("%s must be positive, got %s", name, d)
		}
	}
	if err := s.Options().Validate(); err != nil {
		return err
	}
	switch s.Lock {
	case LockAuto, LockOff, LockFail, LockWait:
	default:
		return fmt.Errorf("lock %q: want off, fail or wait", s.Lock)
	}
	if s.LockTTL < 0 {
		return errors.New("lock_ttl must not be negative")
	}
	if s.ProgressDeadline > 0 && s.ProgressDeadline <= s.MinHealthyTime {
		return fmt.Errorf("progress_deadline %s must be longer than min_healthy_time %s: no instance could get through", s.ProgressDeadline, s.MinHealthyTime)
	}
	if d := s.Drain; d != nil {
		if d.Prefix != "" && !strings.HasPrefix(d.Prefix, "/") {
			return fmt.Errorf("drain.prefix %q: must start with /", d.Prefix)
		}
		if d.Delay < 0 || d.Timeout < 0 {
			return errors.New("drain.delay and drain.timeout must not be negative")
		}
	}
	if h := s.Health; h != nil {
		if !strings.HasPrefix(h.Path, "/") {
			return fmt.Errorf("health.path %q: want a path such as /healthz", h.Path)
		}
		if h.Successes < 0 || h.Interval < 0 || h.Timeout < 0 {
			return errors.New("health.successes, health.interval and health.timeout must not be negative")
		}
	}
	if s.Image != "" {
		if err := fleetroll.ValidateImage(s.Image); err != nil {
			return err
		}
	}
	if s.OnFailure != "" {
		if _, err := fleetroll.ParseOnFailure(string(s.OnFailure)); err != nil {
			return err
		}
	}
	if s.PullTimeout < 0 {
		return errors.New("pull_timeout must not be negative")
	}
	if p, err := fleetroll.ParseTagPolicy(string(s.TagPolicy)); err != nil {
		return err
	} else if s.Prerelease && !p.Semver() {
		return errors.New("prerelease is for tag_policy patch, minor or major")
	}
	switch {
	case s.Canary < 0:
		return fmt.Errorf("canary must not be negative, got %d", s.Canary)
	case s.CanaryWait < 0:
		return fmt.Errorf("canary_wait must not be negative, got %s", s.CanaryWait)
	case s.CanaryWait > 0 && s.Canary == 0:
		return errors.New("canary_wait needs canary (how many units roll before the pause)")
	case s.CanaryWait > 0 && s.Health == nil:
		return errors.New("canary_wait needs the health gate (health.path): the canaries are checked when the wait ends")
	}
	if s.PlacementTimeout < 0 {
		return errors.New("placement_timeout must not be negative")
	}
	switch s.Strategy {
	case "", StrategyRolling:
		if len(s.SparePorts) > 0 {
			return errors.New("spare_ports are for strategy blue-green")
		}
		if s.Sidekick != "" {
			return errors.New("sidekick is for strategy blue-green")
		}
	case StrategyBlueGreen:
		if len(s.SparePorts) == 0 {
			return errors.New("strategy blue-green needs spare_ports (--spare-ports 8911-8913): the ports the new instances take")
		}
		if s.Canary > 0 {
			return errors.New("canary is for strategy rolling: blue-green checks every new instance before the old ones go")
		}
		if s.Sidekick != "" {
			if err := fleetroll.ValidateServiceName(s.Sidekick); err != nil {
				return fmt.Errorf("sidekick: %w", err)
			}
		}
	default:
		return fmt.Errorf("strategy %q: want rolling or blue-green", s.Strategy)
	}
	return nil
}

// Options are the roller's settings of s (its hooks, events and clock are
// the runner's).
func (s Settings) Options() fleetroll.Options {
	return fleetroll.Options{Grace: s.Grace, StopTimeout: s.StopTimeout, StartTimeout: s.StartTimeout,
		PollInterval: s.PollInterval, NudgeInterval: s.NudgeInterval, MaxUnavailable: s.MaxUnavailable,
		MinHealthy: s.MinHealthyTime, ProgressDeadline: s.ProgressDeadline}
}

// Watches tells whether the waits watch fleet's state writes, with etcd
// at hand (hasEtcd): as asked, or by default when there is etcd.
func (s Settings) Watches(hasEtcd bool) bool {
	return hasEtcd && (s.Watch == nil || *s.Watch)
}

// PrePulls tells whether a deploy pre-pulls its release (the default).
func (s Settings) PrePulls() bool { return s.PrePull == nil || *s.PrePull }

// PortList is a list of instances, given in YAML as "8901-8903", 8901, or a
// sequence of ports and ranges.
type PortList []string

// UnmarshalYAML reads a port, a range or a list of them.
func (p *PortList) UnmarshalYAML(unmarshal func(any) error) error {
	var specs []string
	var one string
	if err := unmarshal(&one); err == nil {
		specs = []string{one}
	} else if err := unmarshal(&specs); err != nil {
		return errors.New("ports: want \"8901-8903\" or a list of ports")
	}
	var out []string
	for _, s := range specs {
		inst, err := fleetroll.ParseInstances(s)
		if err != nil {
			return fmt.Errorf("ports: %w", err)
		}
		out = append(out, inst...)
	}
	*p = out
	return nil
}

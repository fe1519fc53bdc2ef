package hook

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"gopkg.in/yaml.v3"
)

// Config is what fleetroll serve rolls and what triggers it. Secrets never
// live here: they come from files or the environment (see Secrets).
type Config struct {
	Services []Service `yaml:"services"`
	// Notifications are where services announce their rollouts (a
	// service's notify: names them); their URLs and keys are secrets,
	// read at start (Options.NotifySecret).
	Notifications []Notification `yaml:"notifications"`
}

// Service is one fleet service and the triggers that roll it.
type Service struct {
	// Name is the template name: "my-service" for my-service@.service.
	Name string `yaml:"name"`
	// Ports lists the instances; empty means every launched instance.
	Ports PortList `yaml:"ports"`
	// Zero durations take the server's defaults (its flags).
	Grace        *time.Duration `yaml:"grace"`
	StopTimeout  time.Duration  `yaml:"stop_timeout"`
	StartTimeout time.Duration  `yaml:"start_timeout"`
	PollInterval time.Duration  `yaml:"poll_interval"`
	// NudgeInterval, when set, overrides --nudge-interval (0 in the file
	// means "the flag's"; turn nudging off with the flag).
	NudgeInterval time.Duration `yaml:"nudge_interval"`
	// MaxUnavailable, when set, overrides --max-unavailable: N or P%.
	MaxUnavailable fleetroll.Unavailable `yaml:"max_unavailable"`

	// Health, when set, gates each instance after its start; Drain, when
	// set, takes each instance out of the proxy first. Their settings,
	// defaults and validation are the roll policy's, shared with the flags.
	Health *fleetroll.HealthPolicy `yaml:"health"`
	Drain  *fleetroll.DrainPolicy  `yaml:"drain"`
	// Image, OnFailure and PullTimeout are the release settings of the
	// roll policy (docs/releases.md); OnFailure and PullTimeout, when
	// empty, are serve's flags'.
	Image       string              `yaml:"image"`
	OnFailure   fleetroll.OnFailure `yaml:"on_failure"`
	PullTimeout time.Duration       `yaml:"pull_timeout"`
	// Canary and CanaryWait, when set, override --canary and
	// --canary-wait (docs/strategies.md).
	Canary     int           `yaml:"canary"`
	CanaryWait time.Duration `yaml:"canary_wait"`
	// Strategy (rolling or blue-green), SparePorts, Sidekick and
	// PlacementTimeout are the service's own (docs/strategies.md).
	Strategy         string        `yaml:"strategy"`
	SparePorts       PortList      `yaml:"spare_ports"`
	Sidekick         string        `yaml:"sidekick"`
	PlacementTimeout time.Duration `yaml:"placement_timeout"`

	// Notify names the notifications: targets its rollouts are announced
	// to.
	Notify []string `yaml:"notify"`

	DockerHub []Trigger `yaml:"dockerhub"`
	Registry  []Trigger `yaml:"registry"`
	GitHub    []Trigger `yaml:"github"`
}

// Trigger matches an image event: a repository ("namespace/name", or a
// GitHub package "owner/name") and tags, exact names or globs (path.Match);
// no tags means "latest".
type Trigger struct {
	Repository string   `yaml:"repository"`
	Tags       []string `yaml:"tags"`
}

// PortList is a list of instances, given in YAML as "8901-8903", 8901, or a
// sequence of ports.
type PortList []string

func (p *PortList) UnmarshalYAML(n *yaml.Node) error {
	var specs []string
	switch n.Kind {
	case yaml.ScalarNode:
		specs = []string{n.Value}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: ports: want a port or a range", c.Line)
			}
			specs = append(specs, c.Value)
		}
	default:
		return fmt.Errorf("line %d: ports: want \"8901-8903\" or a list of ports", n.Line)
	}
	var out []string
	for _, s := range specs {
		inst, err := fleetroll.ParseInstances(s)
		if err != nil {
			return fmt.Errorf("line %d: ports: %w", n.Line, err)
		}
		out = append(out, inst...)
	}
	*p = out
	return nil
}

// LoadConfig reads and validates a YAML configuration file. Unknown fields are
// errors, so a secret put in the file by mistake is refused, not used.
func LoadConfig(file string) (*Config, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", file, err)
	}
	return cfg, nil
}

// ParseConfig parses and validates YAML configuration.
func ParseConfig(b []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty configuration")
		}
		return nil, nameFields(b, err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	if len(c.Services) == 0 {
		return errors.New("services: at least one service is required")
	}
	notifications := map[string]bool{}
	for i, n := range c.Notifications {
		if err := n.validate(); err != nil {
			return fmt.Errorf("notifications[%d].%w", i, err)
		}
		if notifications[n.Name] {
			return fmt.Errorf("notifications[%d].name: %q is configured twice", i, n.Name)
		}
		notifications[n.Name] = true
	}
	seen := map[string]bool{}
	for i := range c.Services {
		s := &c.Services[i]
		field := fmt.Sprintf("services[%d]", i)
		for _, n := range s.Notify {
			if !notifications[n] {
				return fmt.Errorf("%s.notify: %q is not among notifications", field, n)
			}
		}
		if s.Name == "" {
			return fmt.Errorf("%s.name: required", field)
		}
		if err := (fleetroll.Target{Service: s.Name}).Validate(); err != nil {
			return fmt.Errorf("%s.name: %w", field, err)
		}
		if err := (fleetroll.Target{Service: s.Name, Instances: s.Ports}).Validate(); err != nil {
			return fmt.Errorf("%s.ports: %w", field, err)
		}
		if seen[s.Name] {
			return fmt.Errorf("%s.name: service %q is configured twice", field, s.Name)
		}
		seen[s.Name] = true
		if err := (fleetroll.Policy{Health: s.Health, Drain: s.Drain, Image: s.Image, OnFailure: s.OnFailure, PullTimeout: s.PullTimeout,
			Canary: s.Canary, CanaryWait: s.CanaryWait, Strategy: s.Strategy, SparePorts: s.SparePorts, Sidekick: s.Sidekick,
			PlacementTimeout: s.PlacementTimeout}).Validate(); err != nil {
			return fmt.Errorf("%s.%w", field, err)
		}
		opts := fleetroll.Options{StopTimeout: s.StopTimeout, StartTimeout: s.StartTimeout, PollInterval: s.PollInterval, NudgeInterval: s.NudgeInterval}
		if s.Grace != nil {
			opts.Grace = *s.Grace
		}
		if err := opts.Validate(); err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		for _, k := range []struct {
			kind     string
			triggers []Trigger
		}{{"dockerhub", s.DockerHub}, {"registry", s.Registry}, {"github", s.GitHub}} {
			kind := k.kind
			for j := range k.triggers {
				t := &k.triggers[j]
				tf := fmt.Sprintf("%s.%s[%d]", field, kind, j)
				if t.Repository == "" {
					return fmt.Errorf("%s.repository: required", tf)
				}
				if strings.Count(t.Repository, "/") < 1 && kind != "registry" {
					return fmt.Errorf("%s.repository: %q: want namespace/name", tf, t.Repository)
				}
				if len(t.Tags) == 0 {
					t.Tags = []string{"latest"}
				}
				for k, tag := range t.Tags {
					if _, err := path.Match(tag, ""); err != nil || tag == "" {
						return fmt.Errorf("%s.tags[%d]: bad tag pattern %q", tf, k, tag)
					}
				}
			}
		}
	}
	return nil
}

// Service returns the named service.
func (c *Config) Service(name string) (Service, bool) {
	for _, s := range c.Services {
		if s.Name == name {
			return s, true
		}
	}
	return Service{}, false
}

// Match returns the services whose triggers of the given kind match the
// repository and tag, in configuration order.
func (c *Config) Match(kind Source, repository, tag string) []string {
	var out []string
	for _, s := range c.Services {
		var triggers []Trigger
		switch kind {
		case SourceDockerHub:
			triggers = s.DockerHub
		case SourceRegistry:
			triggers = s.Registry
		case SourceGitHub:
			triggers = s.GitHub
		}
		for _, t := range triggers {
			if t.matches(repository, tag) {
				out = append(out, s.Name)
				break
			}
		}
	}
	return out
}

func (t Trigger) matches(repository, tag string) bool {
	if t.Repository != repository {
		return false
	}
	for _, pat := range t.Tags {
		if ok, _ := path.Match(pat, tag); ok {
			return true
		}
	}
	return false
}

// Target returns the fleetroll target of the service.
func (s Service) Target() fleetroll.Target {
	return fleetroll.Target{Service: s.Name, Instances: s.Ports}
}

// RollOptions returns the roll options of the service over the defaults.
func (s Service) RollOptions(def fleetroll.Options) fleetroll.Options {
	o := def
	if s.Grace != nil {
		o.Grace = *s.Grace
	}
	if s.StopTimeout > 0 {
		o.StopTimeout = s.StopTimeout
	}
	if s.StartTimeout > 0 {
		o.StartTimeout = s.StartTimeout
	}
	if s.PollInterval > 0 {
		o.PollInterval = s.PollInterval
	}
	if s.NudgeInterval > 0 {
		o.NudgeInterval = s.NudgeInterval
	}
	if s.MaxUnavailable != (fleetroll.Unavailable{}) {
		o.MaxUnavailable = s.MaxUnavailable
	}
	return o
}

// nameFields rewrites yaml's "line N: ..." type errors as
// "services[0].grace: ... (line N)" when one field sits on that line.
func nameFields(b []byte, err error) error {
	var te *yaml.TypeError
	var root yaml.Node
	if !errors.As(err, &te) || yaml.Unmarshal(b, &root) != nil {
		return err
	}
	msgs := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		msgs[i] = e
		var line int
		if _, scanErr := fmt.Sscanf(e, "line %d:", &line); scanErr != nil {
			continue
		}
		// Only when one field sits on that line (flow style puts many).
		if ps := pathsAt(&root, line, ""); len(ps) == 1 {
			p := ps[0]
			rest := strings.TrimSpace(strings.SplitN(e, ":", 2)[1])
			msgs[i] = fmt.Sprintf("%s: %s (line %d)", p, rest, line)
		}
	}
	return errors.New(strings.Join(msgs, "; "))
}

// pathsAt returns the paths of the mapping keys and scalar sequence items
// on line, deepest last.
func pathsAt(n *yaml.Node, line int, prefix string) []string {
	var out []string
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			out = append(out, pathsAt(c, line, prefix)...)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if prefix != "" {
				p = prefix + "." + k.Value
			}
			if k.Line == line && (v.Kind == yaml.ScalarNode || v.Line != line) {
				out = append(out, p)
			}
			out = append(out, pathsAt(v, line, p)...)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", prefix, i)
			if c.Line == line && c.Kind == yaml.ScalarNode {
				out = append(out, p)
			}
			out = append(out, pathsAt(c, line, p)...)
		}
	}
	return out
}

// Policy returns the service's roll policy: the lock from base (serve's
// flags), drain, health and image from the service, on_failure and
// pull_timeout from the service over base, defaults applied.
func (s Service) Policy(base fleetroll.Policy) fleetroll.Policy {
	p := base
	p.Drain, p.Health, p.Image = s.Drain, s.Health, s.Image
	if s.OnFailure != "" {
		p.OnFailure = s.OnFailure
	}
	if s.PullTimeout > 0 {
		p.PullTimeout = s.PullTimeout
	}
	if s.Canary > 0 {
		p.Canary = s.Canary
	}
	if s.CanaryWait > 0 {
		p.CanaryWait = s.CanaryWait
	}
	p.Strategy, p.SparePorts, p.Sidekick, p.PlacementTimeout = s.Strategy, s.SparePorts, s.Sidekick, s.PlacementTimeout
	if s.Strategy == fleetroll.StrategyBlueGreen {
		p.Canary, p.CanaryWait = 0, 0 // serve's --canary is for the rolling services
	}
	return p.WithDefaults(s.Name)
}

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
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	"go.yaml.in/yaml/v3"
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

// Service is one fleet service, its settings and the triggers that roll
// it. Its settings are rollout.Settings, inline: the same keys as every
// other entrance's, decoded over serve's flags (ParseConfig's base).
type Service struct {
	// Name is the template name: "my-service" for my-service@.service.
	Name     string           `yaml:"name"`
	Settings rollout.Settings `yaml:",inline"`

	// Notify names the notifications: targets its rollouts are announced
	// to.
	Notify []string `yaml:"notify"`

	DockerHub []Trigger `yaml:"dockerhub"`
	Registry  []Trigger `yaml:"registry"`
	GitHub    []Trigger `yaml:"github"`
	// Poll, when set, asks the image's registry for a tag's digest every
	// interval: a fallback for lost webhooks (docs/releases.md).
	Poll *Poll `yaml:"poll"`
}

// Poll is a service's registry polling: its tag's digest is asked for
// every Interval (one receiver polls, the holder of the service's poller
// lease in etcd), and a digest that is neither the current release nor
// queued is deployed.
type Poll struct {
	Interval time.Duration `yaml:"interval"`
	// Tag is the tag polled; "latest" when empty.
	Tag string `yaml:"tag"`
}

// MinPollInterval is the shortest poll interval: it keeps a typo from
// hammering a registry (Docker Hub wants minutes: docs/releases.md).
const MinPollInterval = 2 * time.Second

// Trigger matches an image event: a repository ("namespace/name", or a
// GitHub package "owner/name") and tags, exact names or globs (path.Match);
// no tags means "latest".
type Trigger struct {
	Repository string   `yaml:"repository"`
	Tags       []string `yaml:"tags"`
}

// LoadConfig reads and validates a YAML configuration file; each service's
// settings are decoded over base (the defaults, and serve's flags given).
// Unknown fields are errors, so a secret put in the file by mistake is
// refused, not used.
func LoadConfig(file string, base rollout.Settings) (*Config, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := ParseConfig(b, base)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", file, err)
	}
	return cfg, nil
}

// ParseConfig parses and validates YAML configuration; each service's
// settings are decoded over base, so that a key the service leaves out
// keeps base's value (and a key it gives, even a zero, is its own).
func ParseConfig(b []byte, base rollout.Settings) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty configuration")
		}
		return nil, nameFields(b, err)
	}
	// The keys and types are checked; now each service over base.
	var nodes struct {
		Services []yaml.Node `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &nodes); err != nil || len(nodes.Services) != len(cfg.Services) {
		return nil, fmt.Errorf("services: cannot read them again: %v", err)
	}
	for i := range cfg.Services {
		svc := Service{Settings: base.Clone()}
		if err := nodes.Services[i].Decode(&svc); err != nil {
			return nil, nameFields(b, err)
		}
		if svc.Settings.BlueGreen() {
			// serve's --canary is for the rolling services: a blue-green
			// one checks every new instance before the old ones go.
			var own map[string]any
			_ = nodes.Services[i].Decode(&own)
			if _, ok := own["canary"]; !ok {
				svc.Settings.Canary = 0
			}
			if _, ok := own["canary_wait"]; !ok {
				svc.Settings.CanaryWait = 0
			}
		}
		cfg.Services[i] = svc
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
		if err := (fleetroll.Target{Service: s.Name, Instances: s.Settings.Ports}).Validate(); err != nil {
			return fmt.Errorf("%s.ports: %w", field, err)
		}
		if seen[s.Name] {
			return fmt.Errorf("%s.name: service %q is configured twice", field, s.Name)
		}
		seen[s.Name] = true
		if err := s.Settings.Validate(); err != nil {
			return fmt.Errorf("%s.%w", field, err)
		}
		if err := s.Poll.validate(s.Settings.Image, s.Settings.TagPolicy); err != nil {
			return fmt.Errorf("%s.poll.%w", field, err)
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

// validate checks a service's polling (nil: none) and sets its default
// tag; errors name the field.
func (p *Poll) validate(image string, policy fleetroll.TagPolicy) error {
	switch {
	case p == nil:
		return nil
	case image == "":
		return errors.New("interval: polling needs the service's image (image:)")
	case p.Interval < MinPollInterval:
		return fmt.Errorf("interval: %s is under the minimum of %s", p.Interval, MinPollInterval)
	}
	if p.Tag == "" {
		p.Tag = "latest"
	}
	if !fleetroll.ValidTag(p.Tag) {
		return fmt.Errorf("tag: %q is not a tag (a glob is not polled)", p.Tag)
	}
	if policy.Semver() && !fleetroll.IsVersionTag(p.Tag) {
		return fmt.Errorf("tag: %q is no version, and tag_policy %s deploys only versions: every change of it would be refused (poll a tag with tag_policy glob)", p.Tag, policy)
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

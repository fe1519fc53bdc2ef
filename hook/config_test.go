package hook

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(testConfig), testBase())
	if err != nil {
		t.Fatal(err)
	}
	svc, ok := cfg.Service("my-service")
	if !ok || !reflect.DeepEqual([]string(svc.Settings.Ports), []string{"8901", "8902", "8903"}) {
		t.Fatalf("service = %+v", svc)
	}
	if got := svc.GitHub[0].Tags; !reflect.DeepEqual(got, []string{"latest"}) {
		t.Fatalf("default tags = %v", got)
	}
	for _, tc := range []struct {
		kind      Source
		repo, tag string
		want      []string
	}{
		{SourceDockerHub, "demo/my-service", "latest", []string{"my-service"}},
		{SourceDockerHub, "demo/my-service", "v1", nil},
		{SourceRegistry, "demo/my-service", "release-7", []string{"my-service"}},
		{SourceRegistry, "demo/my-service", "latest", nil},
		{SourceRegistry, "demo/other", "v1", nil},
		{SourceGitHub, "demo/my-service", "latest", []string{"my-service"}},
	} {
		if got := cfg.Match(tc.kind, tc.repo, tc.tag); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Match(%s, %s:%s) = %v, want %v", tc.kind, tc.repo, tc.tag, got, tc.want)
		}
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{``, "empty configuration"},
		{`services: []`, "services: at least one service"},
		{`services: [{ports: 1}]`, "services[0].name: required"},
		{`services: [{name: a}, {name: a}]`, "services[1].name: service \"a\" is configured twice"},
		{`services: [{name: "a@1.service"}]`, "services[0].name"},
		{`services: [{name: ".."}]`, "services[0].name"},
		{`services: [{name: "a/../b"}]`, "services[0].name"},
		{`services: [{name: "-a"}]`, "services[0].name"},
		{`services: [{name: a, ports: ["1/2"]}]`, "ports"},
		{`services: [{name: a, drain: {prefix: services}}]`, "services[0].drain.prefix"},
		{`services: [{name: a, health: {path: healthz}}]`, "services[0].health.path"},
		{`services: [{name: a, ports: "9-1"}]`, "ports"},
		{`services: [{name: a, grace: -1s}]`, "grace must not be negative"},
		{`services: [{name: a, image: my-service}]`, "services[0].image \"my-service\": want REGISTRY/REPOSITORY"},
		{`services: [{name: a, image: "127.0.0.1:5000/demo/x:latest"}]`, "services[0].image"},
		{`services: [{name: a, image: "127.0.0.1:5000/demo/x", on_failure: retry}]`, "services[0].on_failure \"retry\": want halt or rollback"},
		{`services: [{name: a, image: "127.0.0.1:5000/demo/x", pull_timeout: -1s}]`, "services[0].pull_timeout must not be negative"},
		{`services: [{name: a, dockerhub: [{tags: [x]}]}]`, "services[0].dockerhub[0].repository: required"},
		{`services: [{name: a, dockerhub: [{repository: noslash}]}]`, "services[0].dockerhub[0].repository"},
		{`services: [{name: a, registry: [{repository: r, tags: ["[x"]}]}]`, "services[0].registry[0].tags[0]: bad tag pattern"},
		{`services: [{name: a, token: s3cret}]`, "field token not found"},
		{`secret: x`, "field secret not found"},
		{`services: [{name: a, stop_timeout: soon}]`, "line 1: cannot unmarshal !!str `soon`"},
		{"services:\n  - name: a\n    ports: 1\n    grace: 20x\n", "services[0].grace: cannot unmarshal"},
		{"services:\n  - name: a\n    dockerhub:\n      - repository: a/b\n        token: x\n", "services[0].dockerhub[0].token: field token not found"},
	} {
		_, err := ParseConfig([]byte(tc.yaml), testBase())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

// A service's settings are decoded over the base (serve's flags): a key
// it gives is its own, even a zero; a key it leaves out keeps the base's.
func TestConfigOverBase(t *testing.T) {
	base := testBase()
	base.Grace, base.StartTimeout, base.StopTimeout = 20*time.Second, 5*time.Minute, 2*time.Minute
	base.Drain = &fleetroll.DrainPolicy{Delay: time.Second}
	cfg, err := ParseConfig([]byte("services: [{name: a, grace: 0s, start_timeout: 1m, drain: {timeout: 3s}}, {name: b, drain: null}]"), base)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := cfg.Service("a")
	if got := a.Settings; got.Grace != 0 || got.StartTimeout != time.Minute || got.StopTimeout != 2*time.Minute ||
		got.Drain == nil || got.Drain.Delay != time.Second || got.Drain.Timeout != 3*time.Second {
		t.Fatalf("a: %+v %+v", got, got.Drain)
	}
	if b, _ := cfg.Service("b"); b.Settings.Drain != nil || b.Settings.Grace != 20*time.Second {
		t.Fatalf("b: %+v", b.Settings)
	}
	if base.Drain.Timeout != 0 {
		t.Fatal("a service's settings changed the base")
	}
	// serve's --canary is for the rolling services; a blue-green service
	// is refused only for a canary of its own.
	base.Canary = 1
	cfg, err = ParseConfig([]byte("services: [{name: a}, {name: b, strategy: blue-green, spare_ports: 9001}]"), base)
	if err != nil || cfg.Services[0].Settings.Canary != 1 || cfg.Services[1].Settings.Canary != 0 {
		t.Fatalf("--canary over a blue-green service: %v", err)
	}
	if _, err := ParseConfig([]byte("services: [{name: b, strategy: blue-green, spare_ports: 9001, canary: 1}]"), base); err == nil {
		t.Fatal("a blue-green service's own canary accepted")
	}
}

func TestLoadConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(testConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(p, testBase()); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(p+".missing", testBase()); err == nil {
		t.Fatal("missing file accepted")
	}
}

// max_unavailable is read and checked by the same parser as
// --max-unavailable, and overrides it per service.
func TestConfigMaxUnavailable(t *testing.T) {
	c, err := ParseConfig([]byte("services:\n  - name: a\n    max_unavailable: 25%\n  - name: b\n"), testBase())
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Services[0].Settings.MaxUnavailable; got != (fleetroll.Unavailable{Percent: 25}) {
		t.Fatalf("a: %v", got)
	}
	if got := c.Services[1].Settings.MaxUnavailable; got != testBase().MaxUnavailable {
		t.Fatalf("b: %v", got)
	}
	if _, err := ParseConfig([]byte("services:\n  - name: a\n    max_unavailable: 0\n"), testBase()); err == nil || !strings.Contains(err.Error(), "max unavailable") {
		t.Fatalf("0 accepted: %v", err)
	}
}

// The full configuration example of docs/serve.md is a valid
// configuration, with every settings key.
func TestServeDocsConfigExampleParses(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "docs", "serve.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(b), "## Configuration file")
	_, rest, _ = strings.Cut(rest, "```yaml\n")
	example, _, _ := strings.Cut(rest, "```")
	cfg, err := ParseConfig([]byte(example), testBase())
	if err != nil {
		t.Fatalf("docs/serve.md's example: %v\n%s", err, example)
	}
	for _, key := range []string{"grace", "lock", "lock_ttl", "watch", "pre_pull", "drain", "health", "image", "canary_wait", "strategy"} {
		if !strings.Contains(example, "\n    "+key+":") {
			t.Errorf("the example has no %s", key)
		}
	}
	if s := cfg.Services[0].Settings; s.Canary != 1 || s.Health == nil || s.Lock != "wait" {
		t.Errorf("settings %+v", s)
	}
}

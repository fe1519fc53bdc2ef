// Package units holds the fleet unit files we ship; the tests parse each
// with fleet's own parser and check the conventions operators rely on.
package units

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/coreos/fleet/unit"
)

func load(t *testing.T, name string) *unit.UnitFile {
	t.Helper()
	raw, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	uf, err := unit.NewUnitFile(string(raw))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return uf
}

// values returns every value of a key.
func values(uf *unit.UnitFile, section, key string) []string {
	return uf.Contents[section][key]
}

func one(t *testing.T, uf *unit.UnitFile, section, key string) string {
	t.Helper()
	v := values(uf, section, key)
	if len(v) != 1 {
		t.Fatalf("[%s] %s: %d values %q, want one", section, key, len(v), v)
	}
	return v[0]
}

// env returns the unit's Environment= settings.
func env(t *testing.T, uf *unit.UnitFile) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, e := range values(uf, "Service", "Environment") {
		k, v, ok := strings.Cut(strings.Trim(e, `"`), "=")
		if !ok {
			t.Fatalf("bad Environment=%s", e)
		}
		if _, dup := m[k]; dup {
			t.Fatalf("Environment %s set twice: one place per setting", k)
		}
		m[k] = v
	}
	return m
}

func contains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s %q lacks %q", what, s, sub)
		}
	}
}

func TestEveryUnitParsesAndDefinesWhatItUses(t *testing.T) {
	files, _ := filepath.Glob("*.service")
	files2, _ := filepath.Glob("../contrib/proxy/units/*.service")
	files = append(files, files2...)
	if len(files) < 4 {
		t.Fatalf("found only %v", files)
	}
	used := regexp.MustCompile(`\$\$\{?([A-Z_][A-Z0-9_]*)`)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			uf := load(t, f)
			if uf.Description() == "" {
				t.Error("no Description=")
			}
			defined := env(t, uf)
			for _, key := range []string{"ExecStartPre", "ExecStart", "ExecStop", "ExecStopPost"} {
				for _, cmd := range values(uf, "Service", key) {
					if !strings.HasPrefix(strings.TrimPrefix(cmd, "-"), "/") {
						t.Errorf("%s=%s: the executable must be an absolute path", key, cmd)
					}
					for _, m := range used.FindAllStringSubmatch(cmd, -1) {
						name := m[1]
						if _, ok := defined[name]; !ok && name != "COREOS_PUBLIC_IPV4" {
							t.Errorf("%s uses $%s, which no Environment= line sets", key, name)
						}
					}
				}
			}
		})
	}
}

func TestServiceUnit(t *testing.T) {
	uf := load(t, "my-service@.service")
	e := env(t, uf)
	for _, k := range []string{"DOCKER", "IMAGE", "NAME", "ARGS", "ETCD", "RELEASE_KEY", "RUNDIR"} {
		if e[k] == "" {
			t.Errorf("no Environment=%s", k)
		}
	}
	if e["ARGS"] != "-port %i" {
		t.Errorf("ARGS = %q: the instance must listen on its port", e["ARGS"])
	}
	pre := strings.Join(values(uf, "Service", "ExecStartPre"), "\n")
	contains(t, "ExecStartPre", pre, `pull "$$img"`, `rm -f "$$NAME-%i"`, `"$$ETCD/v2/keys$$RELEASE_KEY"`)
	if e["RELEASE_KEY"] != "/fleetroll/releases/my-service/current" {
		t.Errorf("RELEASE_KEY=%s: fleetroll writes /fleetroll/releases/SERVICE/current", e["RELEASE_KEY"])
	}
	contains(t, "ExecStart", one(t, uf, "Service", "ExecStart"), "run", "--net=host", `--name "$$NAME-%i"`, `"$$(cat "$$RUNDIR/%i.image")" $$ARGS`)
	contains(t, "ExecStop", one(t, uf, "Service", "ExecStop"), `stop -t`, `"$$NAME-%i"`)
	if w := strings.Join(values(uf, "Unit", "Wants"), " "); !strings.Contains(w, "my-service-sidekick@%i.service") {
		t.Errorf("Wants=%s: starting an instance must start its sidekick again", w)
	}
	if got := one(t, uf, "X-Fleet", "Conflicts"); got != "my-service@*.service" {
		t.Errorf("Conflicts=%s: never two instances on one machine", got)
	}
	if strings.Contains(one(t, uf, "Service", "ExecStart"), "--rm") {
		t.Error("--rm races the unit's stop; ExecStopPost removes the container")
	}
}

func TestSidekickUnit(t *testing.T) {
	uf := load(t, "my-service-sidekick@.service")
	if got := one(t, uf, "Unit", "BindsTo"); got != "my-service@%i.service" {
		t.Errorf("BindsTo=%s", got)
	}
	if got := one(t, uf, "X-Fleet", "MachineOf"); got != "my-service@%i.service" {
		t.Errorf("MachineOf=%s: the sidekick must run on its instance's machine", got)
	}
	e := env(t, uf)
	if e["PREFIX"] != "/services/my-service" || e["TTL"] == "" || e["ETCD"] == "" {
		t.Errorf("environment %v", e)
	}
	contains(t, "ExecStart", one(t, uf, "Service", "ExecStart"), `-X PUT "$$key"`, `ttl="$$TTL"`, `value="$$host:%i"`, "$$CHECK_URL", "-X DELETE",
		`"$$ETCD/v2/keys$$DRAIN_KEY"`)
	if e["DRAIN_KEY"] != "/fleetroll/drain/my-service/%i" {
		t.Errorf("DRAIN_KEY=%s: fleetroll's drain keys are /fleetroll/drain/SERVICE/INSTANCE", e["DRAIN_KEY"])
	}
	contains(t, "ExecStop", one(t, uf, "Service", "ExecStop"), "-X DELETE", "$$PREFIX/%i")
}

func TestHookUnit(t *testing.T) {
	uf := load(t, "fleetroll@.service")
	e := env(t, uf)
	for _, k := range []string{"DOCKER", "REPOSITORY", "ETC", "FLEET_SOCKET", "LISTEN"} {
		if e[k] == "" {
			t.Errorf("no Environment=%s", k)
		}
	}
	// The release to run is the operator's: no moving tag by default.
	for _, k := range []string{"VERSION", "IMAGE"} {
		if v, ok := e[k]; !ok || v != "" {
			t.Errorf("Environment=%s=%q, want it there and empty (the operator sets it)", k, v)
		}
	}
	pre := strings.Join(values(uf, "Service", "ExecStartPre"), "\n")
	contains(t, "ExecStartPre", pre, `-/bin/sh -c 'exec "$$DOCKER" pull "$${IMAGE:-$$REPOSITORY:$$VERSION}"'`, `rm -f "$$NAME"`)
	contains(t, "ExecReload", one(t, uf, "Service", "ExecReload"), `kill --signal HUP "$$NAME"`)
	contains(t, "ExecStart", one(t, uf, "Service", "ExecStart"), "--net=host", `-v "$$FLEET_SOCKET:/var/run/fleet.sock"`,
		`-v "$$ETC:/etc/fleetroll:ro"`, "serve", "--endpoint unix:///var/run/fleet.sock", "--token-file /etc/fleetroll/token")
	contains(t, "ExecStop", one(t, uf, "Service", "ExecStop"), `stop -t "$$STOP_TIMEOUT"`)
	// Two receivers or more share one queue through etcd, one per machine.
	contains(t, "ExecStart", one(t, uf, "Service", "ExecStart"), `--etcd-endpoints "$$ETCD_ENDPOINTS" --lock wait}`)
	if e["NAME"] != "fleetroll-%i" {
		t.Errorf("NAME=%s: each receiver's container needs a name of its own", e["NAME"])
	}
	if c := one(t, uf, "X-Fleet", "Conflicts"); c != "fleetroll@*.service" {
		t.Errorf("Conflicts=%s: receivers go on machines of their own", c)
	}
	if strings.Contains(one(t, uf, "Service", "ExecStart"), "token=") || strings.Contains(one(t, uf, "Service", "ExecStart"), "FLEETROLL_TOKEN") {
		t.Error("the secret must come from a file, not the command line")
	}
}

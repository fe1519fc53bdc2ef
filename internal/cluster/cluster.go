// Package cluster drives the local real fleet cluster of
// contrib/cluster/cluster.sh for tests, benchmarks and the demo: it starts
// it, submits template instances through the fleet API and reads what
// systemd reports about them.
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/fleet/client"
	"github.com/coreos/fleet/schema"
	"github.com/coreos/fleet/unit"
	"github.com/fleetroll/fleetroll/fleetroll"
)

// Cluster is a local cluster started by contrib/cluster/cluster.sh.
type Cluster struct {
	Repo     string // repository root
	Dir      string // state directory
	Endpoint string // fleet API, http://127.0.0.1:PORT
	EtcdURL  string
	env      []string
}

// Config chooses where a cluster lives; zero values take the script's
// defaults.
type Config struct {
	Repo      string
	Dir       string
	EtcdPort  int
	FleetPort int
}

// Up starts the cluster (idempotent) and returns a handle to it.
func Up(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Dir == "" {
		cfg.Dir = "/tmp/fleetroll-cluster"
	}
	if cfg.EtcdPort == 0 {
		cfg.EtcdPort = 2379
	}
	if cfg.FleetPort == 0 {
		cfg.FleetPort = 49153
	}
	c := &Cluster{
		Repo:     cfg.Repo,
		Dir:      cfg.Dir,
		Endpoint: fmt.Sprintf("http://127.0.0.1:%d", cfg.FleetPort),
		EtcdURL:  fmt.Sprintf("http://127.0.0.1:%d", cfg.EtcdPort),
	}
	c.env = append(os.Environ(),
		"FLEETROLL_CLUSTER_DIR="+cfg.Dir,
		"FLEETROLL_ETCD_PORT="+strconv.Itoa(cfg.EtcdPort),
		"FLEETROLL_FLEET_PORT="+strconv.Itoa(cfg.FleetPort),
		"XDG_RUNTIME_DIR="+filepath.Join(cfg.Dir, "run"),
		"DBUS_SESSION_BUS_ADDRESS=unix:path="+filepath.Join(cfg.Dir, "run", "bus"),
	)
	if _, err := c.script(ctx, "up"); err != nil {
		return nil, err
	}
	return c, nil
}

// Down stops the cluster and removes its state.
func (c *Cluster) Down(ctx context.Context) error {
	_, err := c.script(ctx, "down")
	return err
}

func (c *Cluster) script(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Repo, "contrib", "cluster", "cluster.sh"), args...)
	cmd.Env = c.env
	cmd.Dir = c.Repo
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("cluster.sh %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// Env returns the environment that talks to the cluster's systemd and fleet.
func (c *Cluster) Env() []string {
	return append(append([]string{}, c.env...), "FLEETCTL_ENDPOINT="+c.Endpoint)
}

// API returns a fleet client for the cluster.
func (c *Cluster) API() (client.API, error) {
	ep, err := url.Parse(c.Endpoint)
	if err != nil {
		return nil, err
	}
	return client.NewHTTPClient(&http.Client{Timeout: 10 * time.Second}, *ep)
}

// LoadTemplate reads a unit file and returns its options for the fleet API,
// with each env entry ("KEY=VALUE") replacing the unit's Environment=KEY=...
// line, or added when it has none.
func LoadTemplate(path string, env ...string) ([]*schema.UnitOption, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	uf, err := unit.NewUnitFile(string(raw))
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	opts := schema.MapUnitFileToSchemaUnitOptions(uf)
	for _, kv := range env {
		key, _, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("env %q: want KEY=VALUE", kv)
		}
		replaced := false
		for _, o := range opts {
			if o.Section == "Service" && o.Name == "Environment" && strings.HasPrefix(o.Value, key+"=") {
				o.Value, replaced = kv, true
			}
		}
		if !replaced {
			opts = append(opts, &schema.UnitOption{Section: "Service", Name: "Environment", Value: kv})
		}
	}
	return opts, nil
}

// Launch submits service@INSTANCE.service for each instance with the given
// options, launches them and waits until fleet reports every one running.
func (c *Cluster) Launch(ctx context.Context, service string, opts []*schema.UnitOption, instances ...string) ([]string, error) {
	api, err := c.API()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, in := range instances {
		name := fleetroll.UnitName(service, in)
		names = append(names, name)
		if err := api.CreateUnit(&schema.Unit{Name: name, Options: opts, DesiredState: "launched"}); err != nil {
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
	}
	for _, n := range names {
		if err := c.WaitRunning(ctx, n); err != nil {
			return nil, err
		}
	}
	return names, nil
}

// Destroy stops and removes units; errors are ignored (cleanup).
func (c *Cluster) Destroy(names ...string) {
	api, err := c.API()
	if err != nil {
		return
	}
	for _, n := range names {
		_ = api.DestroyUnit(n)
	}
}

// WaitRunning waits until fleet reports the unit active/running on a machine.
func (c *Cluster) WaitRunning(ctx context.Context, name string) error {
	f, err := fleetroll.Connect(c.Endpoint, 10*time.Second)
	if err != nil {
		return err
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	last := "no state"
	for {
		st, err := f.UnitState(ctx, name)
		if err == nil || errors.Is(err, fleetroll.ErrNotFound) {
			msg, done, jerr := fleetroll.RunningStatus(st)
			if done {
				return nil
			}
			if jerr != nil {
				return fmt.Errorf("%s: %w", name, jerr)
			}
			last = msg
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to run: %w (%s)", name, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// SystemdState is what systemd --user reports about a unit.
type SystemdState struct {
	MainPID int
	Active  string
	Sub     string
	// Started is ExecMainStartTimestampMonotonic, in microseconds.
	Started int64
}

// Up reports whether systemd has the unit active/running.
func (s SystemdState) Up() bool { return s.Active == "active" && s.Sub == "running" }

// Systemd asks the cluster's systemd for the units' states, in one call.
func (c *Cluster) Systemd(ctx context.Context, units ...string) ([]SystemdState, error) {
	args := append([]string{"--user", "show", "-p", "MainPID,ActiveState,SubState,ExecMainStartTimestampMonotonic"}, units...)
	cmd := exec.CommandContext(ctx, "systemctl", args...)
	cmd.Env = c.env
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("systemctl show: %w", err)
	}
	// Blocks separated by blank lines, one per unit, in order.
	blocks := strings.Split(strings.TrimSpace(string(out)), "\n\n")
	if len(blocks) != len(units) {
		return nil, fmt.Errorf("systemctl show: %d blocks for %d units", len(blocks), len(units))
	}
	states := make([]SystemdState, len(units))
	for i, b := range blocks {
		for _, line := range strings.Split(b, "\n") {
			k, v, _ := strings.Cut(line, "=")
			switch k {
			case "MainPID":
				states[i].MainPID, _ = strconv.Atoi(v)
			case "ActiveState":
				states[i].Active = v
			case "SubState":
				states[i].Sub = v
			case "ExecMainStartTimestampMonotonic":
				states[i].Started, _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return states, nil
}

// Kill kills one of the cluster's processes ("etcd", "fleetd", "systemd")
// with SIGKILL, as a crash would.
func (c *Cluster) Kill(name string) error {
	b, err := os.ReadFile(filepath.Join(c.Dir, name+".pid"))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	if err := p.Kill(); err != nil {
		return fmt.Errorf("kill %s (pid %d): %w", name, pid, err)
	}
	// Wait until it is gone, so that a restart does not find it alive.
	for i := 0; i < 100; i++ {
		if p.Signal(syscall.Signal(0)) != nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s (pid %d) still alive after SIGKILL", name, pid)
}

// Restore starts whatever of the cluster is not running (cluster.sh up).
func (c *Cluster) Restore(ctx context.Context) error {
	_, err := c.script(ctx, "up")
	return err
}

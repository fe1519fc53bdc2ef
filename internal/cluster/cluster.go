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
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	etcd "go.etcd.io/etcd/client/v2"
)

// Cluster is a local cluster started by contrib/cluster/cluster.sh.
type Cluster struct {
	Repo     string // repository root
	Dir      string // state directory
	Endpoint string // fleet API, http://127.0.0.1:PORT
	EtcdURL  string
	// Machines is the number of fleet machines. With more than one, machine
	// I runs in a network namespace of its own at MachineIP(I), reachable
	// from the hub namespace (Hub), not from the host.
	Machines int
	env      []string
}

// Config chooses where a cluster lives; zero values take the script's
// defaults.
type Config struct {
	Repo      string
	Dir       string
	EtcdPort  int
	FleetPort int
	Machines  int // default 1
	// Fresh removes what a cluster in Dir left behind (a run that was
	// killed, a machine that was rebooted) before it starts: its units and
	// etcd data come back otherwise.
	Fresh bool
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
	if cfg.Machines == 0 {
		cfg.Machines = 1
	}
	c := &Cluster{
		Repo:     cfg.Repo,
		Dir:      cfg.Dir,
		Endpoint: fmt.Sprintf("http://127.0.0.1:%d", cfg.FleetPort),
		EtcdURL:  fmt.Sprintf("http://127.0.0.1:%d", cfg.EtcdPort),
		Machines: cfg.Machines,
	}
	c.env = append(os.Environ(),
		"FLEETROLL_CLUSTER_DIR="+cfg.Dir,
		"FLEETROLL_ETCD_PORT="+strconv.Itoa(cfg.EtcdPort),
		"FLEETROLL_FLEET_PORT="+strconv.Itoa(cfg.FleetPort),
		"FLEETROLL_MACHINES="+strconv.Itoa(cfg.Machines),
	)
	c.env = append(c.env, c.machineEnv(1)...)
	if cfg.Fresh {
		if err := c.Down(ctx); err != nil {
			return nil, err
		}
	}
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

// machineDir is machine i's state directory.
func (c *Cluster) machineDir(i int) string {
	if c.Machines <= 1 {
		return c.Dir
	}
	return filepath.Join(c.Dir, fmt.Sprintf("m%d", i))
}

// machineEnv talks to machine i's systemd.
func (c *Cluster) machineEnv(i int) []string {
	run := filepath.Join(c.machineDir(i), "run")
	return []string{
		"FLEETROLL_MACHINE=" + strconv.Itoa(i),
		"XDG_RUNTIME_DIR=" + run,
		"DBUS_SESSION_BUS_ADDRESS=unix:path=" + filepath.Join(run, "bus"),
	}
}

// MachineIP is machine i's public IP, as fleet reports it.
func (c *Cluster) MachineIP(i int) string {
	if c.Machines <= 1 {
		return "127.0.0.1"
	}
	return fmt.Sprintf("10.77.0.%d", 10+i)
}

// Hub returns a command that runs in the namespace from which every
// machine's address is reachable (the host itself for one machine), as the
// proxy's and the operator's host would.
func (c *Cluster) Hub(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Repo, "contrib", "cluster", "cluster.sh"), append([]string{"exec", name}, args...)...)
	cmd.Env = c.Env()
	return cmd
}

// LoseMachine kills machine i at once: its fleetd, its systemd and every
// process of its units. Restore brings it back.
func (c *Cluster) LoseMachine(ctx context.Context, i int) error {
	_, err := c.script(ctx, "lose-machine", strconv.Itoa(i))
	return err
}

// Env returns the environment that talks to the cluster's systemd and fleet.
func (c *Cluster) Env() []string {
	return append(append([]string{}, c.env...), "FLEETCTL_ENDPOINT="+c.Endpoint, "FLEETROLL_ETCD_ENDPOINTS="+c.EtcdURL)
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
		value := kv
		if strings.ContainsAny(kv, " \t") {
			value = strconv.Quote(kv) // one assignment, not several
		}
		replaced := false
		for _, o := range opts {
			if o.Section == "Service" && o.Name == "Environment" && strings.HasPrefix(strings.TrimPrefix(o.Value, `"`), key+"=") {
				o.Value, replaced = value, true
			}
		}
		if !replaced {
			opts = append(opts, &schema.UnitOption{Section: "Service", Name: "Environment", Value: value})
		}
	}
	return opts, nil
}

// Clients connects to the cluster's fleet API, the way fleetroll does,
// and to its etcd.
func (c *Cluster) Clients() (fleetroll.Fleet, etcd.KeysAPI, error) {
	fleet, err := fleetroll.Connect(c.Endpoint, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{c.EtcdURL}})
	if err != nil {
		return nil, nil, err
	}
	return fleet, kapi, nil
}

// LaunchDemo launches the demo service (contrib/demo/my-service@.service)
// as SERVICE@PORT.service for each port and returns the units' names.
func (c *Cluster) LaunchDemo(ctx context.Context, service string, ports ...string) ([]string, error) {
	opts, err := LoadTemplate(filepath.Join(c.Repo, "contrib", "demo", "my-service@.service"), "STATE="+c.Dir)
	if err != nil {
		return nil, err
	}
	return c.Launch(ctx, service, opts, ports...)
}

// Launch submits service@INSTANCE.service for each instance with the given
// options, launches them and waits until fleet reports every one running.
// A unit fleet already had and that has failed (a cluster brought back up
// after its runtime directory was wiped, as at a reboot, starts its units
// before their drop-ins are written again) is restarted once through fleet,
// as fleetroll restart would, instead of being reported failed.
func (c *Cluster) Launch(ctx context.Context, service string, opts []*schema.UnitOption, instances ...string) ([]string, error) {
	api, err := c.API()
	if err != nil {
		return nil, err
	}
	var names []string
	existed := map[string]bool{}
	for _, in := range instances {
		name := fleetroll.UnitName(service, in)
		names = append(names, name)
		u, err := api.Unit(name)
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", name, err)
		}
		existed[name] = u != nil
		if err := api.CreateUnit(&schema.Unit{Name: name, Options: opts, DesiredState: "launched"}); err != nil {
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
	}
	for _, n := range names {
		err := c.WaitRunning(ctx, n)
		if errors.Is(err, fleetroll.ErrUnitFailed) && existed[n] {
			err = c.restart(ctx, n)
		}
		if err != nil {
			return nil, err
		}
	}
	return names, nil
}

// restart restarts one unit through fleet with fleetroll's roller.
func (c *Cluster) restart(ctx context.Context, name string) error {
	f, err := fleetroll.Connect(c.Endpoint, 10*time.Second)
	if err != nil {
		return err
	}
	plan, err := fleetroll.MakePlan(ctx, f, fleetroll.Target{Units: []string{name}})
	if err != nil {
		return err
	}
	r, err := fleetroll.NewRoller(f, fleetroll.Options{NudgeInterval: fleetroll.DefaultNudgeInterval})
	if err != nil {
		return err
	}
	if _, err := r.Roll(ctx, plan); err != nil {
		return fmt.Errorf("restart %s, failed from before: %w\n%s", name, err, c.unitReport(context.WithoutCancel(ctx), name))
	}
	return nil
}

// Attach returns a handle to a cluster already up, as "cluster.sh env"
// describes it: FLEETROLL_CLUSTER_DIR (default /tmp/fleetroll-cluster), the
// fleet API at endpoint, and the number of machines cluster.sh recorded.
func Attach(endpoint string) *Cluster {
	dir := os.Getenv("FLEETROLL_CLUSTER_DIR")
	if dir == "" {
		dir = "/tmp/fleetroll-cluster"
	}
	machines := 1
	if b, err := os.ReadFile(filepath.Join(dir, "machines")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
			machines = n
		}
	}
	return &Cluster{Dir: dir, Endpoint: endpoint, Machines: machines}
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

// DestroyAndWait destroys units and waits until no machine's systemd has
// them active any more: fleet's agent stops them a moment after the
// destroy, and what they write meanwhile would race a caller's cleanup of
// their files.
func (c *Cluster) DestroyAndWait(ctx context.Context, names ...string) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		if i%10 == 0 {
			c.Destroy(names...) // again every 2 s: a destroy can be lost
		}
		states, err := c.Systemd(ctx, names...)
		active := ""
		for i, st := range states {
			if st.Active != "inactive" && st.Active != "failed" {
				active = names[i] + " is " + st.Active
				break
			}
		}
		if err == nil && active == "" {
			return nil
		}
		if err != nil {
			active = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("destroy %s: %w (%s)", strings.Join(names, ", "), ctx.Err(), active)
		case <-tick.C:
		}
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
				return fmt.Errorf("%s: %w\n%s", name, jerr, c.unitReport(context.WithoutCancel(ctx), name))
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

// unitReport says what every machine's systemd knows of a failed unit
// (result, exit status, restarts, status), for a failure message.
func (c *Cluster) unitReport(ctx context.Context, unit string) string {
	var b strings.Builder
	for i := 1; i <= max(c.Machines, 1); i++ {
		env := append(append([]string{}, c.env...), c.machineEnv(i)...)
		for _, args := range [][]string{
			{"show", "-p", "Result", "-p", "ExecMainCode", "-p", "ExecMainStatus", "-p", "NRestarts", "-p", "LoadState", unit},
			{"status", "--no-pager", "-l", "-n", "20", unit},
		} {
			cmd := exec.CommandContext(ctx, "systemctl", append([]string{"--user"}, args...)...)
			cmd.Env = env
			out, _ := cmd.CombinedOutput()
			fmt.Fprintf(&b, "machine %d: systemctl --user %s:\n%s\n", i, strings.Join(args, " "), out)
		}
	}
	return b.String()
}

// SystemdState is what systemd --user reports about a unit.
type SystemdState struct {
	MainPID int
	Active  string
	Sub     string
	// Started is ExecMainStartTimestampMonotonic, in microseconds.
	Started int64
	// Machine is the machine (1..Machines) whose systemd has the unit
	// loaded; 0 when none has.
	Machine int
}

// Up reports whether systemd has the unit active/running.
func (s SystemdState) Up() bool { return s.Active == "active" && s.Sub == "running" }

// Systemd asks the cluster's systemd instances for the units' states, one
// call per machine. A unit is reported from the machine that has it loaded
// (running, if several have). A machine whose systemd does not answer (a
// lost machine) is passed over; it is an error only when none answers.
func (c *Cluster) Systemd(ctx context.Context, units ...string) ([]SystemdState, error) {
	return c.systemd(ctx, false, units)
}

// SystemdAll is Systemd that fails when any machine does not answer: a
// sample of how many instances run must not count a slow machine's units as
// down (the benchmarks).
func (c *Cluster) SystemdAll(ctx context.Context, units ...string) ([]SystemdState, error) {
	return c.systemd(ctx, true, units)
}

func (c *Cluster) systemd(ctx context.Context, all bool, units []string) ([]SystemdState, error) {
	if c.Machines <= 1 {
		// One machine: what its systemd says, loaded or not.
		st, _, err := c.machineSystemd(ctx, 1, units)
		return st, err
	}
	states := make([]SystemdState, len(units))
	for i := range states {
		states[i] = SystemdState{Active: "inactive", Sub: "dead"}
	}
	var errs []error
	for m := 1; m <= c.Machines; m++ {
		st, loaded, err := c.machineSystemd(ctx, m, units)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i := range units {
			if loaded[i] && (states[i].Machine == 0 || st[i].Up()) {
				states[i] = st[i]
			}
		}
	}
	if len(errs) == c.Machines || (all && len(errs) > 0) {
		return nil, errors.Join(errs...)
	}
	return states, nil
}

func (c *Cluster) machineSystemd(ctx context.Context, m int, units []string) ([]SystemdState, []bool, error) {
	args := append([]string{"--user", "show", "-p", "MainPID,ActiveState,SubState,ExecMainStartTimestampMonotonic,LoadState"}, units...)
	cmd := exec.CommandContext(ctx, "systemctl", args...)
	cmd.Env = append(append([]string{}, c.env...), c.machineEnv(m)...)
	out, err := cmd.Output()
	if err != nil {
		return nil, nil, fmt.Errorf("machine %d: systemctl show: %w", m, err)
	}
	// Blocks separated by blank lines, one per unit, in order.
	blocks := strings.Split(strings.TrimSpace(string(out)), "\n\n")
	if len(blocks) != len(units) {
		return nil, nil, fmt.Errorf("machine %d: systemctl show: %d blocks for %d units", m, len(blocks), len(units))
	}
	states := make([]SystemdState, len(units))
	loaded := make([]bool, len(units))
	for i, b := range blocks {
		states[i].Machine = m
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
			case "LoadState":
				loaded[i] = v == "loaded"
			}
		}
	}
	return states, loaded, nil
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

// BuildFleetroll builds ./cmd/fleetroll of the repository at repo into
// out (a file path), once, before a benchmark starts its clusters: the
// tree may change under a long run.
func BuildFleetroll(ctx context.Context, repo, out string) error {
	build := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/fleetroll")
	build.Dir = repo
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build fleetroll: %w\n%s", err, b)
	}
	return nil
}

// Command prepull measures what the pre-pull buys (issue 11): on a local
// cluster of three machines, each with its own container storage and a
// bandwidth-limited link to a registry in the hub namespace, it rolls the
// shipped instance unit from v1 to v2 of images carrying a layer of random
// (incompressible) data, once with fleetroll deploy's pre-pull and once with
// each instance pulling as it starts (--no-pre-pull), for each size. It
// prints each instance's downtime (stop requested until running again) and
// the whole rollout's time.
//
//	bench/prepull.sh [-sizes 50,300] [-rate 100mbit] [-keep]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/cluster"
)

const (
	stateDir  = "/tmp/fleetroll-bench-pull"
	etcdPort  = 32379
	fleetPort = 49183
	regAddr   = "10.77.0.1:15003" // the hub's bridge address: every machine reaches it
)

var ports = []string{"8921", "8922", "8923"}

func main() {
	repo := flag.String("repo", ".", "the repository root")
	sizes := flag.String("sizes", "50,300", "sizes in MB of the random layer, comma-separated")
	rate := flag.String("rate", "100mbit", "each machine's link from the registry (tc tbf rate)")
	keep := flag.Bool("keep", false, "leave the cluster running")
	flag.Parse()
	if err := run(*repo, *sizes, *rate, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "prepull:", err)
		os.Exit(1)
	}
}

type bench struct {
	c        *cluster.Cluster
	repo     string
	bin      string // fleetroll
	imageBin string // contrib/image
	hub      string // the hub's network namespace
}

func run(repo, sizeList, rate string, keep bool) error {
	repo, _ = filepath.Abs(repo)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	c, err := cluster.Up(ctx, cluster.Config{Repo: repo, Dir: stateDir, EtcdPort: etcdPort, FleetPort: fleetPort, Machines: 3})
	if err != nil {
		return err
	}
	if !keep {
		defer func() { _ = c.Down(context.Background()) }()
	}
	b := &bench{c: c, repo: repo, bin: filepath.Join(stateDir, "bin", "fleetroll"), imageBin: filepath.Join(stateDir, "bin", "image"),
		hub: "fr-" + filepath.Base(stateDir) + "-hub"}
	for out, pkg := range map[string]string{b.bin: "./cmd/fleetroll", b.imageBin: "./contrib/image"} {
		if _, err := b.sh(ctx, "", "go", "build", "-o", out, pkg); err != nil {
			return err
		}
	}

	// The registry, in the hub; each machine's link from it limited.
	regDir := filepath.Join(stateDir, "registry")
	cfg := filepath.Join(stateDir, "registry.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", regDir, regAddr)), 0o644); err != nil {
		return err
	}
	reg := c.Hub(ctx, "docker-registry", "serve", cfg)
	if err := reg.Start(); err != nil {
		return err
	}
	defer func() { _ = reg.Process.Kill(); _ = reg.Wait() }()
	if err := b.await(ctx, "the registry", func() error {
		_, err := b.hubRun(ctx, "curl", "-fsS", "-m", "2", "http://"+regAddr+"/v2/")
		return err
	}); err != nil {
		return err
	}
	for i := 1; i <= 3; i++ {
		if _, err := b.sh(ctx, "", "ip", "netns", "exec", b.hub, "tc", "qdisc", "replace", "dev", fmt.Sprintf("m%d", i),
			"root", "tbf", "rate", rate, "burst", "256kb", "latency", "200ms"); err != nil {
			return err
		}
		if err := b.machineSettings(i); err != nil {
			return err
		}
	}

	// The instances: the shipped unit, one per machine (its Conflicts=).
	if _, err := b.image(ctx, "base", "base", 0); err != nil {
		return err
	}
	opts, err := cluster.LoadTemplate(filepath.Join(repo, "units", "my-service@.service"), "IMAGE="+regAddr+"/bench/web:base")
	if err != nil {
		return err
	}
	if _, err := c.Launch(ctx, "my-service", opts, ports...); err != nil {
		return err
	}

	fmt.Printf("pre-pull benchmark: 3 machines, each with its own container storage; registry link %s per machine\n", rate)
	fmt.Printf("downtime = stop requested until running again, per instance; grace 0\n\n")
	fmt.Printf("%-6s %-22s %9s %9s   %s\n", "size", "mode", "rollout", "pull", "downtime per instance")
	for _, s := range strings.Split(sizeList, ",") {
		mb, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || mb <= 0 {
			return fmt.Errorf("-sizes: %q", s)
		}
		v1, err := b.image(ctx, fmt.Sprintf("s%d-v1", mb), "v1", mb)
		if err != nil {
			return err
		}
		v2, err := b.image(ctx, fmt.Sprintf("s%d-v2", mb), "v2", mb)
		if err != nil {
			return err
		}
		if _, err := b.deploy(ctx, v1); err != nil {
			return err
		}
		with, err := b.deploy(ctx, v2)
		if err != nil {
			return err
		}
		// Back to v1 (present everywhere), v2 gone from every machine.
		if _, err := b.deploy(ctx, v1); err != nil {
			return err
		}
		for i := 1; i <= 3; i++ {
			if _, err := b.podman(ctx, i, "rmi", "-f", v2); err != nil {
				return err
			}
		}
		without, err := b.deploy(ctx, v2, "--no-pre-pull")
		if err != nil {
			return err
		}
		print(mb, "pre-pull", with)
		print(mb, "unit pulls (no pre-pull)", without)
	}
	return nil
}

func print(mb int, mode string, r *fleetroll.Report) {
	var down []string
	for _, u := range r.Units {
		down = append(down, (u.Stop + u.Start).String())
	}
	pull := "-"
	if r.Pull != nil {
		pull = r.Pull.Seconds.String()
	}
	fmt.Printf("%-6s %-22s %9s %9s   %s\n", fmt.Sprintf("%dMB", mb), mode, r.Finished.Sub(r.Started).Round(time.Millisecond), pull, strings.Join(down, "  "))
}

// machineSettings gives machine i its own container storage and podman
// state, and the drop-ins that point the instance and pre-pull units at it.
func (b *bench) machineSettings(i int) error {
	m := filepath.Join(stateDir, fmt.Sprintf("m%d", i))
	repoConf, err := os.ReadFile(filepath.Join(b.repo, "contrib", "container", "containers.conf"))
	if err != nil {
		return err
	}
	files := map[string]string{
		"containers.conf": strings.Replace(string(repoConf), "[engine]\n", fmt.Sprintf("[engine]\ntmp_dir = %q\n", filepath.Join(m, "libpod-tmp")), 1),
		"storage.conf":    fmt.Sprintf("[storage]\ndriver = \"overlay\"\ngraphroot = %q\nrunroot = %q\n", filepath.Join(m, "storage"), filepath.Join(m, "storage-run")),
		"registries.conf": fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", regAddr),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(m, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	dropIn := fmt.Sprintf("[Service]\nEnvironment=DOCKER=/usr/bin/podman\nEnvironment=CONTAINERS_CONF=%s\nEnvironment=CONTAINERS_STORAGE_CONF=%s\nEnvironment=CONTAINERS_REGISTRIES_CONF=%s\nEnvironment=ETCD=http://127.0.0.1:%d\n",
		filepath.Join(m, "containers.conf"), filepath.Join(m, "storage.conf"), filepath.Join(m, "registries.conf"), etcdPort)
	for unit, extra := range map[string]string{
		"my-service@.service":     fmt.Sprintf("Environment=RUNDIR=%s\nEnvironment=STOP_TIMEOUT=5\n", filepath.Join(m, "run-my-service")),
		"fleetroll-pull@.service": "",
	} {
		d := filepath.Join(m, "run", "systemd", "user", unit+".d")
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, "10-bench.conf"), []byte(dropIn+extra), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// image builds and pushes the demo service as REGISTRY/bench/web:TAG with a
// random layer of padMB, and returns it pinned by digest.
func (b *bench) image(ctx context.Context, tag, version string, padMB int) (string, error) {
	out, err := b.hubRun(ctx, b.imageBin, "-image", regAddr+"/bench/web:"+tag, "-version", version, "-pad-mb", strconv.Itoa(padMB))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

func (b *bench) deploy(ctx context.Context, image string, extra ...string) (*fleetroll.Report, error) {
	args := append([]string{"deploy", "my-service", "--image", image, "--ports", strings.Join(ports, ","), "--grace", "0s",
		"--endpoint", b.c.Endpoint, "--etcd-endpoints", b.c.EtcdURL, "-o", "json"}, extra...)
	out, err := b.hubRun(ctx, b.bin, args...)
	if err != nil {
		return nil, err
	}
	var r fleetroll.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return nil, fmt.Errorf("deploy %s: %w\n%s", image, err, out)
	}
	if r.Status != fleetroll.StatusSucceeded {
		return nil, fmt.Errorf("deploy %s: %s: %s", image, r.Status, r.Error)
	}
	return &r, nil
}

// podman runs podman against machine i's storage.
func (b *bench) podman(ctx context.Context, i int, args ...string) (string, error) {
	m := filepath.Join(stateDir, fmt.Sprintf("m%d", i))
	cmd := exec.CommandContext(ctx, "podman", args...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(m, "containers.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(m, "storage.conf"), "CONTAINERS_REGISTRIES_CONF="+filepath.Join(m, "registries.conf"))
	return output(cmd)
}

func (b *bench) hubRun(ctx context.Context, name string, args ...string) (string, error) {
	cmd := b.c.Hub(ctx, name, args...)
	cmd.Dir = b.repo
	return output(cmd)
}

func (b *bench) sh(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = b.repo
	if dir != "" {
		cmd.Dir = dir
	}
	return output(cmd)
}

// output runs cmd and returns its stdout; an error carries its stderr.
func output(cmd *exec.Cmd) (string, error) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, errb.String())
	}
	return out.String(), nil
}

// await polls cond until it holds (a minute at most).
func (b *bench) await(ctx context.Context, what string, cond func() error) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

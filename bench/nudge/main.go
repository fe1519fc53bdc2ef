// Command nudge (bench/roll before issue 24) measures, on the local real
// cluster and in one run, fleetroll's wall time to roll three instances with
// grace 0 next to the naive loop's
// (internal/naive: stop, poll until stopped, start, poll until running), and
// fleet's own median stop and start latency per unit. It also counts how many
// instances each method really restarted (a new MainPID).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/fleetroll/fleetroll/internal/fleetcount"
	"github.com/fleetroll/fleetroll/internal/naive"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	repo := flag.String("repo", ".", "repository root")
	rounds := flag.Int("rounds", 1, "fleetroll rolls to run (more samples for the medians)")
	naivePoll := flag.Duration("naive-poll", time.Second, "the naive loop's poll interval")
	nudges := flag.String("nudge", "", "also roll with these --nudge-interval values, comma-separated, interleaved with the rolls without")
	machines := flag.Int("machines", 1, "fleet machines of the cluster (more than 1: a cluster of its own under -dir)")
	dir := flag.String("dir", "", "the cluster's state directory (default: the demo's, or /tmp/fleetroll-bench-roll3 with -machines > 1)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	cfg := cluster.Config{Repo: *repo, Dir: *dir, Machines: *machines}
	if *machines > 1 && cfg.Dir == "" {
		cfg.Dir, cfg.EtcdPort, cfg.FleetPort = "/tmp/fleetroll-bench-roll3", 42379, 49183
	}
	cl, err := cluster.Up(ctx, cfg)
	if err != nil {
		return err
	}
	ports := []string{"19901", "19902", "19903"}
	units, err := cl.LaunchDemo(ctx, "bench-roll", ports...)
	if err != nil {
		return err
	}
	defer cl.Destroy(units...)
	fleet, err := fleetroll.Connect(cl.Endpoint, 10*time.Second)
	if err != nil {
		return err
	}
	plan, err := fleetroll.MakePlan(ctx, fleet, fleetroll.Target{Service: "bench-roll", Instances: ports})
	if err != nil {
		return err
	}

	modes := []*mode{{name: "fleetroll, no nudge"}}
	for _, v := range strings.Split(*nudges, ",") {
		if v = strings.TrimSpace(v); v == "" {
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("-nudge %q: want positive durations", v)
		}
		modes = append(modes, &mode{name: "fleetroll, nudge " + d.String(), nudge: d})
	}
	counted := &fleetcount.Fleet{Fleet: fleet}
	for i := 0; i < *rounds; i++ {
		for _, m := range modes { // interleaved: fleet's timing drifts, both see the same
			before, err := cl.Systemd(ctx, units...)
			if err != nil {
				return err
			}
			r, err := fleetroll.NewRoller(counted, fleetroll.Options{Grace: 0, NudgeInterval: m.nudge})
			if err != nil {
				return err
			}
			counted.Reset()
			cpu0 := clusterCPU(cl)
			t0 := time.Now()
			rep, err := r.Roll(ctx, plan)
			if err != nil {
				return fmt.Errorf("%s roll: %w", m.name, err)
			}
			m.wall = append(m.wall, time.Since(t0))
			cpu1 := clusterCPU(cl)
			m.etcdCPU += cpu1.etcd - cpu0.etcd
			m.fleetdCPU += cpu1.fleetd - cpu0.fleetd
			for _, u := range rep.Units {
				m.stops = append(m.stops, time.Duration(u.Stop))
				m.starts = append(m.starts, time.Duration(u.Start))
			}
			reads, writes := counted.Reset()
			m.reads, m.writes = m.reads+reads, m.writes+writes
			after, err := cl.Systemd(ctx, units...)
			if err != nil {
				return err
			}
			m.restarted = append(m.restarted, restarted(before, after))
		}
	}
	stops, starts := modes[0].stops, modes[0].starts
	rollWall, rollRestarted := modes[0].wall, modes[0].restarted

	before, err := cl.Systemd(ctx, units...)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := naive.Roll(ctx, fleet, units, *naivePoll); err != nil {
		return fmt.Errorf("naive loop: %w", err)
	}
	naiveWall := time.Since(t0)
	after, err := cl.Systemd(ctx, units...)
	if err != nil {
		return err
	}
	naiveRestarted := restarted(before, after)

	fmt.Printf("roll of 3 instances on the local cluster (fleet v1.0.0, systemd --user), grace 0\n")
	fmt.Printf("%-34s %12s %22s\n", "method", "wall time", "really restarted")
	for i, w := range rollWall {
		fmt.Printf("%-34s %12s %18d / 3\n", fmt.Sprintf("fleetroll (round %d)", i+1), w.Round(time.Millisecond), rollRestarted[i])
	}
	fmt.Printf("%-34s %12s %18d / 3\n", fmt.Sprintf("naive loop (poll %s)", *naivePoll), naiveWall.Round(time.Millisecond), naiveRestarted)
	fmt.Printf("fleet latency per unit, median of %d: stop %s, start %s (min %s / %s, max %s / %s)\n",
		len(stops), median(stops), median(starts), slices.Min(stops).Round(time.Millisecond), slices.Min(starts).Round(time.Millisecond),
		slices.Max(stops).Round(time.Millisecond), slices.Max(starts).Round(time.Millisecond))
	fast := 0
	for _, d := range append(append([]time.Duration{}, stops...), starts...) {
		if d <= 3*time.Second {
			fast++
		}
	}
	fmt.Printf("every stop:  %v\nevery start: %v\nphases at or under 3s: %d of %d (%.0f%%)\n",
		rounded(stops), rounded(starts), fast, len(stops)+len(starts), 100*float64(fast)/float64(len(stops)+len(starts)))
	if len(modes) > 1 {
		fmt.Printf("\ninterleaved rounds, %d each:\n", *rounds)
		fmt.Printf("%-24s %-34s %8s %10s %16s %22s %10s\n", "method", "wall times (s)", "median", "phases<=3s", "API calls/unit", "CPU/roll etcd, fleetd", "restarted")
		for _, m := range modes {
			phases := append(append([]time.Duration{}, m.stops...), m.starts...)
			fast := 0
			for _, d := range phases {
				if d <= 3*time.Second {
					fast++
				}
			}
			units := float64(len(m.stops))
			total := 0
			for _, n := range m.restarted {
				total += n
			}
			var walls []string
			for _, w := range m.wall {
				walls = append(walls, fmt.Sprintf("%.1f", w.Seconds()))
			}
			rolls := time.Duration(len(m.wall))
			fmt.Printf("%-24s %-34s %8s %9.0f%% %7.1f r %4.1f w %10s %10s %7d/%d\n", m.name, strings.Join(walls, " "), median(m.wall),
				100*float64(fast)/float64(len(phases)), float64(m.reads)/units, float64(m.writes)/units,
				(m.etcdCPU / rolls).Round(time.Millisecond), (m.fleetdCPU / rolls).Round(time.Millisecond), total, len(m.stops))
			fmt.Printf("%-24s stops %v\n%-24s starts %v\n", "", rounded(m.stops), "", rounded(m.starts))
		}
	}
	return nil
}

// mode is one way of rolling, measured over the rounds.
type mode struct {
	name                string
	nudge               time.Duration
	wall, stops, starts []time.Duration
	restarted           []int
	reads, writes       int
	etcdCPU, fleetdCPU  time.Duration
}

// cpu is the CPU time (user and system) etcd and every fleetd have used.
type cpu struct{ etcd, fleetd time.Duration }

// clusterCPU reads the CPU time of the cluster's etcd and fleetds from
// /proc (pid files under the cluster's directory).
func clusterCPU(cl *cluster.Cluster) cpu {
	var c cpu
	c.etcd = procCPU(filepath.Join(cl.Dir, "etcd.pid"))
	files, _ := filepath.Glob(filepath.Join(cl.Dir, "fleetd.pid"))
	more, _ := filepath.Glob(filepath.Join(cl.Dir, "m*", "fleetd.pid"))
	for _, f := range append(files, more...) {
		c.fleetd += procCPU(f)
	}
	return c
}

// procCPU is utime+stime of the process in the pid file.
func procCPU(pidFile string) time.Duration {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0
	}
	stat, err := os.ReadFile("/proc/" + strings.TrimSpace(string(b)) + "/stat")
	if err != nil {
		return 0
	}
	// The fields after the command name, which may hold spaces.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

func restarted(before, after []cluster.SystemdState) int {
	n := 0
	for i := range before {
		if after[i].Up() && after[i].MainPID != before[i].MainPID {
			n++
		}
	}
	return n
}

func rounded(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(100 * time.Millisecond)
	}
	return out
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return m.Round(time.Millisecond)
}

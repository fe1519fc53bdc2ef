// Command roll measures fleet's stop and start phases as fleetroll sees
// them (issue 24): on a local cluster of one machine and on one of three,
// each of its own, it runs N rolls of the demo service's three instances
// with fleetroll restart --grace 0s --min-healthy-time 0s -o json (nudging
// at its default), and reads each rollout's record.
//
// A phase's time is its span in the record: from fleetroll's write of the
// unit's target state to fleet's published result (stopped, or running)
// as fleetroll observed it. A roll's time is the record's start to finish.
//
// Per cluster and phase kind it prints the count, p50, p99, maximum and
// how many phases took over 3 s and over 6 s; every slow phase with its
// diagnosis (fleetroll's own, made after fleetroll.StallAfter); the median
// roll. Each goal is printed with PASS or FAIL, and it exits 1 when one is
// missed.
//
// fleet runs with its debug log (FLEETROLL_FLEETD_DEBUG=1), and fleetroll
// at --log-level debug: both are kept under -logs after the clusters go.
//
//	bench/roll.sh [-machines 1,3] [-rolls 20] [-logs DIR] [-keep]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/cluster"
	etcd "go.etcd.io/etcd/client/v2"
)

const service = "bench-roll"

var ports = []string{"19901", "19902", "19903"}

// A cluster of its own per size: its directory and ports.
type site struct {
	machines        int
	dir             string
	etcdPort, fleet int
	// baseline is today's median roll in this bench, before fleetroll
	// timed its writes to fleet's agents and republish (docs/benchmarks.md:
	// the last runs before the holds, 12.13 s and 12.23 s). The in-process
	// rolls of bench/nudge (11.8 s and 12.9 s) began each roll from a
	// quiet agent; these begin in the second after the last one's launch.
	baseline time.Duration
}

// The ports are under the kernel's ephemeral range (32768 and up): an
// outgoing connection took 42380, the three-machine etcd's peer port,
// once, and that cluster did not start.
var sites = map[int]site{
	1: {1, "/tmp/fleetroll-bench-roll1", 28359, 28263, 12130 * time.Millisecond},
	3: {3, "/tmp/fleetroll-bench-roll3", 28379, 28183, 12230 * time.Millisecond},
}

// goals of issue 24, per cluster.
const (
	slowPhase  = 3 * time.Second
	maxSlow    = 1 // phases over slowPhase, of 6 per roll
	worstPhase = 6 * time.Second
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	repo := flag.String("repo", ".", "the repository root")
	machinesFlag := flag.String("machines", "1,3", "cluster sizes, comma-separated (1 and 3)")
	rolls := flag.Int("rolls", 20, "rolls per cluster")
	logs := flag.String("logs", "/tmp/fleetroll-bench-roll-logs", "where fleetd's debug logs and fleetroll's are kept")
	keep := flag.Bool("keep", false, "leave the clusters running")
	poll := flag.Bool("poll", false, "roll with --watch=false: waits woken by polls alone, not by fleet's state writes in etcd")
	flag.Parse()
	var extra []string
	if *poll {
		extra = append(extra, "--watch=false")
	}
	var sizes []int
	for _, f := range strings.Split(*machinesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if _, ok := sites[n]; err != nil || !ok {
			return fmt.Errorf("-machines %q: want 1 and/or 3", *machinesFlag)
		}
		sizes = append(sizes, n)
	}
	if *rolls < 1 {
		return fmt.Errorf("-rolls %d: want at least 1", *rolls)
	}
	abs, err := filepath.Abs(*repo)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(*logs); err != nil {
		return err
	}
	// fleet's debug log: cluster.sh reads it from the environment.
	os.Setenv("FLEETROLL_FLEETD_DEBUG", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// fleetroll, built once before any cluster: the tree may change under a
	// long run.
	binDir, err := os.MkdirTemp("", "fleetroll-bench-roll")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	bin := filepath.Join(binDir, "fleetroll")
	if err := cluster.BuildFleetroll(ctx, abs, bin); err != nil {
		return err
	}

	fmt.Printf("stop and start phases of %d rolls of 3 instances per cluster (issue 24)\n", *rolls)
	fmt.Printf("settings: the demo service (contrib/demo), fleet v1.0.0 with its debug log, one cluster of its own per size;\n")
	fmt.Printf("  fleetroll restart --grace 0s --min-healthy-time 0s -o json (no watch after the start, as the issue's figures),\n")
	fmt.Printf("  nudge %s and poll %s (the defaults), no drain, no health gate, one instance at a time, rolls back to back\n",
		fleetroll.DefaultNudgeInterval, fleetroll.DefaultPollInterval)
	if *poll {
		fmt.Printf("  --watch=false: waits woken by polls alone, not by fleet's state writes in etcd (the default with etcd)\n")
	}
	fmt.Printf("  phase: its span in the record, fleetroll's write to fleet's published result as fleetroll saw it; roll: the record's start to finish\n")

	var results []result
	for _, m := range sizes {
		res, err := bench(ctx, abs, bin, sites[m], *rolls, filepath.Join(*logs, fmt.Sprintf("%dm", m)), *keep, extra)
		if err != nil {
			return err
		}
		results = append(results, res)
	}

	fmt.Println()
	failed := 0
	for _, r := range results {
		tag := fmt.Sprintf("%d machine(s)", r.site.machines)
		all := append(append([]phase{}, r.phases["stop"]...), r.phases["start"]...)
		over3, over6 := count(all, slowPhase), count(all, worstPhase)
		med := median(r.rolls)
		for _, g := range []struct {
			name string
			ok   bool
			got  string
		}{
			{fmt.Sprintf("at most %d of %d phases over %s", maxSlow, len(all), slowPhase), over3 <= maxSlow, fmt.Sprintf("%d", over3)},
			{fmt.Sprintf("none over %s", worstPhase), over6 == 0, fmt.Sprintf("%d (max %s)", over6, secs(maxOf(all)))},
			{fmt.Sprintf("median roll no slower than today's (%s)", secs(r.site.baseline)), med <= r.site.baseline, secs(med)},
		} {
			mark := "PASS"
			if !g.ok {
				mark, failed = "FAIL", failed+1
			}
			fmt.Printf("  %s %s: %s: %s\n", mark, tag, g.name, g.got)
		}
	}
	fmt.Printf("\nlogs: %s (fleetd.log per machine with fleet's debug lines, rollNN.log fleetroll's)\n", *logs)
	if failed > 0 {
		return fmt.Errorf("%d goal(s) missed", failed)
	}
	return nil
}

// phase is one stop or start of a unit.
type phase struct {
	roll      int
	unit      string
	took      time.Duration
	diagnosis string
}

type result struct {
	site   site
	phases map[string][]phase // by kind: stop, start
	rolls  []time.Duration
	// paused: the phases whose wall-clock span exceeds fleetroll's own
	// measure by over a second (the machine paused).
	paused []string
}

// bench starts the site's cluster afresh, launches the demo's instances,
// rolls them n times and prints the figures. fleetd's logs and fleetroll's
// are kept under logDir.
func bench(ctx context.Context, repo, bin string, s site, n int, logDir string, keep bool, extra []string) (res result, err error) {
	res = result{site: s, phases: map[string][]phase{}}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return res, err
	}
	c, err := cluster.Up(ctx, cluster.Config{Repo: repo, Dir: s.dir, EtcdPort: s.etcdPort, FleetPort: s.fleet, Machines: s.machines, Fresh: true})
	if err != nil {
		return res, err
	}
	defer func() {
		keepLogs(s, logDir)
		if keep {
			return
		}
		if derr := c.Down(context.WithoutCancel(ctx)); derr != nil && err == nil {
			err = derr
		}
	}()
	if _, err := c.LaunchDemo(ctx, service, ports...); err != nil {
		return res, err
	}
	// fleetroll dates fleet's periodic republish from the last one, and a
	// fleetd has none for its first 24 s: the rolls begin once it has
	// republished, as on a cluster that has run a while.
	if err := firstRepublish(ctx, c); err != nil {
		return res, err
	}
	for i := 1; i <= n; i++ {
		rep, err := roll(ctx, c, bin, filepath.Join(logDir, fmt.Sprintf("roll%02d.log", i)), extra)
		if err != nil {
			return res, fmt.Errorf("%d machine(s), roll %d: %w", s.machines, i, err)
		}
		if rep.Status != fleetroll.StatusSucceeded {
			return res, fmt.Errorf("%d machine(s), roll %d: %s", s.machines, i, rep.Status)
		}
		var excess time.Duration // of the roll's wall clock, over its phases' own measures
		for _, u := range rep.Units {
			for _, sp := range u.Phases {
				if sp.Phase != fleetroll.PhaseStop && sp.Phase != fleetroll.PhaseStart {
					continue
				}
				// The phase's time as fleetroll measured it (its process's
				// monotonic clock), not the span's wall-clock times: a pause
				// of the whole machine (a VM held by its host: fleetd and
				// fleetroll silent alike, the wall clock stepped on) is no
				// time fleet took. The difference is printed.
				took := time.Duration(u.Stop)
				if sp.Phase == fleetroll.PhaseStart {
					took = time.Duration(u.Start)
				}
				if wall := sp.Finished.Sub(sp.Started); wall-took > time.Second {
					excess += wall - took
					res.paused = append(res.paused, fmt.Sprintf("roll %d %s %s: %s by fleetroll's clock, %s by the wall clock",
						i, u.Unit, sp.Phase, secs(took), secs(wall)))
				}
				res.phases[string(sp.Phase)] = append(res.phases[string(sp.Phase)],
					phase{roll: i, unit: u.Unit, took: took, diagnosis: sp.Diagnosis})
			}
		}
		res.rolls = append(res.rolls, rep.Finished.Sub(rep.Started)-excess)
	}

	fmt.Printf("\n%d machine(s): %d rolls, every one succeeded\n", s.machines, n)
	fmt.Printf("  %-6s %5s %8s %8s %8s %7s %7s   (p99: nearest rank; of 60, the largest)\n", "phase", "count", "p50", "p99", "max", ">3 s", ">6 s")
	for _, k := range []string{"stop", "start"} {
		ps := res.phases[k]
		fmt.Printf("  %-6s %5d %8s %8s %8s %7d %7d\n", k, len(ps), secs(pct(ps, 50)), secs(pct(ps, 99)), secs(maxOf(ps)),
			count(ps, slowPhase), count(ps, worstPhase))
	}
	walls := make([]string, len(res.rolls))
	for i, w := range res.rolls {
		walls[i] = fmt.Sprintf("%.1f", w.Seconds())
	}
	fmt.Printf("  rolls (s): %s; median %s\n", strings.Join(walls, " "), secs(median(res.rolls)))
	for _, p := range res.paused {
		fmt.Printf("  machine paused: %s (counted by fleetroll's clock; the roll less the difference)\n", p)
	}
	for _, k := range []string{"stop", "start"} {
		for _, p := range res.phases[k] {
			if p.took <= slowPhase && p.diagnosis == "" {
				continue
			}
			d := p.diagnosis
			if d == "" {
				d = "(no diagnosis)"
			}
			fmt.Printf("  slow: roll %d %s %s %s: %s\n", p.roll, p.unit, k, secs(p.took), d)
		}
	}
	return res, nil
}

// firstRepublish waits for a republish of fleet's agents: a unit's state
// written again unchanged.
func firstRepublish(ctx context.Context, c *cluster.Cluster) error {
	_, kapi, err := c.Clients()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	w := kapi.Watcher(coord.DefaultFleetPrefix+"states", &etcd.WatcherOptions{Recursive: true})
	for {
		resp, err := w.Next(ctx)
		if err != nil {
			return fmt.Errorf("fleet's first republish not seen: %w", err)
		}
		if resp.Node != nil && resp.PrevNode != nil && resp.Node.Value == resp.PrevNode.Value {
			return nil
		}
	}
}

// roll runs one fleetroll restart from the hub and returns its record;
// fleetroll's log goes to logFile.
func roll(ctx context.Context, c *cluster.Cluster, bin, logFile string, extra []string) (*fleetroll.Report, error) {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	args := append([]string{"restart", service, "--ports", strings.Join(ports, ","), "--grace", "0s", "--min-healthy-time", "0s",
		"--endpoint", c.Endpoint, "--etcd-endpoints", c.EtcdURL, "--log-level", "debug", "-o", "json"}, extra...)
	cmd := c.Hub(rctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	runErr := cmd.Run()
	if werr := os.WriteFile(logFile, errb.Bytes(), 0o644); werr != nil {
		return nil, werr
	}
	var r fleetroll.Report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return nil, fmt.Errorf("fleetroll restart: %v, record: %w (log: %s)", runErr, err, logFile)
	}
	if runErr != nil {
		return &r, fmt.Errorf("fleetroll restart: %w (log: %s)", runErr, logFile)
	}
	return &r, nil
}

// keepLogs copies every machine's fleetd.log to logDir.
func keepLogs(s site, logDir string) {
	for i := 1; i <= s.machines; i++ {
		from, to := filepath.Join(s.dir, "fleetd.log"), filepath.Join(logDir, "fleetd.log")
		if s.machines > 1 {
			from, to = filepath.Join(s.dir, fmt.Sprintf("m%d", i), "fleetd.log"), filepath.Join(logDir, fmt.Sprintf("fleetd-m%d.log", i))
		}
		if b, err := os.ReadFile(from); err == nil {
			os.WriteFile(to, b, 0o644)
		}
	}
}

// pct is the p-th percentile (nearest rank) of the phases' times.
func pct(ps []phase, p float64) time.Duration {
	if len(ps) == 0 {
		return 0
	}
	ds := make([]time.Duration, len(ps))
	for i, x := range ps {
		ds[i] = x.took
	}
	slices.Sort(ds)
	rank := int(math.Ceil(p / 100 * float64(len(ds))))
	return ds[max(rank, 1)-1]
}

func maxOf(ps []phase) time.Duration { return pct(ps, 100) }

func count(ps []phase, over time.Duration) int {
	n := 0
	for _, p := range ps {
		if p.took > over {
			n++
		}
	}
	return n
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// output runs cmd and returns its stdout; an error carries its stderr.
func output(cmd *exec.Cmd) (string, error) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, errb.String())
	}
	return out.String(), nil
}

// Command roll measures, on the local real cluster and in one run, fleetroll's
// wall time to roll three instances with grace 0 next to the naive loop's
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
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/cluster"
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
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	cl, err := cluster.Up(ctx, cluster.Config{Repo: *repo})
	if err != nil {
		return err
	}
	opts, err := cluster.LoadTemplate(filepath.Join(*repo, "contrib", "demo", "my-service@.service"), "STATE="+cl.Dir)
	if err != nil {
		return err
	}
	ports := []string{"19901", "19902", "19903"}
	units, err := cl.Launch(ctx, "bench-roll", opts, ports...)
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

	var stops, starts []time.Duration
	var rollWall []time.Duration
	var rollRestarted []int
	for i := 0; i < *rounds; i++ {
		before, err := cl.Systemd(ctx, units...)
		if err != nil {
			return err
		}
		r, err := fleetroll.NewRoller(fleet, fleetroll.Options{Grace: 0})
		if err != nil {
			return err
		}
		t0 := time.Now()
		rep, err := r.Roll(ctx, plan)
		if err != nil {
			return fmt.Errorf("fleetroll roll: %w", err)
		}
		rollWall = append(rollWall, time.Since(t0))
		for _, u := range rep.Units {
			stops = append(stops, time.Duration(u.Stop))
			starts = append(starts, time.Duration(u.Start))
		}
		after, err := cl.Systemd(ctx, units...)
		if err != nil {
			return err
		}
		rollRestarted = append(rollRestarted, restarted(before, after))
	}

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
	return nil
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

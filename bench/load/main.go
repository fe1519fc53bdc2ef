// Command load measures failed requests during a rollout under load: a
// constant rate of POST requests (a share of them slow) through nginx, whose
// upstreams confd renders from the sidekicks' announcements, to my-service
// on three machines of the local cluster. In one run it rolls the instances
// with fleetroll (drain and health gate), then with the naive loop (stop,
// wait, start, wait; no drain, no gate), and prints both.
//
// The instances are the demo service with -warmup (up but answering 503 for
// a while after the start) and -shutdown-timeout 0 (requests in flight are
// cut on SIGTERM), as many real services behave.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/fleetroll/fleetroll/internal/loadtest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	repo := flag.String("repo", ".", "repository root")
	dir := flag.String("dir", "/tmp/fleetroll-bench3", "the benchmark cluster's state directory")
	rate := flag.Int("rate", 200, "requests per second")
	min := flag.Int("requests", 5000, "at least this many requests per method")
	slowEvery := flag.Int("slow-every", 8, "every Nth request is slow (8: 12.5 %)")
	slow := flag.Duration("slow", 600*time.Millisecond, "how long a slow request takes at the instance")
	warmup := flag.Duration("warmup", 2*time.Second, "the instances answer 503 this long after their start")
	keep := flag.Bool("keep", false, "leave the cluster running")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	fmt.Fprintf(os.Stderr, "bench: starting a 3-machine cluster in %s\n", *dir)
	cl, err := cluster.Up(ctx, cluster.Config{Repo: *repo, Dir: *dir, EtcdPort: 24379, FleetPort: 49183, Machines: 3})
	if err != nil {
		return err
	}
	if !*keep {
		defer func() {
			if err := cl.Down(context.WithoutCancel(ctx)); err != nil {
				fmt.Fprintln(os.Stderr, "bench:", err)
			}
		}()
	}
	fr := filepath.Join(*dir, "bin", "fleetroll")
	build := exec.CommandContext(ctx, "go", "build", "-o", fr, "./cmd/fleetroll")
	build.Dir = *repo
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build fleetroll: %w\n%s", err, out)
	}
	ports := []string{"8901", "8902", "8903"}
	setup, err := loadtest.Start(ctx, cl, ports, loadtest.LaunchOptions{
		DemoArgs:         fmt.Sprintf("-warmup %s -shutdown-timeout 0", *warmup),
		SidekickInterval: time.Second, SidekickTTL: 5 * time.Second,
	}, filepath.Join(*dir, "proxy"))
	defer setup.Close()
	if err != nil {
		return err
	}
	lo := loadtest.LoadOptions{Rate: *rate, SlowEvery: *slowEvery, Slow: *slow}

	type row struct {
		name string
		res  loadtest.Result
		took time.Duration
	}
	var rows []row
	fmt.Fprintln(os.Stderr, "bench: fleetroll with drain and health gate, under load")
	res, took, rep, err := setup.Fleetroll(ctx, fr, lo, *min)
	if err != nil {
		return err
	}
	if rep.Restarted() != len(ports) {
		return fmt.Errorf("fleetroll restarted %d of %d instances: %s", rep.Restarted(), len(ports), rep.Error)
	}
	rows = append(rows, row{"fleetroll (drain + health gate)", res, took})

	fmt.Fprintln(os.Stderr, "bench: the naive loop, under load")
	res, took, err = setup.Naive(ctx, lo, *min)
	if err != nil {
		return err
	}
	rows = append(rows, row{"naive stop/start loop (no drain)", res, took})

	fmt.Printf("load: %d req/s, every %dth request slow (%s), POST through nginx to 3 instances on 3 machines\n",
		*rate, *slowEvery, *slow)
	fmt.Printf("instances: demo service with %s warm-up, requests in flight cut on SIGTERM\n\n", *warmup)
	fmt.Printf("| method | rollout | requests | slow | failed | failures | p50 | p90 | p99 | max |\n")
	fmt.Printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %d | %d | %d | %s | %s | %s | %s | %s |\n", r.name, r.took.Round(100*time.Millisecond),
			r.res.Requests, r.res.Slow, r.res.Failed, r.res.FailureSummary(),
			ms(r.res.P50), ms(r.res.P90), ms(r.res.P99), ms(r.res.Max))
	}
	return nil
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

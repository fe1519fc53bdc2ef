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
	"path/filepath"
	"strconv"
	"strings"
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
	instances := flag.Int("instances", 3, "instances of my-service (more than 3 share the machines)")
	maxUnavailable := flag.String("max-unavailable", "1", "fleetroll's --max-unavailable")
	blueGreen := flag.Bool("blue-green", false, "then replace the instances blue-green (new units on spare ports, beside the old)")
	flag.Parse()
	if *instances < 1 || *instances > 50 {
		return fmt.Errorf("-instances: want 1-50, got %d", *instances)
	}
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
	if err := cluster.BuildFleetroll(ctx, *repo, fr); err != nil {
		return err
	}
	var ports, spare []string
	for i := range *instances {
		ports = append(ports, strconv.Itoa(8901+i))
		spare = append(spare, strconv.Itoa(8901+*instances+i))
	}
	setup, err := loadtest.Start(ctx, cl, ports, loadtest.LaunchOptions{
		DemoArgs:         fmt.Sprintf("-warmup %s -shutdown-timeout 0", *warmup),
		SidekickInterval: time.Second, SidekickTTL: 5 * time.Second,
		Shared: *instances > 3 || *blueGreen,
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
	fmt.Fprintf(os.Stderr, "bench: fleetroll with drain and health gate, --max-unavailable %s, under load\n", *maxUnavailable)
	res, took, rep, err := setup.Fleetroll(ctx, fr, lo, *min, "--max-unavailable", *maxUnavailable)
	if err != nil {
		return err
	}
	if rep.Restarted() != len(ports) {
		return fmt.Errorf("fleetroll restarted %d of %d instances: %s", rep.Restarted(), len(ports), rep.Error)
	}
	rows = append(rows, row{fmt.Sprintf("fleetroll (drain + health gate, --max-unavailable %s)", *maxUnavailable), res, took})

	fmt.Fprintln(os.Stderr, "bench: the naive loop, under load")
	res, took, err = setup.Naive(ctx, lo, *min)
	if err != nil {
		return err
	}
	rows = append(rows, row{"naive stop/start loop (no drain)", res, took})

	if *blueGreen {
		fmt.Fprintln(os.Stderr, "bench: fleetroll blue-green, under load")
		var news []string
		for _, p := range spare {
			news = append(news, "my-service@"+p+".service", "my-service-sidekick@"+p+".service")
		}
		setup.Also(news...)
		res, took, rep, err := setup.Fleetroll(ctx, fr, lo, *min, "--strategy", "blue-green", "--spare-ports", strings.Join(spare, ","),
			"--sidekick", "my-service-sidekick")
		if err != nil {
			return err
		}
		if rep.Status != "succeeded" {
			return fmt.Errorf("blue-green: %s: %s", rep.Status, rep.Error)
		}
		rows = append(rows, row{"fleetroll blue-green (drain + health gate)", res, took})
		// The next run (-keep) starts from the configured ports again.
		if _, kapi, err := cl.Clients(); err == nil {
			_, _ = kapi.Delete(ctx, "/fleetroll/live/my-service", nil)
		}
	}

	fmt.Printf("load: %d req/s, every %dth request slow (%s), POST through nginx to %d instances on 3 machines\n",
		*rate, *slowEvery, *slow, *instances)
	fmt.Printf("instances: demo service with %s warm-up, requests in flight cut on SIGTERM\n\n", *warmup)
	fmt.Printf("| method | rollout | requests | slow | failed | failures | fewest upstreams | p50 | p90 | p99 | max |\n")
	fmt.Printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %d | %d | %d | %s | %d | %s | %s | %s | %s |\n", r.name, r.took.Round(100*time.Millisecond),
			r.res.Requests, r.res.Slow, r.res.Failed, r.res.FailureSummary(), r.res.MinUpstreams,
			ms(r.res.P50), ms(r.res.P90), ms(r.res.P99), ms(r.res.Max))
	}
	return nil
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

// Command batch measures rolls in batches on the local real cluster: for
// each number of instances N and each --max-unavailable b, the wall time,
// the most instances down at once (systemd asked every 50 ms, not the
// report: systemd forgets a stopped unit's timestamps when it unloads it),
// the fleet API calls per unit and the result, next to ceil(N/b) times the
// one-unit time of the same run. With -blue-green, the largest N is then
// replaced blue-green (new units on spare ports, then the old ones go);
// "down" there is how many of N fewer than N instances ran at once.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/fleetroll/fleetroll/internal/fleetcount"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%q: want positive numbers, comma-separated", s)
		}
		out = append(out, v)
	}
	return out, nil
}

// sample asks systemd for the units' states every 50 ms until the returned
// function is called, which returns the most instances seen down at once:
// how many fewer than want of the units ran.
func sample(ctx context.Context, cl *cluster.Cluster, units []string, want int) func() int {
	sctx, cancel := context.WithCancel(ctx)
	most := make(chan int, 1)
	go func() {
		m := 0
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if st, err := cl.SystemdAll(sctx, units...); err == nil {
				up := 0
				for _, s := range st {
					if s.Up() {
						up++
					}
				}
				m = max(m, want-up)
			}
			select {
			case <-sctx.Done():
				most <- m
				return
			case <-tick.C:
			}
		}
	}()
	return func() int {
		cancel()
		return <-most
	}
}

func run() error {
	repo := flag.String("repo", ".", "repository root")
	sizesFlag := flag.String("sizes", "3,10,30", "numbers of instances")
	batchesFlag := flag.String("batches", "1,10", "--max-unavailable values")
	machines := flag.Int("machines", 1, "fleet machines (more than 1: a cluster of its own under /tmp/fleetroll-bench-batch3)")
	watch := flag.Bool("watch", false, "wake waits on fleet's state writes (etcd watches, --watch)")
	hear := flag.Bool("hear", false, "hold each write until fleet's agents listen and clear of its republish, as fleetroll does with etcd")
	blueGreen := flag.Bool("blue-green", false, "then replace the largest N blue-green")
	flag.Parse()
	sizes, err := ints(*sizesFlag)
	if err != nil {
		return err
	}
	batches, err := ints(*batchesFlag)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	cfg := cluster.Config{Repo: *repo, Machines: *machines}
	if *machines > 1 {
		cfg.Dir, cfg.EtcdPort, cfg.FleetPort = "/tmp/fleetroll-bench-batch3", 42389, 49193
	}
	cl, err := cluster.Up(ctx, cfg)
	if err != nil {
		return err
	}
	fleet, kapi, err := cl.Clients()
	if err != nil {
		return err
	}
	counted := &fleetcount.Fleet{Fleet: fleet}
	maxN := 0
	for _, n := range sizes {
		maxN = max(maxN, n)
	}
	var ports []string
	for i := range maxN {
		ports = append(ports, strconv.Itoa(19921+i))
	}
	var spare, spareUnits []string
	for i := range maxN {
		spare = append(spare, strconv.Itoa(19921+maxN+i))
		spareUnits = append(spareUnits, fleetroll.UnitName("bench-batch", spare[i]))
	}
	defer cl.Destroy(spareUnits...)
	units, err := cl.LaunchDemo(ctx, "bench-batch", ports...)
	defer cl.Destroy(units...)
	if err != nil {
		return err
	}

	fmt.Printf("rolls in batches on %d machine(s), grace 0, watches %v, writes held for fleet's agents %v\n", *machines, *watch, *hear)
	fmt.Printf("%6s %4s %10s %14s %12s %16s %12s %10s\n", "N", "b", "wall", "ceil(N/b)*t1", "most down", "API calls/unit", "API calls/s", "result")
	for _, n := range sizes {
		var one time.Duration
		for _, b := range batches {
			o := fleetroll.Options{Grace: 0, MaxUnavailable: fleetroll.Unavailable{N: b}}
			if *watch {
				o.Hooks.Wake = coord.FleetStates{KAPI: kapi}
			}
			stop := func() {}
			if *hear {
				hctx, cancel := context.WithCancel(ctx)
				agents := coord.WatchFleetAgents(hctx, kapi)
				o.Hooks.Hearing, o.Hooks.Republish = agents, coord.NewFleetRepublish(kapi)
				stop = func() { cancel(); <-agents.Done() }
			}
			m, err := measure(ctx, cl, counted, ports[:n], o, units[:n])
			stop()
			if err != nil {
				return err
			}
			if b == 1 {
				one = m.wall / time.Duration(n)
			}
			ideal := "-"
			if one > 0 {
				ideal = (time.Duration((n+b-1)/b) * one).Round(100 * time.Millisecond).String()
			}
			m.print(strconv.Itoa(b), ideal)
		}
	}
	if *blueGreen {
		o := fleetroll.Options{Hooks: fleetroll.Hooks{BlueGreen: &fleetroll.BlueGreen{Spare: spare}}}
		m, err := measure(ctx, cl, counted, ports, o, append(append([]string(nil), units...), spareUnits...))
		if err != nil {
			return err
		}
		m.print("b-g", "-")
	}
	return nil
}

// row is one measured roll.
type row struct {
	n        int
	wall     time.Duration
	mostDown int
	calls    int
	result   string
}

func (m row) print(b, ideal string) {
	fmt.Printf("%6d %4s %10s %14s %12d %16.1f %12.1f %10s\n", m.n, b, m.wall.Round(100*time.Millisecond), ideal,
		m.mostDown, float64(m.calls)/float64(m.n), float64(m.calls)/m.wall.Seconds(), m.result)
}

// measure rolls the instances with o, counting fleet API calls and
// sampling systemd over watched (the instances, and blue-green's new ones).
func measure(ctx context.Context, cl *cluster.Cluster, counted *fleetcount.Fleet, instances []string, o fleetroll.Options, watched []string) (row, error) {
	n := len(instances)
	plan, err := fleetroll.MakePlan(ctx, counted, fleetroll.Target{Service: "bench-batch", Instances: instances})
	if err != nil {
		return row{}, err
	}
	r, err := fleetroll.NewRoller(counted, o)
	if err != nil {
		return row{}, err
	}
	counted.Reset()
	most := sample(ctx, cl, watched, n)
	t0 := time.Now()
	rep, rollErr := r.Roll(ctx, plan)
	m := row{n: n, wall: time.Since(t0), result: "ok"}
	reads, writes := counted.Reset()
	m.calls, m.mostDown = reads+writes, most()
	switch {
	case rollErr != nil:
		m.result = "failed: " + rollErr.Error()
	case rep.Status != fleetroll.StatusSucceeded:
		m.result = string(rep.Status)
	}
	return m, nil
}

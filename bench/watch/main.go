// Command watch measures, on the local real cluster, how long fleetroll
// takes to notice a state fleet has published (the detection lag), with
// its waits woken by etcd watches on fleet's state keys and with polling
// alone, over interleaved rounds. The lag is the time from the moment the
// benchmark's own etcd watch sees fleet write the state that ends a wait
// (the unit stopped; the unit running) to the roller's event for it. It
// also prints the wall time per roll and the fleet API calls per unit.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/fleetroll/fleetroll/internal/fleetcount"
	client "go.etcd.io/etcd/client/v2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// write is one state fleet published, as the benchmark's watch saw it.
type write struct {
	at            time.Time
	active, sub   string
	unit, machine string
}

// seen keeps the states fleet published, per unit.
type seen struct {
	mu     sync.Mutex
	writes map[string][]write
}

func (s *seen) add(w write) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes[w.unit] = append(s.writes[w.unit], w)
}

// first is the first write of unit after t that ok accepts.
func (s *seen) first(unit string, after time.Time, ok func(write) bool) (write, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.writes[unit] {
		if w.at.After(after) && ok(w) {
			return w, true
		}
	}
	return write{}, false
}

type mode struct {
	name         string
	watch        bool
	lags         []time.Duration
	wall         []time.Duration
	reads, rolls int
	writes       int
	units        int
}

func run() error {
	repo := flag.String("repo", ".", "repository root")
	rounds := flag.Int("rounds", 10, "rounds; each rolls once with watches and once by polling alone, in alternating order")
	poll := flag.Duration("poll", fleetroll.DefaultPollInterval, "the poll interval of both")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	cl, err := cluster.Up(ctx, cluster.Config{Repo: *repo})
	if err != nil {
		return err
	}
	ports := []string{"19911", "19912", "19913"}
	units, err := cl.LaunchDemo(ctx, "bench-watch", ports...)
	if err != nil {
		return err
	}
	defer cl.Destroy(units...)
	fleet, kapi, err := cl.Clients()
	if err != nil {
		return err
	}
	plan, err := fleetroll.MakePlan(ctx, fleet, fleetroll.Target{Service: "bench-watch", Instances: ports})
	if err != nil {
		return err
	}

	// The benchmark's own watch on fleet's published states.
	states := &seen{writes: map[string][]write{}}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go coord.Watch(wctx, kapi, coord.DefaultFleetPrefix+"states", func(resp *client.Response) {
		if resp == nil || resp.Node == nil || resp.Node.Value == "" {
			return
		}
		var st struct {
			Active string `json:"activeState"`
			Sub    string `json:"subState"`
		}
		if json.Unmarshal([]byte(resp.Node.Value), &st) != nil {
			return
		}
		states.add(write{at: time.Now(), active: st.Active, sub: st.Sub, unit: path.Base(path.Dir(resp.Node.Key)), machine: path.Base(resp.Node.Key)})
	})

	watch, polling := &mode{name: "etcd watches", watch: true}, &mode{name: "polling alone"}
	counted := &fleetcount.Fleet{Fleet: fleet}
	for i := range *rounds {
		order := []*mode{watch, polling}
		if i%2 == 1 {
			order = []*mode{polling, watch}
		}
		for _, m := range order {
			var mu sync.Mutex
			events := map[string]map[fleetroll.EventKind]time.Time{}
			o := fleetroll.Options{Grace: 0, PollInterval: *poll, OnEvent: func(e fleetroll.Event) {
				mu.Lock()
				defer mu.Unlock()
				if events[e.Unit] == nil {
					events[e.Unit] = map[fleetroll.EventKind]time.Time{}
				}
				events[e.Unit][e.Kind] = time.Now()
			}}
			if m.watch {
				o.Hooks.Wake = coord.FleetStates{KAPI: kapi}
			}
			r, err := fleetroll.NewRoller(counted, o)
			if err != nil {
				return err
			}
			counted.Reset()
			t0 := time.Now()
			if _, err := r.Roll(ctx, plan); err != nil {
				return fmt.Errorf("%s roll: %w", m.name, err)
			}
			m.wall = append(m.wall, time.Since(t0))
			reads, writes := counted.Reset()
			m.reads, m.writes, m.units, m.rolls = m.reads+reads, m.writes+writes, m.units+len(units), m.rolls+1
			mu.Lock()
			for _, u := range units {
				ev := events[u]
				if w, ok := states.first(u, ev[fleetroll.EventStopping], func(w write) bool { return w.active == "inactive" || w.active == "failed" }); ok && ev[fleetroll.EventStopped].After(w.at) {
					m.lags = append(m.lags, ev[fleetroll.EventStopped].Sub(w.at))
				}
				if w, ok := states.first(u, ev[fleetroll.EventStarting], func(w write) bool { return w.active == "active" && w.sub == "running" }); ok && ev[fleetroll.EventRunning].After(w.at) {
					m.lags = append(m.lags, ev[fleetroll.EventRunning].Sub(w.at))
				}
			}
			mu.Unlock()
		}
	}

	fmt.Printf("detection lag: fleet's state write (seen by an etcd watch) to fleetroll's event; 3 instances, grace 0, poll %s, %d interleaved rounds\n", *poll, *rounds)
	fmt.Printf("%-14s %8s %8s %8s %8s %8s %16s %16s\n", "waits", "samples", "median", "p90", "max", "mean", "roll wall median", "API calls/unit")
	for _, m := range []*mode{watch, polling} {
		fmt.Printf("%-14s %8d %8s %8s %8s %8s %16s %16s\n", m.name, len(m.lags), pct(m.lags, 50), pct(m.lags, 90), pct(m.lags, 100), mean(m.lags),
			pct(m.wall, 50), fmt.Sprintf("%.1f (%d writes)", float64(m.reads+m.writes)/float64(max(m.units, 1)), m.writes))
	}
	return nil
}

// pct is the p-th percentile (nearest rank) of ds, rounded.
func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[max(i, 0)].Round(time.Millisecond).String()
}

func mean(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return (sum / time.Duration(len(ds))).Round(time.Millisecond).String()
}

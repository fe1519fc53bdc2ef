package e2e

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The suite's own account of where its time goes: each test's duration,
// and each of its waits, labelled by what it waits on. TestMain prints the
// table at the end, slowest test first, so that a change sees what it
// costs.

// Kinds of wait.
const (
	waitCluster   = "cluster"   // a cluster up, a machine lost or restored
	waitBuild     = "build"     // container images, confd
	waitFleet     = "fleet"     // fleet's state: units launched, stopped, running
	waitFleetroll = "fleetroll" // a fleetroll command run to its end (its rollout)
	waitOutput    = "output"    // a line of a running fleetroll's output
	waitServe     = "serve"     // a receiver listening, or its API's answer
	waitPoll      = "poll"      // a condition polled (etcd keys, the proxy, a registry)
	waitTool      = "tool"      // podman, the registry, and other commands
)

type waitKey struct{ kind, label string }

type waitSum struct {
	total time.Duration
	n     int
}

type testTiming struct {
	name             string
	start, turn, end time.Time // turn: its lane's turn came
	waits            map[waitKey]*waitSum
}

// took is the test's time in its turn; queued, its wait for the turn.
func (tt *testTiming) took() time.Duration {
	if tt.turn.IsZero() {
		return tt.end.Sub(tt.start)
	}
	return tt.end.Sub(tt.turn)
}

func (tt *testTiming) queued() time.Duration {
	if tt.turn.IsZero() {
		return 0
	}
	return tt.turn.Sub(tt.start)
}

// timings is the suite's record; one lock owns it.
var timings = struct {
	mu    sync.Mutex
	tests map[string]*testTiming
	order []string
}{tests: map[string]*testTiming{}}

// topName is the name of t's top-level test.
func topName(t testing.TB) string {
	name, _, _ := strings.Cut(t.Name(), "/")
	return name
}

func timingOf(name string) *testTiming {
	tt := timings.tests[name]
	if tt == nil {
		tt = &testTiming{name: name, waits: map[waitKey]*waitSum{}}
		timings.tests[name] = tt
		timings.order = append(timings.order, name)
	}
	return tt
}

// began records the start of t's top-level test, and its end when it is
// over.
func began(t testing.TB) {
	timings.mu.Lock()
	tt := timingOf(topName(t))
	if tt.start.IsZero() {
		tt.start = time.Now()
	}
	timings.mu.Unlock()
	t.Cleanup(func() {
		timings.mu.Lock()
		timingOf(topName(t)).end = time.Now()
		timings.mu.Unlock()
	})
}

// tookTurn records that t's lane let it run.
func tookTurn(t testing.TB) {
	timings.mu.Lock()
	defer timings.mu.Unlock()
	timingOf(topName(t)).turn = time.Now()
}

// waiting starts timing a wait of t; the returned function ends it.
// Labels name what is waited on, not the instance of it (no unit names,
// no IDs), so that waits of one kind add up.
func waiting(t testing.TB, kind, label string) func() {
	start := time.Now()
	return func() {
		d := time.Since(start)
		timings.mu.Lock()
		defer timings.mu.Unlock()
		tt := timingOf(topName(t))
		k := waitKey{kind, label}
		s := tt.waits[k]
		if s == nil {
			s = &waitSum{}
			tt.waits[k] = s
		}
		s.total += d
		s.n++
	}
}

// printTimings writes the table: each test, slowest first, with its time
// in its turn, how long it queued for its lane, when it ended (from the
// suite's start), and its longest waits.
func printTimings(w io.Writer, suiteStart time.Time) {
	timings.mu.Lock()
	defer timings.mu.Unlock()
	var tests []*testTiming
	var sum time.Duration
	kinds := map[string]time.Duration{}
	for _, name := range timings.order {
		tt := timings.tests[name]
		if tt.start.IsZero() || tt.end.IsZero() {
			continue
		}
		tests = append(tests, tt)
		sum += tt.took()
		for k, s := range tt.waits {
			kinds[k.kind] += s.total
		}
	}
	if len(tests) == 0 {
		return
	}
	slices.SortFunc(tests, func(a, b *testTiming) int { return cmp.Compare(b.took(), a.took()) })
	fmt.Fprintf(w, "\ne2e timings: %d tests in %s of wall time since the suite began (builds and clusters included); %s of tests' own time, summed\n",
		len(tests), time.Since(suiteStart).Round(time.Second), sum.Round(time.Second))
	var ks []string
	for k := range kinds {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b string) int { return cmp.Compare(kinds[b], kinds[a]) })
	fmt.Fprint(w, "waits by kind, summed over tests:")
	for _, k := range ks {
		fmt.Fprintf(w, " %s %s;", k, kinds[k].Round(time.Second))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-44s %-9s %7s %7s %7s  %s\n", "TEST", "LANE", "TOOK", "QUEUED", "ENDED", "LONGEST WAITS (kind: what, total, count)")
	for _, tt := range tests {
		type kv struct {
			k waitKey
			s *waitSum
		}
		var ws []kv
		for k, s := range tt.waits {
			ws = append(ws, kv{k, s})
		}
		slices.SortFunc(ws, func(a, b kv) int { return cmp.Compare(b.s.total, a.s.total) })
		var parts []string
		for i, w := range ws {
			if i == 4 || w.s.total < 500*time.Millisecond {
				break
			}
			parts = append(parts, fmt.Sprintf("%s: %s %s ×%d", w.k.kind, w.k.label, w.s.total.Round(100*time.Millisecond), w.s.n))
		}
		l := placed[tt.name]
		fmt.Fprintf(w, "%-44s %-9s %6.1fs %6.1fs %6.0fs  %s\n", tt.name, l.lane.String(), tt.took().Seconds(),
			tt.queued().Seconds(), tt.end.Sub(suiteStart).Seconds(), strings.Join(parts, "; "))
	}
}

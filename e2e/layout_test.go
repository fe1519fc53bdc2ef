package e2e

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The parallel layout of the real-cluster suite. Most of a test's time is
// fleet's 1 s and 5 s ticks, not the CPU, so tests that need only their own
// service name and ports run at the same time, and four clusters run side
// by side. Every real-cluster test has a line here, and no test is placed
// but here: a test missing from it fails, so a new one joins the layout.
//
//   - together: on the shared one-machine cluster, beside the other
//     "together" tests. They never assert a phase's time: every write to
//     fleet blinds its agents for a second, so times depend on the
//     neighbours.
//   - timing: on a one-machine cluster of its own, one test at a time, a
//     test that judges fleet's timing (nudges, watches, a recovery's
//     time), on a fleet no other test writes to.
//   - faults: on a one-machine cluster of its own, one test at a time, a
//     test that kills fleet's API or etcd, or cuts a receiver off.
//   - three: the three-machine cluster, one test at a time (machines lost,
//     load through the proxy).
//
// group serialises "together" tests that share more than a name and ports:
// "my-service" is the demo's and the shipped units' name, whose drop-ins
// apply to every instance of the template, and whose sidekicks announce
// under one etcd prefix.
type lane int

const (
	together lane = iota
	timing
	faults
	three
)

func (l lane) String() string {
	return [...]string{"together", "timing", "faults", "three"}[l]
}

type placement struct {
	test  string
	lane  lane
	group string
}

// layout, in the order in which each one-at-a-time lane runs its tests:
// what leaves its cluster worst comes last.
var layout = []placement{
	{"TestRestartRollsEveryInstanceOneAtATime", together, ""},
	{"TestRestartHaltsWhenAnInstanceCannotStart", together, ""},
	{"TestRestartSIGINTDuringStopBringsTheUnitBack", together, ""},
	{"TestRestartUnknownUnitTouchesNothing", together, ""},
	{"TestBatchesOfTwoInstances", together, ""},
	{"TestRestartBringsBackAFailedInstance", together, ""},
	{"TestHealthGateHaltsOnAnUnhealthyInstance", together, ""},
	{"TestSecondFleetrollRefusesOrWaits", together, ""},
	{"TestServeRollsOnWebhooks", together, ""},
	{"TestOneRecordEverywhere", together, ""},
	{"TestCanaryPausesUntilPromoted", together, ""},
	{"TestCanaryWaitAbortsOnAnIllCanary", together, ""},
	{"TestCanaryPromotedThroughServesAPI", together, ""},
	{"TestCanaryPauseSurvivesATakeover", together, ""},
	{"TestBlueGreenUnplacedKeepsTheOldOnes", together, ""},
	{"TestStatusPageInABrowser", together, ""},
	{"TestReceiverFailover", together, ""},
	{"TestReleases", together, ""},
	{"TestKilledFleetrollIsRecoveredByARestart", together, "my-service"},

	// A quiet fleet: the recovery's time, an observer of the proxy's view
	// at 50 ms, nudges, watches.
	{"TestKilledFleetrollIsRecovered", timing, ""},
	{"TestDrainNeverAnnouncesADownInstance", timing, ""},
	{"TestNudgingHasNoSideEffects", timing, ""},
	{"TestWatchFallsBackToPolling", timing, ""},

	// The shipped units under their own name, my-service, with the
	// container images; then a receiver cut off, fleet's API killed, and
	// etcd killed, last.
	{"TestContainersRollOnRegistryPush", faults, ""},
	{"TestReceiverPartition", faults, ""},
	{"TestFleetAPIRestartedMidRoll", faults, ""},
	{"TestEtcdLostMidRoll", faults, ""},

	{"TestLoadRolloutThroughProxyLosesNoRequest", three, ""},
	{"TestBlueGreenUnderLoad", three, ""},
	{"TestMachineLostMidRoll", three, ""},
	{"TestMachineLostWithNowhereToGo", three, ""},
}

// placed is the layout by test name.
var placed = func() map[string]placement {
	m := map[string]placement{}
	for _, p := range layout {
		m[p.test] = p
	}
	return m
}()

// serial: FLEETROLL_E2E_SERIAL set, the tests run one after another in
// file order (to compare, or to read one test's log undisturbed).
func serial() bool { return os.Getenv("FLEETROLL_E2E_SERIAL") != "" }

// schedule holds the turns: each one-at-a-time lane's queue of this run's
// tests, in the layout's order, and a lock per group. One lock owns both.
var schedule = struct {
	mu     sync.Mutex
	turn   *sync.Cond // broadcast when a queue moves on
	queue  [three + 1][]string
	groups map[string]*sync.Mutex
}{groups: map[string]*sync.Mutex{}}

func init() { schedule.turn = sync.NewCond(&schedule.mu) }

// selected lists the layout's tests this run will start, by -test.run and
// -test.skip as go test matches top-level names.
func selected() (map[string]bool, error) {
	match := func(flagName string) (*regexp.Regexp, error) {
		f := flag.Lookup(flagName)
		if f == nil || f.Value.String() == "" {
			return nil, nil
		}
		first, _, _ := strings.Cut(f.Value.String(), "/")
		return regexp.Compile(first)
	}
	run, err := match("test.run")
	if err != nil {
		return nil, err
	}
	skip, err := match("test.skip")
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, p := range layout {
		if (run == nil || run.MatchString(p.test)) && (skip == nil || !skip.MatchString(p.test)) {
			out[p.test] = true
		}
	}
	return out, nil
}

var testFuncRe = regexp.MustCompile(`(?m)^func (Test\w+)\(t \*testing\.T\)`)

// checkLayout fails when the layout names a test the package does not
// have: the "alone" tests would wait for it for ever.
func checkLayout() error {
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		return err
	}
	defined := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		for _, m := range testFuncRe.FindAllStringSubmatch(string(b), -1) {
			defined[m[1]] = true
		}
	}
	for _, p := range layout {
		if !defined[p.test] {
			return fmt.Errorf("e2e/layout_test.go places %s, which no file defines", p.test)
		}
	}
	return nil
}

// planLayout returns the layout's tests this run starts, queues them in
// their lanes, and raises -test.parallel so that every test of the run can
// wait for its turn at once (a test waiting for its turn holds one of go
// test's slots). A test of a queue that never starts (-failfast after a
// failure) holds up the tests after it in its lane until go test's
// -timeout.
func planLayout() (map[string]bool, error) {
	if err := checkLayout(); err != nil {
		return nil, err
	}
	sel, err := selected()
	if err != nil {
		return nil, err
	}
	for _, p := range layout {
		if sel[p.test] && p.lane != together {
			schedule.queue[p.lane] = append(schedule.queue[p.lane], p.test)
		}
	}
	if p := flag.Lookup("test.parallel"); p != nil {
		if n, _ := strconv.Atoi(p.Value.String()); n < len(layout) {
			if err := p.Value.Set(strconv.Itoa(len(layout))); err != nil {
				return nil, err
			}
		}
	}
	return sel, nil
}

// takeTurn runs t in its lane: parallel with the tests it may share a
// cluster with, once its turn comes. The wait is timed as the lane's.
// onThree says whether the test runs on the three-machine cluster.
func takeTurn(t *testing.T, onThree bool) {
	t.Helper()
	name := topName(t)
	p, ok := placed[name]
	if !ok || (p.lane == three) != onThree {
		t.Fatalf("%s has no line of its lane in the suite's layout (e2e/layout_test.go)", name)
	}
	if serial() {
		began(t)
		return
	}
	t.Parallel()
	began(t)
	defer tookTurn(t)
	if p.lane != together {
		schedule.mu.Lock()
		if !slices.Contains(schedule.queue[p.lane], name) {
			schedule.mu.Unlock()
			t.Fatalf("%s runs, but was not queued in lane %s: -test.run and -test.skip matched otherwise than e2e/layout_test.go's selected", name, p.lane)
		}
		for schedule.queue[p.lane][0] != name {
			schedule.turn.Wait()
		}
		schedule.mu.Unlock()
		t.Cleanup(func() {
			schedule.mu.Lock()
			schedule.queue[p.lane] = schedule.queue[p.lane][1:]
			schedule.turn.Broadcast()
			schedule.mu.Unlock()
		})
	}
	if p.group != "" {
		schedule.mu.Lock()
		mu := schedule.groups[p.group]
		if mu == nil {
			mu = &sync.Mutex{}
			schedule.groups[p.group] = mu
		}
		schedule.mu.Unlock()
		mu.Lock()
		t.Cleanup(mu.Unlock)
	}
}

func laneGroup(g string) string {
	if g == "" {
		return ""
	}
	return "/" + g
}

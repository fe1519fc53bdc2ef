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
// A "together" test's service names and every test's host ports are its
// own (claim, in main_test.go): a name's drop-ins apply to every instance
// of its template, and its sidekicks announce under one etcd prefix.
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
	test string
	lane lane
}

// layout, in the order in which each one-at-a-time lane runs its tests:
// what leaves its cluster worst comes last.
var layout = []placement{
	{"TestRestartRollsEveryInstanceOneAtATime", together},
	{"TestRestartHaltsWhenAnInstanceCannotStart", together},
	{"TestRestartSIGINTDuringStopBringsTheUnitBack", together},
	{"TestRestartUnknownUnitTouchesNothing", together},
	{"TestBatchesOfTwoInstances", together},
	{"TestRestartBringsBackAFailedInstance", together},
	{"TestHealthGateHaltsOnAnUnhealthyInstance", together},
	{"TestSecondFleetrollRefusesOrWaits", together},
	{"TestServeRollsOnWebhooks", together},
	{"TestOneRecordEverywhere", together},
	{"TestCanaryPausesUntilPromoted", together},
	{"TestCanaryWaitAbortsOnAnIllCanary", together},
	{"TestCanaryPromotedThroughServesAPI", together},
	{"TestCanaryPauseSurvivesATakeover", together},
	{"TestBlueGreenUnplacedKeepsTheOldOnes", together},
	{"TestBlueGreenKilledIsRecovered", together},
	{"TestStatusPageInABrowser", together},
	{"TestSlackLinkOpensThePageAndPromotes", together},
	{"TestReceiverFailover", together},
	{"TestReleases", together},
	{"TestRegistryPollDeploysALostPush", together},
	{"TestOneLiveViewOnEveryReceiver", together},
	{"TestKilledFleetrollIsRecoveredByARestart", together},
	{"TestConfigGivesTheCLIAndServeTheSameRollout", together},
	{"TestServeSurvivesABurstOfPushes", together},
	{"TestUnitsSettingsRollOverTLSEtcd", together},
	{"TestUpgradeReceiversLosesNoPush", together},
	{"TestStallAfterDestroysSaysWhy", together},

	// A quiet fleet: the recovery's time, an observer of the proxy's view
	// at 50 ms, nudges, watches.
	{"TestKilledFleetrollIsRecovered", timing},
	{"TestPlainRestartRecoversAKilledOne", timing},
	{"TestDrainNeverAnnouncesADownInstance", timing},
	{"TestNudgingHasNoSideEffects", timing},
	{"TestWatchFallsBackToPolling", timing},

	// A receiver cut off, fleet's API killed, the shipped units under
	// their own name, my-service, with the container images (built by
	// then), and etcd killed, last.
	{"TestReceiverPartition", faults},
	{"TestFleetAPIRestartedMidRoll", faults},
	{"TestHealthzFollowsFleetAndEtcd", faults},
	{"TestContainersRollOnRegistryPush", faults},
	// An instance crashing after its start, seen on a fleet no other test
	// writes to (here rather than in timing, which is the longest lane).
	{"TestCrashingReleaseIsRolledBackAndQuarantined", faults},
	{"TestEtcdLostMidRoll", faults},

	{"TestLoadRolloutThroughProxyLosesNoRequest", three},
	{"TestBlueGreenUnderLoad", three},
	{"TestMachineLostMidRoll", three},
	{"TestDeployPrePullsWhereInstancesLand", three},
	{"TestMachineLostWithNowhereToGo", three},
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

// schedule holds the turns: each one-at-a-time lane's queue of the tests
// that run, in the layout's order. Every top-level test queues itself
// before it calls t.Parallel, and none resumes before all have, so a queue
// is whole before its first test runs (in each -count iteration).
var schedule = struct {
	mu    sync.Mutex
	turn  *sync.Cond // broadcast when a queue moves on
	queue [three + 1][]string
}{}

// order is each test's place in the layout.
var order = func() map[string]int {
	m := map[string]int{}
	for i, p := range layout {
		m[p.test] = i
	}
	return m
}()

func init() { schedule.turn = sync.NewCond(&schedule.mu) }

// selected guesses the layout's tests this run will start, by -test.run
// and -test.skip, from the part of each pattern before its first "/": its
// lanes' clusters start at once, before the tests. A lane it misses starts
// its cluster when its first test needs it.
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

// planLayout returns the tests this run is likely to start, and raises
// -test.parallel so that every test of the run can wait for its turn at
// once (a test waiting for its turn holds one of go test's slots).
func planLayout() (map[string]bool, error) {
	if err := checkLayout(); err != nil {
		return nil, err
	}
	sel, err := selected()
	if err != nil {
		return nil, err
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
// cluster with, once its turn comes; the table shows how long it queued.
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
	if p.lane != together {
		schedule.mu.Lock()
		q := append(schedule.queue[p.lane], name)
		slices.SortFunc(q, func(a, b string) int { return order[a] - order[b] })
		schedule.queue[p.lane] = q
		schedule.mu.Unlock()
	}
	t.Parallel()
	began(t)
	defer tookTurn(t)
	if p.lane == together {
		return
	}
	schedule.mu.Lock()
	for schedule.queue[p.lane][0] != name {
		schedule.turn.Wait()
	}
	schedule.mu.Unlock()
	t.Cleanup(func() {
		schedule.mu.Lock()
		schedule.queue[p.lane] = slices.DeleteFunc(schedule.queue[p.lane], func(n string) bool { return n == name })
		schedule.turn.Broadcast()
		schedule.mu.Unlock()
	})
}

// followed reports whether another test waits for t's turn on its
// cluster: t runs in a one-at-a-time lane whose queue holds more than t,
// or one after another (FLEETROLL_E2E_SERIAL).
func followed(t testing.TB) bool {
	l := placed[topName(t)].lane
	if serial() {
		return true
	}
	if l == together {
		return false
	}
	schedule.mu.Lock()
	defer schedule.mu.Unlock()
	return len(schedule.queue[l]) > 1
}

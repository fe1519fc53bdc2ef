package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/cluster"
	client "go.etcd.io/etcd/client/v2"
)

var (
	repo   string
	binary string // the fleetroll binary under test
	// The clusters, one per lane of e2e/layout_test.go: the "together"
	// tests', one each for the "timing" and the "faults" tests, and the
	// three-machine cluster.
	clusters [three + 1]clusterOfLane
)

type clusterOfLane struct {
	cfg  cluster.Config
	once sync.Once
	c    *cluster.Cluster
	err  error
}

// upCluster starts lane l's cluster, once: TestMain starts those of the
// lanes it expects to run, side by side; a test the others.
func upCluster(l lane) {
	o := &clusters[l]
	o.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cfg := o.cfg
		cfg.Repo, cfg.Fresh = repo, !keepCluster()
		o.c, o.err = cluster.Up(ctx, cfg)
		if o.err != nil {
			fmt.Fprintf(os.Stderr, "e2e: the %s lane's cluster did not start: %v\n", l, o.err)
			return
		}
		if keepCluster() {
			o.err = clearFleetroll(ctx, o.c)
		}
	})
}

// clearFleetroll removes what an earlier run's fleetrolls left in a kept
// cluster's etcd (deliveries seen, quarantines, records, queues): each run
// starts from none, as on a fresh cluster.
func clearFleetroll(ctx context.Context, c *cluster.Cluster) error {
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{c.EtcdURL}, Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	if _, err := kapi.Delete(ctx, "/fleetroll", &client.DeleteOptions{Recursive: true}); err != nil && !client.IsKeyNotFound(err) {
		return fmt.Errorf("clear /fleetroll in the kept cluster's etcd: %w", err)
	}
	return nil
}

func init() {
	clusters[together].cfg = cluster.Config{Dir: "/tmp/fleetroll-e2e", EtcdPort: 22379, FleetPort: 49163}
	clusters[timing].cfg = cluster.Config{Dir: "/tmp/fleetroll-e2e-timing", EtcdPort: 26379, FleetPort: 49203}
	clusters[faults].cfg = cluster.Config{Dir: "/tmp/fleetroll-e2e-faults", EtcdPort: 27379, FleetPort: 49213}
	clusters[three].cfg = cluster.Config{Dir: "/tmp/fleetroll-e2e3", EtcdPort: 23379, FleetPort: 49173, Machines: 3}
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	suiteStart := time.Now()
	wd, _ := os.Getwd()
	repo = filepath.Dir(wd)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	sel, err := planLayout()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}

	tmp, err := os.MkdirTemp("", "fleetroll-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	binary = filepath.Join(tmp, "fleetroll")
	build := exec.CommandContext(ctx, "go", "build", "-o", binary, "./cmd/fleetroll")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build fleetroll: %v\n%s", err, out)
		return 1
	}

	// The container images, when a test needs them, build beside the
	// clusters.
	var early sync.WaitGroup
	switch {
	case sel["TestContainersRollOnRegistryPush"]:
		early.Go(func() { buildImagesOnce(ctrEnvironment()) })
	case sel["TestReleases"]:
		early.Go(func() { buildDemoImages(ctrEnvironment()) })
	}

	// The clusters of the lanes that run, beside the demo's, on other
	// ports, each in its own directory. The three-machine cluster is the
	// slowest to start: the tests of the other lanes need not wait for it.
	lanes := map[lane]bool{}
	for name := range sel {
		lanes[placed[name].lane] = true
	}
	if lanes[three] {
		early.Go(func() { upCluster(three) })
	}
	var up sync.WaitGroup
	for _, l := range []lane{together, timing, faults} {
		if lanes[l] {
			up.Go(func() { upCluster(l) })
		}
	}
	up.Wait()
	fmt.Fprintf(os.Stderr, "e2e: one-machine clusters up in %s\n", time.Since(suiteStart).Round(time.Second))
	code := m.Run()
	printTimings(os.Stdout, suiteStart)
	early.Wait()
	// The clusters go down side by side too.
	var down sync.WaitGroup
	for i := range clusters {
		if c := clusters[i].c; c != nil && !keepCluster() {
			down.Go(func() {
				if err := c.Down(context.Background()); err != nil {
					fmt.Fprintln(os.Stderr, err)
				}
			})
		}
	}
	down.Wait()
	return code
}

// keepCluster: FLEETROLL_KEEP_CLUSTER set, the clusters of the suite are
// kept between runs (for a look, or a faster next run). Otherwise each run
// starts them afresh and removes them at the end.
func keepCluster() bool { return os.Getenv("FLEETROLL_KEEP_CLUSTER") != "" }

// needCluster runs the test in its lane (together, or alone:
// e2e/layout_test.go) and returns its one-machine cluster; it fails the
// test under CI=true when the cluster is not up, and skips it elsewhere.
func needCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	return laneCluster(t, false)
}

// laneCluster runs t in its lane and returns the lane's cluster, once up;
// onThree says whether t runs on the three-machine cluster.
func laneCluster(t *testing.T, onThree bool) *cluster.Cluster {
	t.Helper()
	takeTurn(t, onThree)
	l := placed[topName(t)].lane
	done := waiting(t, waitCluster, "its lane's cluster up")
	upCluster(l)
	done()
	if err := clusters[l].err; err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the %s lane's cluster is required under CI=true: %v", l, err)
		}
		t.Skipf("no cluster for the %s lane: %v", l, err)
	}
	return clusterOf(t)
}

// clusterOf is the cluster of t's lane.
func clusterOf(t testing.TB) *cluster.Cluster { return clusters[placed[topName(t)].lane].c }

// destroyUnits destroys a test's units at its end. In a one-at-a-time
// lane with a test still to come, it waits until they are stopped, so that
// the next test starts on a quiet fleet.
func destroyUnits(t *testing.T, c *cluster.Cluster, names ...string) {
	t.Helper()
	if !followed(t) {
		c.Destroy(names...)
		return
	}
	destroyAndWait(t, c, names...)
}

// destroyAndWait destroys units and waits until they are stopped.
func destroyAndWait(t *testing.T, c *cluster.Cluster, names ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	defer waiting(t, waitFleet, "units destroyed and stopped")()
	if err := c.DestroyAndWait(ctx, names...); err != nil {
		t.Error(err)
	}
}

// claims are what tests that run at once must not share, by the test that
// has each: the ports the one-machine clusters' units listen on (those
// clusters share the host's network), and the "together" tests' service
// names (one cluster; a name's drop-ins apply to every instance of its
// template).
var claims = struct {
	mu sync.Mutex
	by map[string]string
}{by: map[string]string{}}

// claim fails the test when another test of the run has what.
func claim(t *testing.T, what string) {
	t.Helper()
	claims.mu.Lock()
	defer claims.mu.Unlock()
	if other, ok := claims.by[what]; ok && other != topName(t) {
		t.Fatalf("%s is %s's too: give each test its own", what, other)
	}
	claims.by[what] = topName(t)
}

// claimUnits claims the host ports of a test's units (on the one-machine
// clusters) and, for a "together" test, its service's name.
func claimUnits(t *testing.T, service string, ports ...string) {
	t.Helper()
	switch placed[topName(t)].lane {
	case three:
		return
	case together:
		claim(t, "service "+service)
	}
	for _, p := range ports {
		claim(t, "port "+p)
	}
}

// launchDemo launches the demo service as service@PORT for each port and
// destroys the units when the test ends.
func launchDemo(t *testing.T, service string, ports ...string) []string {
	t.Helper()
	claimUnits(t, service, ports...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var names []string
	for _, p := range ports {
		names = append(names, fmt.Sprintf("%s@%s.service", service, p))
	}
	c := clusterOf(t)
	t.Cleanup(func() { destroyUnits(t, c, names...) })
	defer waiting(t, waitFleet, "demo units launched and running")()
	if _, err := c.LaunchDemo(ctx, service, ports...); err != nil {
		t.Fatal(err)
	}
	return names
}

func systemd(t *testing.T, units ...string) []cluster.SystemdState {
	t.Helper()
	st, err := clusterOf(t).Systemd(context.Background(), units...)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// fleetroll runs the binary with the cluster's endpoint; it returns the exit
// code and the combined output.
func fleetroll(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	defer waiting(t, waitFleetroll, "fleetroll "+args[0]+" to its end")()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = clusterOf(t).Env()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	default:
		t.Fatalf("run fleetroll: %v", err)
		return -1, ""
	}
}

// observer samples the units every interval, through systemd and through
// HTTP, and records the most units down at once.
type observer struct {
	c            *cluster.Cluster
	units, ports []string
	mu           sync.Mutex
	samples      int
	maxDown      int // by systemd: not active/running
	maxHTTPDown  int // by HTTP: no answer
	seenDown     map[string]bool
	errs         []error
	stop         chan struct{}
	done         chan struct{}
}

func observe(c *cluster.Cluster, units, ports []string, every time.Duration) *observer {
	o := &observer{c: c, units: units, ports: ports, seenDown: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	hc := &http.Client{Timeout: 2 * time.Second}
	go func() {
		defer close(o.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			o.sample(hc)
			select {
			case <-o.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return o
}

func (o *observer) sample(hc *http.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	states, err := o.c.Systemd(ctx, o.units...)
	// Down over HTTP means the port refuses connections; a slow answer on a
	// busy machine is not a down instance.
	refused := make(chan bool, len(o.ports))
	for _, p := range o.ports {
		go func() {
			resp, err := hc.Get("http://127.0.0.1:" + p + "/healthz")
			if err != nil {
				refused <- errors.Is(err, syscall.ECONNREFUSED)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			refused <- false
		}()
	}
	httpDown := 0
	for range o.ports {
		if <-refused {
			httpDown++
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		o.errs = append(o.errs, err)
		return
	}
	o.samples++
	down := 0
	for i, s := range states {
		if !s.Up() {
			down++
			o.seenDown[o.units[i]] = true
		}
	}
	o.maxDown = max(o.maxDown, down)
	o.maxHTTPDown = max(o.maxHTTPDown, httpDown)
}

func (o *observer) Stop() {
	close(o.stop)
	<-o.done
}

// startFleetroll starts the binary and returns it with a channel of its
// stderr lines.
func startFleetroll(t *testing.T, args ...string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd, lines, _ := startFleetrollOut(t, args...)
	return cmd, lines
}

// startFleetrollOut also returns its stdout, complete once it has exited.
func startFleetrollOut(t *testing.T, args ...string) (*exec.Cmd, <-chan string, *bytes.Buffer) {
	t.Helper()
	return startFleetrollOn(t, clusterOf(t), args...)
}

// startFleetrollOn starts the binary with cluster c's environment.
func startFleetrollOn(t *testing.T, c *cluster.Cluster, args ...string) (*exec.Cmd, <-chan string, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = c.Env()
	stdout := &bytes.Buffer{}
	cmd.Stdout = stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, scanLines(stderr), stdout
}

// scanLines sends r's lines on the channel, closed at EOF.
func scanLines(r io.Reader) <-chan string {
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return lines
}

// waitContains reads lines until one contains want.
func waitContains(t *testing.T, lines <-chan string, want string, log *strings.Builder) {
	t.Helper()
	waitFor(t, lines, want, strings.Contains, log)
}

// waitLine reads lines until one starts with want.
func waitLine(t *testing.T, lines <-chan string, want string, log *strings.Builder) {
	t.Helper()
	waitFor(t, lines, want, strings.HasPrefix, log)
}

var unitRe = regexp.MustCompile(`[a-z0-9-]+@[0-9]+\.service`)

// genericLine is a line of output with its unit names taken out, so that
// the waits for one step of several units add up.
func genericLine(s string) string { return unitRe.ReplaceAllString(s, "UNIT") }

// waitFor reads lines, into log, until match(line, want), for 2 minutes.
func waitFor(t *testing.T, lines <-chan string, want string, match func(s, sub string) bool, log *strings.Builder) {
	t.Helper()
	defer waiting(t, waitOutput, "line "+strconv.Quote(genericLine(want)))()
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("fleetroll ended before printing %q:\n%s", want, log)
			}
			log.WriteString(l + "\n")
			if match(l, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no line %q within 2m:\n%s", want, log)
		}
	}
}

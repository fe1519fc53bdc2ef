package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/cluster"
)

var (
	repo       string
	cl         *cluster.Cluster
	clusterErr error
	binary     string // the fleetroll binary under test
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	wd, _ := os.Getwd()
	repo = filepath.Dir(wd)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

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

	// A cluster of its own, beside the demo's, on other ports.
	cl, clusterErr = cluster.Up(ctx, cluster.Config{Repo: repo, Dir: "/tmp/fleetroll-e2e", EtcdPort: 22379, FleetPort: 49163, Fresh: !keepCluster()})
	if clusterErr != nil {
		fmt.Fprintf(os.Stderr, "e2e: the local cluster did not start: %v\n", clusterErr)
	}
	code := m.Run()
	down3()
	if cl != nil && !keepCluster() {
		if err := cl.Down(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	return code
}

// keepCluster: FLEETROLL_KEEP_CLUSTER set, the clusters of the suite are
// kept between runs (for a look, or a faster next run). Otherwise each run
// starts them afresh and removes them at the end.
func keepCluster() bool { return os.Getenv("FLEETROLL_KEEP_CLUSTER") != "" }

// needCluster fails the test under CI=true when the cluster is not up, and
// skips it elsewhere.
func needCluster(t *testing.T) {
	t.Helper()
	if clusterErr == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the local cluster is required under CI=true: %v", clusterErr)
	}
	t.Skipf("no local cluster: %v", clusterErr)
}

// launchDemo launches the demo service as service@PORT for each port and
// destroys the units when the test ends.
func launchDemo(t *testing.T, service string, ports ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var names []string
	for _, p := range ports {
		names = append(names, fmt.Sprintf("%s@%s.service", service, p))
	}
	t.Cleanup(func() { cl.Destroy(names...) })
	if _, err := cl.LaunchDemo(ctx, service, ports...); err != nil {
		t.Fatal(err)
	}
	return names
}

func systemd(t *testing.T, units ...string) []cluster.SystemdState {
	t.Helper()
	st, err := cl.Systemd(context.Background(), units...)
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
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = cl.Env()
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

func observe(units, ports []string, every time.Duration) *observer {
	o := &observer{units: units, ports: ports, seenDown: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
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
	states, err := cl.Systemd(ctx, o.units...)
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
	return startFleetrollOn(t, cl, args...)
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

// waitFor reads lines, into log, until match(line, want), for 2 minutes.
func waitFor(t *testing.T, lines <-chan string, want string, match func(s, sub string) bool, log *strings.Builder) {
	t.Helper()
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

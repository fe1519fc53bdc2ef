package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/fleetroll/fleetroll/internal/naive"
)

// Setup is what a measured rollout runs against: my-service launched on
// the cluster and nginx in front of it.
type Setup struct {
	Cluster *cluster.Cluster
	Service *Service
	Proxy   *Proxy
	fleet   fleetroll.Fleet
	also    []string
}

// Start builds confd (into the cluster's bin directory), launches
// my-service@PORT for the ports with their sidekicks, and starts the proxy
// in proxyDir. Close undoes it, also after an error.
func Start(ctx context.Context, cl *cluster.Cluster, ports []string, o LaunchOptions, proxyDir string) (*Setup, error) {
	s := &Setup{Cluster: cl}
	fleet, err := fleetroll.Connect(cl.Endpoint, 10*time.Second)
	if err != nil {
		return s, err
	}
	s.fleet = fleet
	confd, err := BuildConfd(ctx, cl.Repo, filepath.Join(cl.Dir, "bin"))
	if err != nil {
		return s, err
	}
	if s.Service, err = Launch(ctx, cl, ports, o); err != nil {
		return s, err
	}
	if s.Proxy, err = StartProxy(ctx, cl, proxyDir, confd); err != nil {
		return s, err
	}
	return s, nil
}

// Also adds units for Close to remove (those a rollout launched).
func (s *Setup) Also(units ...string) { s.also = append(s.also, units...) }

// Close stops the proxy and removes the units.
func (s *Setup) Close() {
	if s.Proxy != nil {
		s.Proxy.Close()
	}
	if s.Service != nil {
		s.Service.Destroy(s.Cluster)
	}
	s.Cluster.Destroy(s.also...)
}

// steady waits until every instance is in the proxy's upstreams.
func (s *Setup) steady(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return s.Proxy.WaitUpstreams(wctx, len(s.Service.Ports))
}

// Fleetroll measures a roll by the fleetroll binary, with drain and health
// gate, once every instance is in the proxy; it returns fleetroll's report.
// fleetroll runs in the hub namespace: its health gate reaches the
// machines' addresses there, as an operator's host would.
func (s *Setup) Fleetroll(ctx context.Context, binary string, lo LoadOptions, min int, extra ...string) (Result, time.Duration, *fleetroll.Report, error) {
	if err := s.steady(ctx); err != nil {
		return Result{}, 0, nil, err
	}
	var stdout, stderr bytes.Buffer
	res, took, err := measure(ctx, s.Proxy, lo, min, func(ctx context.Context) error {
		cmd := s.Cluster.Hub(ctx, binary, append(fleetrollArgs(s.Cluster, s.Service.Ports), extra...)...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("fleetroll exited %d:\n%s%s", ee.ExitCode(), &stderr, &stdout)
		}
		return err
	})
	if err != nil {
		return res, took, nil, err
	}
	var rep fleetroll.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		return res, took, nil, fmt.Errorf("fleetroll's report: %w\n%s", err, &stdout)
	}
	return res, took, &rep, nil
}

// Naive measures the naive loop, once every instance is in the proxy.
func (s *Setup) Naive(ctx context.Context, lo LoadOptions, min int) (Result, time.Duration, error) {
	if err := s.steady(ctx); err != nil {
		return Result{}, 0, err
	}
	return measure(ctx, s.Proxy, lo, min, func(ctx context.Context) error {
		return naive.Roll(ctx, s.fleet, s.Service.Units, time.Second)
	})
}

// measure starts the load, runs roll, and stops the load once roll has
// ended and at least min requests were sent, so that the whole rollout
// happens under load.
func measure(ctx context.Context, proxy *Proxy, lo LoadOptions, atLeast int, roll func(context.Context) error) (Result, time.Duration, error) {
	load := StartLoad(ctx, proxy.Socket, lo)
	sctx, stopSampling := context.WithCancel(ctx)
	fewest := make(chan int, 1)
	go func() {
		n := proxy.Count()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				fewest <- n
				return
			case <-tick.C:
				n = min(n, proxy.Count())
			}
		}
	}()
	t0 := time.Now()
	rollErr := roll(ctx)
	took := time.Since(t0)
	stopSampling()
	waitErr := load.WaitSent(ctx, atLeast)
	res := load.Stop()
	res.MinUpstreams = <-fewest
	if rollErr != nil {
		return res, took, rollErr
	}
	return res, took, waitErr
}

// fleetrollArgs are the arguments of the measured fleetroll: drain through
// the sidekicks' announcements and a health gate, with the cluster's fleet
// and etcd.
func fleetrollArgs(cl *cluster.Cluster, ports []string) []string {
	return []string{"restart", "my-service", "--ports", strings.Join(ports, ","),
		"--endpoint", cl.Endpoint, "--etcd-endpoints", cl.EtcdURL, "--lock", "fail",
		"--drain", "--drain-delay", "2s", "--drain-timeout", "1m",
		"--health-path", "/healthz", "--health-successes", "3", "--health-interval", "250ms",
		"--grace", "1s", "-o", "json"}
}

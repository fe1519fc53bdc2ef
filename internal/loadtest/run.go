package loadtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/internal/cluster"
)

// Measure starts the load, runs roll, and stops the load once roll has
// ended and at least min requests were sent, so that the whole rollout
// happens under load.
func Measure(ctx context.Context, socket string, lo LoadOptions, min int, roll func(context.Context) error) (Result, time.Duration, error) {
	load := StartLoad(ctx, socket, lo)
	t0 := time.Now()
	rollErr := roll(ctx)
	took := time.Since(t0)
	waitErr := load.WaitSent(ctx, min)
	res := load.Stop()
	if rollErr != nil {
		return res, took, rollErr
	}
	return res, took, waitErr
}

// FleetrollArgs are the arguments of the measured fleetroll: drain through
// the sidekicks' announcements and a health gate, with the cluster's fleet
// and etcd.
func FleetrollArgs(cl *cluster.Cluster, ports []string) []string {
	return []string{"restart", "my-service", "--ports", strings.Join(ports, ","),
		"--endpoint", cl.Endpoint, "--etcd-endpoints", cl.EtcdURL, "--lock", "fail",
		"--drain", "--drain-delay", "2s", "--drain-timeout", "1m",
		"--health-path", "/healthz", "--health-successes", "3", "--health-interval", "250ms",
		"--grace", "1s", "-o", "json"}
}

// Fleetroll returns a roll that runs the fleetroll binary in the hub
// namespace (its health gate reaches the machines' addresses there, as an
// operator's host would). Its standard output is stored in *out.
func Fleetroll(cl *cluster.Cluster, binary string, args []string, out *string) func(context.Context) error {
	return func(ctx context.Context) error {
		cmd := cl.Hub(ctx, binary, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		*out = stdout.String()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return fmt.Errorf("fleetroll exited %d:\n%s%s", ee.ExitCode(), &stderr, &stdout)
			}
			return fmt.Errorf("fleetroll: %w", err)
		}
		return nil
	}
}

package main

import (
	"context"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	client "go.etcd.io/etcd/client/v2"
)

// pausedRollout waits until a rollout is paused and returns its ID.
func pausedRollout(ctx context.Context, t *testing.T, kapi client.KeysAPI) string {
	t.Helper()
	w := kapi.Watcher(coord.PausePrefix, &client.WatcherOptions{Recursive: true})
	for {
		if resp, err := kapi.Get(ctx, coord.PausePrefix, nil); err == nil && len(resp.Node.Nodes) > 0 {
			return path.Base(resp.Node.Nodes[0].Key)
		}
		if _, err := w.Next(ctx); err != nil {
			t.Fatalf("no rollout paused: %v", err)
		}
	}
}

// restart --canary 1 pauses after the first instance; fleetroll promote
// rolls the others, fleetroll abort stops there with exit code 4.
func TestCanaryRestartDecidedByTheCLI(t *testing.T) {
	etcd, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{etcd}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, c := range []struct {
		decision  string
		code      int
		restarted int
	}{{"promote", 0, 3}, {"abort", exitAborted, 1}} {
		f, url := fakeCluster(t, units3...)
		type result struct {
			code      int
			out, errs string
		}
		done := make(chan result, 1)
		go func() {
			code, out, errs := runCLI(t, "restart", "my-service", "--endpoint", url, "--grace", "0s", "--min-healthy-time", "0s", "--poll-interval", "1ms",
				"--etcd-endpoints", etcd, "--canary", "1")
			done <- result{code, out, errs}
		}()
		id := pausedRollout(ctx, t, kapi)
		if sets := f.Sets(); len(sets) != 2 {
			t.Fatalf("touched at the pause: %v", sets)
		}
		arg := id
		if c.decision == "promote" {
			arg = strings.ToUpper(id) // as typed from a page or a chat: the same rollout
		}
		code, out, errs := runCLI(t, c.decision, arg, "--etcd-endpoints", etcd)
		if code != 0 || !strings.Contains(out, "rollout "+id+" of my-service: "+c.decision) {
			t.Fatalf("%s: exit %d: %s%s", c.decision, code, out, errs)
		}
		r := <-done
		if r.code != c.code || len(f.Sets()) != 2*c.restarted || !strings.Contains(r.errs, "paused after its canaries my-service@8901.service") {
			t.Fatalf("restart after %s: exit %d, sets %v\n%s%s", c.decision, r.code, f.Sets(), r.out, r.errs)
		}
		// The pause is over: a second decision finds nothing.
		if code, _, errs := runCLI(t, c.decision, id, "--etcd-endpoints", etcd); code != exitUsage || !strings.Contains(errs, "no such rollout is paused") {
			t.Fatalf("second %s: exit %d: %s", c.decision, code, errs)
		}
	}
	if code, _, errs := runCLI(t, "promote", "../locks", "--etcd-endpoints", etcd); code != exitUsage || !strings.Contains(errs, "want 12 hex digits") {
		t.Fatalf("bad ID: exit %d: %s", code, errs)
	}
	if code, _, errs := runCLI(t, "restart", "my-service", "--canary-wait", "1m", "--canary", "1"); code != exitUsage || !strings.Contains(errs, "health gate") {
		t.Fatalf("canary wait without a gate: exit %d: %s", code, errs)
	}
}

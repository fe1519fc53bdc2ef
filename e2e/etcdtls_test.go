package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	fr "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/testcerts"
	"github.com/fleetroll/fleetroll/internal/unitsh"
	client "go.etcd.io/etcd/client/v2"
)

// unitServeArgs runs units/fleetroll@.service's ExecStart through
// internal/unitsh with a DOCKER that prints its arguments, and returns the
// flags the unit gives serve, as serve would see them inside the
// container: each path under a mount (-v HOST:CONTAINER) is the host's,
// and --endpoint, fleet's socket in the container, is the cluster's fleet
// API (the test's fleet listens on HTTP, not on a socket).
func unitServeArgs(t *testing.T, fleetEndpoint string, set map[string]string) []string {
	t.Helper()
	docker := filepath.Join(t.TempDir(), "docker")
	if err := os.WriteFile(docker, []byte("#!/bin/sh\nprintf '%s\\n' \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	u, err := unitsh.Load(filepath.Join(repo, "units", "fleetroll@.service"))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DOCKER": docker}
	for k, v := range set {
		env[k] = v
	}
	cmd, err := u.Command(t.Context(), "ExecStart", 0, "1", env)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the unit's ExecStart: %v", err)
	}
	args := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	i := slices.Index(args, "serve")
	if i < 1 || args[0] != "run" {
		t.Fatalf("the unit's ExecStart runs no serve: %q", args)
	}
	mounts := map[string]string{} // container path: host path
	for j := 0; j+1 < i; j++ {
		if args[j] == "-v" {
			parts := strings.Split(args[j+1], ":")
			mounts[parts[1]] = parts[0]
		}
	}
	serve := slices.Clone(args[i+1:])
	for j, a := range serve {
		if j > 0 && serve[j-1] == "--endpoint" {
			serve[j] = fleetEndpoint
			continue
		}
		for in, host := range mounts {
			if a == in || strings.HasPrefix(a, in+"/") {
				serve[j] = host + strings.TrimPrefix(a, in)
			}
		}
	}
	return serve
}

// etcd served over TLS, asking for a client certificate, with certificates
// the test makes: a receiver run with the flags units/fleetroll@.service
// gives serve for ETCD_ENDPOINTS, ETCD_CA_FILE, ETCD_CERT_FILE and
// ETCD_KEY_FILE rolls a service, with its lock and its record in that etcd,
// and none in the cluster's own (plain) etcd, which its environment names.
func TestUnitsSettingsRollOverTLSEtcd(t *testing.T) {
	c := needCluster(t)
	claimUnits(t, "e2e-tls", "19517", "19518") // etcd's client and peer ports
	certs := testcerts.Make(t)
	etcdURL, _ := etcdtest.StartTLS(t, etcdtest.TLS{CA: certs.CA, Cert: certs.ServerCert, Key: certs.ServerKey,
		ClientCert: certs.ClientCert, ClientKey: certs.ClientKey}, 19517, 19518)
	ports := []string{"19511", "19512", "19513"}
	units := launchDemo(t, "e2e-tls", ports...)
	before := systemd(t, units...)

	etc := t.TempDir()
	for name, content := range map[string]string{
		"config.yaml": "services:\n  - name: e2e-tls\n    ports: 19511-19513\n    grace: 0s\n    min_healthy_time: 0s\n",
		"token":       serveToken + "\n",
	} {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	args := unitServeArgs(t, c.Endpoint, map[string]string{"VERSION": "v0.0.0-e2e", "ETC": etc, "LISTEN": "127.0.0.1:0",
		"ETCD_ENDPOINTS": etcdURL, "ETCD_CA_FILE": certs.CA, "ETCD_CERT_FILE": certs.ClientCert, "ETCD_KEY_FILE": certs.ClientKey})
	joined := strings.Join(args, " ")
	for _, want := range []string{"--etcd-endpoints " + etcdURL + " --lock wait", "--etcd-ca-file " + certs.CA,
		"--etcd-cert-file " + certs.ClientCert, "--etcd-key-file " + certs.ClientKey, "--config " + etc + "/config.yaml"} {
		if !strings.Contains(joined, want) {
			t.Fatalf("the unit's serve flags %q lack %q", joined, want)
		}
	}

	tlsKAPI, err := coord.Connect(coord.Config{Endpoints: []string{etcdURL}, CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey})
	if err != nil {
		t.Fatal(err)
	}
	plainKAPI, err := coord.Connect(coord.Config{Endpoints: []string{c.EtcdURL}})
	if err != nil {
		t.Fatal(err)
	}
	// The lock's key watched in both etcds from before the trigger: a
	// lock taken and released between two readings is seen all the same.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tlsLock, plainLock := watchKey(ctx, t, tlsKAPI, coord.LockKey("e2e-tls")), watchKey(ctx, t, plainKAPI, coord.LockKey("e2e-tls"))

	// startServe runs serve with the cluster's environment, which names the
	// plain etcd (FLEETROLL_ETCD_ENDPOINTS): the unit's flags win over it.
	base, cmd := startServeCmd(t, args...)
	auth := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + serveToken}
	code, ans := post(t, base+"/rollouts", []byte(`{"service":"e2e-tls"}`), auth)
	if code != 202 {
		t.Fatalf("trigger: %d %v", code, ans)
	}
	id, _ := ans["id"].(string)
	if ro := waitStatus(t, base, id); ro["status"] != "succeeded" {
		t.Fatalf("rollout: %v", ro)
	}
	after := systemd(t, units...)
	for i, u := range units {
		if !after[i].Up() || after[i].MainPID == before[i].MainPID {
			t.Errorf("%s not restarted: %+v -> %+v", u, before[i], after[i])
		}
	}

	rec, found, err := coord.History{KAPI: tlsKAPI}.Get(ctx, id)
	if err != nil || !found || rec.Status != fr.StatusSucceeded || rec.Service != "e2e-tls" {
		t.Errorf("the record in the TLS etcd: found %v, %+v, %v", found, rec, err)
	}
	if _, found, err := (coord.History{KAPI: plainKAPI}).Get(ctx, id); err != nil || found {
		t.Errorf("the record in the plain etcd: found %v, %v", found, err)
	}
	select {
	case ev := <-tlsLock:
		if ev.err != nil || ev.action != "create" || !strings.Contains(ev.value, fmt.Sprintf("(pid %d)", cmd.Process.Pid)) {
			t.Errorf("the lock in the TLS etcd: %+v", ev)
		}
	case <-ctx.Done():
		t.Error("no lock was taken in the TLS etcd")
	}
	cancel() // the plain etcd's watch ends, with no event
	if ev := <-plainLock; ev.err == nil {
		t.Errorf("a lock in the plain etcd: %+v", ev)
	}
}

type keyEvent struct {
	action, value string
	err           error
}

// watchKey watches key from etcd's present index and sends the first
// change of it (or the error that ended the watch, ctx's at its end).
func watchKey(ctx context.Context, t *testing.T, kapi client.KeysAPI, key string) <-chan keyEvent {
	t.Helper()
	resp, err := kapi.Get(ctx, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	w := kapi.Watcher(key, &client.WatcherOptions{AfterIndex: resp.Index})
	ch := make(chan keyEvent, 1)
	go func() {
		r, err := w.Next(ctx)
		if err != nil {
			ch <- keyEvent{err: err}
			return
		}
		ch <- keyEvent{action: r.Action, value: r.Node.Value}
	}()
	return ch
}

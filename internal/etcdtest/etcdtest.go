// Package etcdtest runs a real etcd (v2 API on) for one test.
package etcdtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"
)

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs etcd on free loopback ports until the test ends and returns its
// client URL and a function that stops it early. Under CI=true a missing
// etcd fails the test; elsewhere it skips.
//
// A free port is only free until someone takes it: tests of several
// packages start etcds at once, and one may bind the port another was
// handed. An etcd that exits before it answers is started again on other
// ports (a few times), and what it printed is shown if none starts.
func Start(t testing.TB) (url string, stop func()) {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("etcd is required under CI=true (contrib/cluster/deps.sh installs it)")
		}
		t.Skip("no etcd")
	}
	var last string
	for range 5 {
		url, stop, out, ok := start(t, bin, freePort(t), freePort(t))
		if ok {
			return url, stop
		}
		last = out
	}
	t.Fatalf("etcd did not start (5 tries); the last one printed:\n%s", last)
	return "", nil
}

// start runs one etcd and waits until it answers (ok), or it exits (its
// output is returned), or 30 s have passed (the test fails).
func start(t testing.TB, bin string, cport, pport int) (url string, stop func(), output string, ok bool) {
	t.Helper()
	curl, purl := fmt.Sprintf("http://127.0.0.1:%d", cport), fmt.Sprintf("http://127.0.0.1:%d", pport)
	var out bytes.Buffer
	// Its own name: what answers on the port must be this etcd, not one
	// that took the port first.
	name := fmt.Sprintf("etcdtest-%d-%d", os.Getpid(), cport)
	cmd := exec.Command(bin, "--name", name, "--data-dir", t.TempDir(), "--enable-v2=true",
		"--listen-client-urls", curl, "--advertise-client-urls", curl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl, "--initial-cluster", name+"="+purl)
	cmd.Stdout, cmd.Stderr = &out, &out // one writer: exec writes it from one goroutine at a time
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(30 * time.Second)
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		var self struct {
			Name string `json:"name"`
		}
		resp, err := hc.Get(curl + "/v2/stats/self")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&self)
			resp.Body.Close()
			if err == nil && self.Name != name {
				err = fmt.Errorf("another etcd (%q) answers on %s", self.Name, curl)
			}
		}
		if err == nil {
			return curl, stop, "", true
		}
		select {
		case <-exited:
			stop()
			return "", nil, out.String(), false
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not start: %v", err)
		}
		select { // etcd's only readiness signal is its port
		case <-exited:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

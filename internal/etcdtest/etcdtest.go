// Package etcdtest runs a real etcd (v2 API on) for one test.
package etcdtest

import (
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
func Start(t testing.TB) (url string, stop func()) {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("etcd is required under CI=true (contrib/cluster/deps.sh installs it)")
		}
		t.Skip("no etcd")
	}
	cport, pport := freePort(t), freePort(t)
	curl, purl := fmt.Sprintf("http://127.0.0.1:%d", cport), fmt.Sprintf("http://127.0.0.1:%d", pport)
	cmd := exec.Command(bin, "--name", "t", "--data-dir", t.TempDir(), "--enable-v2=true",
		"--listen-client-urls", curl, "--advertise-client-urls", curl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl, "--initial-cluster", "t="+purl)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(curl + "/v2/keys")
		if err == nil {
			resp.Body.Close()
			return curl, stop
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // etcd's only readiness signal is its port
	}
}

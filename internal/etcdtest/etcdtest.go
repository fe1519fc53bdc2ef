// Package etcdtest runs a real etcd (v2 API on) for one test.
package etcdtest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
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
		url, stop, out, ok := start(t, bin, freePort(t), freePort(t), nil)
		if ok {
			return url, stop
		}
		last = out
	}
	t.Fatalf("etcd did not start (5 tries); the last one printed:\n%s", last)
	return "", nil
}

// TLS are the files of an etcd served over TLS: its certificate and key,
// the CA its clients' certificates must be signed by (it asks each client
// for one: --client-cert-auth), and a client certificate and key, which
// StartTLS uses to see it answer.
type TLS struct {
	CA, Cert, Key         string
	ClientCert, ClientKey string
}

// StartTLS runs etcd over TLS on the given loopback ports (its client URL
// https://127.0.0.1:CLIENT; its peers stay on plain HTTP, on loopback)
// until the test ends, and returns its client URL and a function that
// stops it early. Without etcd it skips, or fails under CI=true.
func StartTLS(t testing.TB, files TLS, clientPort, peerPort int) (url string, stop func()) {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("etcd is required under CI=true (contrib/cluster/deps.sh installs it)")
		}
		t.Skip("no etcd")
	}
	url, stop, out, ok := start(t, bin, clientPort, peerPort, &files)
	if !ok {
		t.Fatalf("etcd over TLS did not start on port %d; it printed:\n%s", clientPort, out)
	}
	return url, stop
}

// start runs one etcd and waits until it answers (ok), or it exits (its
// output is returned), or 30 s have passed (the test fails).
// With files, its clients are served over TLS.
func start(t testing.TB, bin string, cport, pport int, files *TLS) (url string, stop func(), output string, ok bool) {
	t.Helper()
	curl, purl := fmt.Sprintf("http://127.0.0.1:%d", cport), fmt.Sprintf("http://127.0.0.1:%d", pport)
	hc := &http.Client{Timeout: 2 * time.Second}
	var tlsArgs []string
	if files != nil {
		curl = fmt.Sprintf("https://127.0.0.1:%d", cport)
		tlsArgs = []string{"--cert-file", files.Cert, "--key-file", files.Key, "--trusted-ca-file", files.CA, "--client-cert-auth"}
		tc, err := clientTLS(*files)
		if err != nil {
			t.Fatal(err)
		}
		hc.Transport = &http.Transport{TLSClientConfig: tc}
	}
	var out bytes.Buffer
	// Its own name: what answers on the port must be this etcd, not one
	// that took the port first.
	name := fmt.Sprintf("etcdtest-%d-%d", os.Getpid(), cport)
	args := append([]string{"--name", name, "--data-dir", t.TempDir(), "--enable-v2=true",
		"--listen-client-urls", curl, "--advertise-client-urls", curl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl, "--initial-cluster", name + "=" + purl}, tlsArgs...)
	cmd := exec.Command(bin, args...)
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

// clientTLS is the configuration StartTLS asks its etcd with.
func clientTLS(files TLS) (*tls.Config, error) {
	pem, err := os.ReadFile(files.CA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", files.CA)
	}
	cert, err := tls.LoadX509KeyPair(files.ClientCert, files.ClientKey)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

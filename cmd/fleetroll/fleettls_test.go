package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
	"github.com/fleetroll/fleetroll/internal/testcerts"
)

// tlsFleet serves the fake fleet over TLS with the server certificate of
// certs, asking every client for a certificate certs' CA signed.
func tlsFleet(t *testing.T, certs testcerts.Files, names ...string) (*fakefleet.Fleet, string) {
	t.Helper()
	pem, err := os.ReadFile(certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no CA")
	}
	cert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	f := fakefleet.New(names...)
	srv := httptest.NewUnstartedServer(f)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return f, srv.URL
}

// An https:// fleet endpoint that asks for a client certificate is reached
// with fleetctl's --ca-file, --cert-file and --key-file (or its
// FLEETCTL_* variables), and only with them.
func TestRestartOverTLSWithAClientCertificate(t *testing.T) {
	certs := testcerts.Make(t)
	roll := []string{"restart", "my-service", "--ports", "8901-8902", "--grace", "0s", "--min-healthy-time", "0s", "--poll-interval", "1ms"}
	for _, tc := range []struct {
		name     string
		flags    []string
		env      map[string]string
		code     int
		contains string // in stderr
	}{
		{name: "flags", flags: []string{"--ca-file", certs.CA, "--cert-file", certs.ClientCert, "--key-file", certs.ClientKey}},
		{name: "fleetctl's variables", env: map[string]string{"FLEETCTL_CA_FILE": certs.CA, "FLEETCTL_CERT_FILE": certs.ClientCert, "FLEETCTL_KEY_FILE": certs.ClientKey}},
		{name: "fleetroll's variables", env: map[string]string{"FLEETROLL_CA_FILE": certs.CA, "FLEETROLL_CERT_FILE": certs.ClientCert, "FLEETROLL_KEY_FILE": certs.ClientKey}},
		{name: "no client certificate", flags: []string{"--ca-file", certs.CA}, code: 1, contains: "certificate"},
		{name: "another CA's client certificate", flags: []string{"--ca-file", certs.CA, "--cert-file", certs.OtherCert, "--key-file", certs.OtherKey},
			code: 1, contains: "certificate"},
		{name: "fleet's CA not given", flags: []string{"--cert-file", certs.ClientCert, "--key-file", certs.ClientKey}, code: 1, contains: "certificate"},
		{name: "a certificate without its key", flags: []string{"--ca-file", certs.CA, "--cert-file", certs.ClientCert}, code: 2, contains: "key file"},
		{name: "a CA file that is not one", flags: []string{"--ca-file", certs.ClientKey}, code: 2, contains: "no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, url := tlsFleet(t, certs, units3[:2]...)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := append(append(append([]string{}, roll...), "--endpoint", url), tc.flags...)
			code, out, errs := runCLI(t, args...)
			if code != tc.code || !strings.Contains(errs, tc.contains) {
				t.Fatalf("exit %d (want %d), stderr should name %q\nstdout: %s\nstderr: %s", code, tc.code, tc.contains, out, errs)
			}
			sets := f.Sets()
			if tc.code == 0 && len(sets) != 4 {
				t.Fatalf("sets = %v, want both instances stopped and started", sets)
			}
			if tc.code != 0 && len(sets) != 0 {
				t.Fatalf("sets = %v, want none", sets)
			}
		})
	}
}

// Certificate files for an endpoint that is not https:// are refused, not
// ignored.
func TestTLSFilesNeedAnHTTPSEndpoint(t *testing.T) {
	certs := testcerts.Make(t)
	f, url := fakeCluster(t, units3[:1]...)
	for _, endpoint := range []string{url, "unix:///var/run/fleet.sock"} {
		code, _, errs := runCLI(t, "restart", "my-service", "--endpoint", endpoint, "--ca-file", certs.CA)
		if code != 2 || !strings.Contains(errs, "https://") {
			t.Fatalf("%s: exit %d, stderr: %s", endpoint, code, errs)
		}
	}
	if sets := f.Sets(); len(sets) != 0 {
		t.Fatalf("sets = %v", sets)
	}
}

// The CLI keeps its lock, intent and history in an etcd served over TLS
// that asks for a client certificate (--etcd-ca-file, --etcd-cert-file,
// --etcd-key-file); without the certificate it touches nothing.
func TestRestartWithEtcdOverTLS(t *testing.T) {
	certs := testcerts.Make(t)
	etcd, _ := etcdtest.StartTLS(t, etcdtest.TLS{CA: certs.CA, Cert: certs.ServerCert, Key: certs.ServerKey,
		ClientCert: certs.ClientCert, ClientKey: certs.ClientKey}, freeTCPPort(t), freeTCPPort(t))
	f, url := fakeCluster(t, units3[:2]...)
	roll := []string{"restart", "my-service", "--endpoint", url, "--grace", "0s", "--min-healthy-time", "0s", "--poll-interval", "1ms",
		"--etcd-endpoints", etcd, "--etcd-ca-file", certs.CA}
	if code, _, errs := runCLI(t, roll...); code != 1 || !strings.Contains(errs, "etcd unreachable, nothing was touched") {
		t.Fatalf("without a client certificate: exit %d: %s", code, errs)
	}
	if sets := f.Sets(); len(sets) != 0 {
		t.Fatalf("sets = %v", sets)
	}
	t.Setenv("FLEETROLL_ETCD_CERT_FILE", certs.ClientCert)
	t.Setenv("FLEETROLL_ETCD_KEY_FILE", certs.ClientKey)
	code, out, errs := runCLI(t, append(roll, "-o", "json")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var rep fleetroll.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	code, status, errs := runCLI(t, "status", rep.ID, "-o", "json", "--etcd-endpoints", etcd, "--etcd-ca-file", certs.CA)
	if code != 0 || !strings.Contains(status, rep.ID) {
		t.Fatalf("status from the TLS etcd: exit %d: %s\n%s", code, status, errs)
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

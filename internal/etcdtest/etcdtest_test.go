package etcdtest

import (
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/testcerts"
)

// An etcd whose port another process took exits at once: start says so
// with what it printed (Start then tries other ports), and does not wait
// its 30 s out.
func TestStartNoticesAnEtcdThatExits(t *testing.T) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("no etcd") // Start's own tests, under CI=true, fail without it
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, _, out, ok := start(t, bin, taken.Addr().(*net.TCPAddr).Port, freePort(t), nil)
	if ok || !strings.Contains(out, "address already in use") {
		t.Fatalf("etcd on a taken port: ok=%v, output:\n%s", ok, out)
	}
	if url, _ := Start(t); !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("Start: %q", url)
	}
}

// StartTLS's etcd answers a client with a certificate its CA signed, and
// no other.
func TestStartTLSAsksForAClientCertificate(t *testing.T) {
	certs := testcerts.Make(t)
	files := TLS{CA: certs.CA, Cert: certs.ServerCert, Key: certs.ServerKey, ClientCert: certs.ClientCert, ClientKey: certs.ClientKey}
	url, _ := StartTLS(t, files, freePort(t), freePort(t))
	if !strings.HasPrefix(url, "https://127.0.0.1:") {
		t.Fatalf("StartTLS: %q", url)
	}
	stranger := files
	stranger.ClientCert, stranger.ClientKey = certs.OtherCert, certs.OtherKey
	tc, err := clientTLS(stranger)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	if resp, err := hc.Get(url + "/v2/keys/"); err == nil {
		resp.Body.Close()
		t.Fatalf("another CA's client certificate: %d", resp.StatusCode)
	}
}

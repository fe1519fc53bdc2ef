package etcdtest

import (
	"net"
	"os/exec"
	"strings"
	"testing"
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
	_, _, out, ok := start(t, bin, taken.Addr().(*net.TCPAddr).Port, freePort(t))
	if ok || !strings.Contains(out, "address already in use") {
		t.Fatalf("etcd on a taken port: ok=%v, output:\n%s", ok, out)
	}
	if url, _ := Start(t); !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("Start: %q", url)
	}
}

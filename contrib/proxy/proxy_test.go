// Package proxy holds the tests of the shipped proxy: its unit
// (units/my-service-proxy.service) run as systemd would run it, with
// podman, its prefix directory and confd.
package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/proxyimage"
	"github.com/fleetroll/fleetroll/internal/unitsh"
)

const unitFile = "units/my-service-proxy.service"

var listenPort = regexp.MustCompile(`(?m)^\s*listen\s+(?:\S*:)?(\d+)\s*;`)

// The shipped listen.conf and the receivers' unit on the same machine
// never want one port.
func TestListenIsApartFromTheReceivers(t *testing.T) {
	b, err := os.ReadFile("my-service-proxy/listen.conf")
	if err != nil {
		t.Fatal(err)
	}
	m := listenPort.FindSubmatch(b)
	if m == nil {
		t.Fatalf("listen.conf %q names no port", b)
	}
	hook, err := unitsh.Load("../../units/fleetroll@.service")
	if err != nil {
		t.Fatal(err)
	}
	listen := hook.Env()["LISTEN"]
	_, hookPort, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatalf("fleetroll@.service LISTEN=%q: %v", listen, err)
	}
	if string(m[1]) == hookPort {
		t.Errorf("the proxy listens on %s, the receivers' port (LISTEN=%s)", m[1], listen)
	}
	proxy, err := unitsh.Load(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	if img := proxy.Env()["IMAGE"]; strings.HasSuffix(img, ":latest") || !strings.Contains(img[strings.LastIndex(img, "/")+1:], ":") {
		t.Errorf("IMAGE=%s: pin a tag", img)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// eventually polls check every 200 ms until it succeeds or ctx ends.
func eventually(ctx context.Context, t *testing.T, what string, check func() error) {
	t.Helper()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, err)
		case <-tick.C:
		}
	}
}

// startRegistry runs Debian's docker-registry on addr until the test ends.
func startRegistry(ctx context.Context, t *testing.T, dir, addr string) {
	t.Helper()
	cfg := filepath.Join(dir, "registry.yml")
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "registry"), addr)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := exec.Command("docker-registry", "serve", cfg)
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Process.Kill(); _ = reg.Wait() })
	hc := &http.Client{Timeout: time.Second}
	eventually(ctx, t, "the registry answering", func() error {
		resp, err := hc.Get("http://" + addr + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
}

// etcdKey sets (value) or deletes (no value) a key through etcd's v2 API,
// as the sidekicks do.
func etcdKey(ctx context.Context, etcd, key string, value ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	method, body := http.MethodDelete, ""
	if len(value) > 0 {
		method, body = http.MethodPut, url.Values{"value": value}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, etcd+"/v2/keys"+key, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s %s: %s %s", method, key, resp.Status, b)
	}
	return nil
}

// TestUnitRunsTheProxyInAContainer runs the unit's own command lines
// (ExecStartPre, ExecStart, ExecStop, ExecStopPost, with its Environment=
// and the test's settings over them) through podman, on an image made of
// the host's nginx (CI pulls no image from Docker Hub) and the static
// confd, and checks that confd's upstreams and its reload of nginx by the
// pid file work in the container: an instance announced in etcd is reached
// through the proxy's port, and no more once its key is gone.
func TestUnitRunsTheProxyInAContainer(t *testing.T) {
	cluster.NeedTools(t, "podman", "runc", "nginx", "docker-registry", "ldd", "go")
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	if err := os.Chmod(tmp, 0o755); err != nil { // nginx's workers are not root
		t.Fatal(err)
	}

	// confd, as an operator builds it (static); a few seconds from Go's
	// build cache, longer the first time.
	confd := filepath.Join(tmp, "confd")
	build, cancelBuild := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancelBuild()
	if out, err := exec.CommandContext(build, filepath.Join(repo, "contrib", "proxy", "build-confd.sh"), confd).CombinedOutput(); err != nil {
		t.Fatalf("build-confd.sh: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	// The image, in a registry of the test's own.
	regAddr := freeAddr(t)
	startRegistry(ctx, t, tmp, regAddr)
	img, err := proxyimage.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	image := regAddr + "/fleetroll-test/nginx:host"
	ref, err := name.NewTag(image, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	regConf := filepath.Join(tmp, "registries.conf")
	if err := os.WriteFile(regConf, []byte("[[registry]]\nlocation = \""+regAddr+"\"\ninsecure = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// etcd, an instance to route to, and the prefix directory as an
	// operator installs it, on a port of the test's own.
	etcd, _ := etcdtest.Start(t)
	marker := fmt.Sprintf("instance of test %d", os.Getpid())
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, marker) }))
	defer backend.Close()
	proxyDir := filepath.Join(tmp, "my-service-proxy")
	if out, err := exec.CommandContext(ctx, "cp", "-r", filepath.Join(repo, "contrib", "proxy", "my-service-proxy"), proxyDir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	listen := freeAddr(t)
	if err := os.WriteFile(filepath.Join(proxyDir, "listen.conf"), []byte("listen "+listen+";\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	podman, _ := exec.LookPath("podman")
	ctrName := "fleetroll-proxytest-" + strconv.Itoa(os.Getpid())
	set := map[string]string{
		"DOCKER": podman, "IMAGE": image, "NAME": ctrName, "PROXY_DIR": proxyDir, "CONFD": confd, "ETCD": etcd, "STOP_TIMEOUT": "5",
		"CONTAINERS_CONF":            filepath.Join(repo, "contrib", "container", "containers.conf"),
		"CONTAINERS_REGISTRIES_CONF": regConf,
	}
	unit, err := unitsh.Load(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	// run runs every line of key in order, as systemd does: a line's
	// failure fails the unit unless it begins with "-".
	run := func(ctx context.Context, key string) {
		t.Helper()
		for i, line := range unit.Lines(key) {
			cmd, err := unit.Command(ctx, key, i, "", set)
			if err != nil {
				t.Fatal(err)
			}
			if out, err := cmd.CombinedOutput(); err != nil && !strings.HasPrefix(line, "-") {
				t.Fatalf("%s= line %d: %v\n%s", key, i, err, out)
			}
		}
	}
	if n := len(unit.Lines("ExecStart")); n != 1 {
		t.Fatalf("%d ExecStart= lines, want 1", n)
	}
	run(ctx, "ExecStartPre")
	start, err := unit.Command(context.WithoutCancel(ctx), "ExecStart", 0, "", set)
	if err != nil {
		t.Fatal(err)
	}
	var output bytes.Buffer // read only after Wait
	start.Stdout, start.Stderr = &output, &output
	if err := start.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- start.Wait() }()
	stopped := false
	defer func() {
		if stopped {
			return
		}
		// The test failed before it stopped the unit: stop it, then show
		// what the container printed.
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		run(stopCtx, "ExecStop")
		select {
		case <-exited:
		case <-stopCtx.Done():
			_ = start.Process.Kill()
			<-exited
		}
		run(stopCtx, "ExecStopPost")
		t.Logf("ExecStart printed (its end):\n%s", tail(output.String(), 4000))
	}()

	hc := &http.Client{Timeout: 2 * time.Second}
	get := func() (int, string, error) {
		select {
		case err := <-exited:
			exited <- err
			return 0, "", fmt.Errorf("the container ended: %v", err)
		default:
		}
		resp, err := hc.Get("http://" + listen + "/")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	// No instance announced: nginx answers, and not from the instance.
	want502 := func() error {
		code, body, err := get()
		if err != nil {
			return err
		}
		if code != http.StatusBadGateway || strings.Contains(body, marker) {
			return fmt.Errorf("%d %q, want nginx's 502", code, body)
		}
		return nil
	}
	eventually(ctx, t, "the proxy answering 502 with no instance announced", want502)

	// Announced: confd renders the upstream and reloads nginx.
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(backend.URL, "http://"))
	key := "/services/my-service/" + port
	if err := etcdKey(ctx, etcd, key, "127.0.0.1:"+port); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, "the announced instance reached through the proxy", func() error {
		code, body, err := get()
		if err != nil {
			return err
		}
		if code != http.StatusOK || body != marker {
			return fmt.Errorf("%d %q", code, body)
		}
		return nil
	})

	// Gone from etcd: out of the proxy (a second reload).
	if err := etcdKey(ctx, etcd, key); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, "the instance out of the proxy once its key is gone", want502)

	// ExecStop ends ExecStart's container; ExecStopPost removes it.
	run(ctx, "ExecStop")
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("ExecStart after ExecStop: %v\n%s", err, tail(output.String(), 4000))
		}
	case <-ctx.Done():
		t.Fatal("ExecStart still running after ExecStop")
	}
	stopped = true
	run(ctx, "ExecStopPost")
	if err := exec.CommandContext(ctx, podman, "container", "exists", ctrName).Run(); err == nil {
		t.Errorf("container %s still there after ExecStopPost", ctrName)
	}
}

// tail is the last n bytes of s at most.
func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/fleet/schema"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/fleetroll/fleetroll/internal/proxyimage"
)

// The container proof (issue 4): the fleetroll image built from the
// Dockerfile with podman, two versions of the demo image, a local registry
// whose notifications reach fleetroll running in its container as the shipped
// fleetroll@.service, the shipped my-service units and the proxy unit (nginx
// and confd in a container, from an image of the host's nginx: no nginx
// image is pulled from Docker Hub). Pushing version 2 rolls every instance to it, and the proxy answers
// from all of them.

const (
	regAddr     = "127.0.0.1:15000"
	hookListen  = "127.0.0.1:18080"
	proxyListen = "127.0.0.1:18088"
	proxyCtr    = "e2e-my-service-proxy"
	ctrToken    = "e2e-container-token-0123456789"
	ctrRegToken = "e2e-container-registry-token-0123"
)

var ctrPorts = []string{"18951", "18952", "18953"}

type ctrEnv struct {
	t    *testing.T
	tmp  string
	env  []string
	repo string
}

func (c *ctrEnv) run(timeout time.Duration, name string, args ...string) string {
	c.t.Helper()
	label := filepath.Base(name)
	if len(args) > 0 && !strings.HasPrefix(args[0], "/") {
		label += " " + args[0]
	}
	defer waiting(c.t, waitTool, label)()
	out, err := runIn(c.env, c.repo, timeout, name, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// runIn runs a command in dir with env, bounded by timeout.
func runIn(env []string, dir string, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// ctrImages are the images the container tests use, built once per run of
// the package: the fleetroll image and the demo service at v1, v2 and v3.
type ctrImages struct {
	version   string // stamped into the fleetroll image
	fleetroll string // REGISTRY/fleetroll/fleetroll:VERSION
	demo      string // REGISTRY/demo/my-service (tags v1, v2, v3)
}

// The images come in two steps: the builder and the demo's (all that
// TestReleases needs), then fleetroll's.
var (
	demoImagesOnce, fleetrollImageOnce sync.Once
	images                             = newImages(fmt.Sprintf("e2e-%d", time.Now().Unix()))
	demoImagesErr, fleetrollImageErr   error
)

func newImages(version string) ctrImages {
	return ctrImages{version: version, demo: regAddr + "/demo/my-service", fleetroll: regAddr + "/fleetroll/fleetroll:" + version}
}

// ctrEnvironment is the environment podman runs in for the tests: the
// project's containers.conf (runc, lowered ulimits).
func ctrEnvironment() []string {
	return append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(repo, "contrib", "container", "containers.conf"))
}

// gocache is the Go build cache the image builds share (a volume), so that
// the standard library is compiled once for all of them.
var gocache = filepath.Join(os.TempDir(), "fleetroll-e2e-gocache")

// podmanBuild is a podman build command with the shared cache.
func podmanBuild(args ...string) []string {
	return append([]string{"podman", "build", "-q", "--volume", gocache + ":/tmp/gocache"}, args...)
}

// buildSteps runs the build commands in order.
func buildSteps(env []string, steps ...[]string) error {
	if err := os.MkdirAll(gocache, 0o755); err != nil {
		return err
	}
	for _, st := range steps {
		if _, err := runIn(env, repo, 15*time.Minute, st[0], st[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// buildDemoImages builds the builder and the demo's images with no registry
// but our own, once per run.
func buildDemoImages(env []string) {
	demoImagesOnce.Do(func() {
		start := time.Now()
		steps := [][]string{{"contrib/container/builder.sh", "localhost/fleetroll-builder"}}
		for _, v := range []string{"v1", "v2", "v3"} {
			steps = append(steps, podmanBuild("-f", "contrib/demo/Dockerfile", "--build-arg", "BUILDER_IMAGE=localhost/fleetroll-builder",
				"--build-arg", "VERSION="+v, "-t", images.demo+":"+v, "contrib/demo"))
		}
		demoImagesErr = buildSteps(env, steps...)
		fmt.Fprintf(os.Stderr, "e2e: the builder and the demo images built once, in %s\n", time.Since(start).Round(time.Second))
	})
}

// buildImagesOnce builds every image, the demo's first, once per run:
// TestMain starts it beside the clusters when a test needs the images, and
// those tests wait for it.
func buildImagesOnce(env []string) {
	buildDemoImages(env)
	fleetrollImageOnce.Do(func() {
		if demoImagesErr != nil {
			fleetrollImageErr = demoImagesErr
			return
		}
		start := time.Now()
		modcache, err := runIn(env, repo, time.Minute, "go", "env", "GOMODCACHE")
		if err != nil {
			fleetrollImageErr = err
			return
		}
		fleetrollImageErr = buildSteps(env, podmanBuild("--build-arg", "BUILDER_IMAGE=localhost/fleetroll-builder", "--build-arg", "GOPROXY=off",
			"--build-arg", "GOFLAGS=-mod=mod", "--build-arg", "VERSION="+images.version,
			"--volume", strings.TrimSpace(modcache)+":/go/pkg/mod:ro", "-t", images.fleetroll, "."))
		fmt.Fprintf(os.Stderr, "e2e: the fleetroll image built once, in %s\n", time.Since(start).Round(time.Second))
	})
}

// buildImages returns the images once built: the demo's, and fleetroll's
// when withFleetroll.
func buildImages(t *testing.T, withFleetroll bool) ctrImages {
	t.Helper()
	done := waiting(t, waitBuild, "container images")
	defer done()
	if withFleetroll {
		buildImagesOnce(ctrEnvironment())
	} else {
		buildDemoImages(ctrEnvironment())
	}
	if demoImagesErr != nil {
		t.Fatalf("build the demo images: %v", demoImagesErr)
	}
	if withFleetroll && fleetrollImageErr != nil {
		t.Fatalf("build the fleetroll image: %v", fleetrollImageErr)
	}
	return images
}

// removeContainers removes the test's leftover containers by name, never
// those of the demo cluster beside it.
func removeContainers(names ...string) {
	for _, n := range names {
		_ = exec.Command("podman", "rm", "-f", n).Run()
	}
}

// startRegistry runs a local registry (deletes allowed) on addr, storing
// under dir/registry, whose notifications go to fleetroll serve at listen
// with the bearer token; it stops when the test ends. It returns the
// storage directory.
func startRegistry(t *testing.T, dir, addr, listen, token string) string {
	t.Helper()
	regDir := filepath.Join(dir, "registry")
	cfg := filepath.Join(dir, "registry.yml")
	writeFile(t, cfg, fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
notifications:
  endpoints:
    - name: fleetroll
      url: http://%s/webhooks/registry
      headers:
        Authorization: [Bearer %s]
      timeout: 2s
      threshold: 3
      backoff: 1s
`, regDir, addr, listen, token), 0o644)
	reg := exec.Command("docker-registry", "serve", cfg)
	reg.Stdout, reg.Stderr = io.Discard, io.Discard
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Process.Kill(); _ = reg.Wait() })
	eventually(t, 30*time.Second, "the registry up", func() error {
		var v any
		return getJSON("http://"+addr+"/v2/", nil, &v)
	})
	return regDir
}

// launchSidekicks writes the sidekicks' drop-in for this cluster (quick
// announcements on 127.0.0.1) and launches one per port.
func launchSidekicks(t *testing.T, ports ...string) {
	t.Helper()
	dropIn(t, "my-service-sidekick@.service", map[string]string{"ETCD": clusterOf(t).EtcdURL, "ANNOUNCE_HOST": "127.0.0.1", "TTL": "4", "INTERVAL": "1"})
	var sidekicks []string
	for _, p := range ports {
		sidekicks = append(sidekicks, "my-service-sidekick@"+p+".service")
	}
	submitUnits(t, filepath.Join(repo, "units", "my-service-sidekick@.service"), false, sidekicks...)
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// dropIn writes a systemd drop-in for a unit into the cluster's runtime unit
// directory, where fleet links the units it loads.
func dropIn(t *testing.T, unit string, env map[string]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("[Service]\n")
	for k, v := range env {
		fmt.Fprintf(&b, "Environment=\"%s=%s\"\n", k, v)
	}
	file := filepath.Join(clusterOf(t).Dir, "run", "systemd", "user", unit+".d", "10-e2e.conf")
	writeFile(t, file, b.String(), 0o644)
	t.Cleanup(func() { _ = os.Remove(file) })
}

// submit submits a shipped unit file under the given names and launches
// them; at the test's end it destroys them and waits until they are
// stopped (they may write into the test's directories).
func submit(t *testing.T, file string, names ...string) {
	t.Helper()
	submitUnits(t, file, true, names...)
}

// submitUnits is submit; without wait, the units are only destroyed at the
// end (and waited for if a test follows on the cluster: destroyUnits).
func submitUnits(t *testing.T, file string, wait bool, names ...string) {
	t.Helper()
	opts, err := cluster.LoadTemplate(file)
	if err != nil {
		t.Fatal(err)
	}
	// The test cluster has one machine: fleet's Conflicts= would keep all
	// but one instance off it. Scheduling options are the cluster's business;
	// everything that runs is the shipped unit as it is.
	var kept []*schema.UnitOption
	for _, o := range opts {
		if !(o.Section == "X-Fleet" && o.Name == "Conflicts") {
			kept = append(kept, o)
		}
	}
	c := clusterOf(t)
	api, err := c.API()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := api.CreateUnit(&schema.Unit{Name: n, Options: kept, DesiredState: "launched"}); err != nil {
			t.Fatalf("create %s: %v", n, err)
		}
	}
	// Gone before the test's directories are removed: a unit still
	// running writes into them (confd's upstreams).
	t.Cleanup(func() {
		if wait {
			destroyAndWait(t, c, names...)
		} else {
			destroyUnits(t, c, names...)
		}
	})
}

func getJSON(url string, headers map[string]string, v any) error {
	req, _ := http.NewRequest("GET", url, nil)
	for k, val := range headers {
		req.Header.Set(k, val)
	}
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// eventually polls cond every interval until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	defer waiting(t, waitPoll, what)()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(500 * time.Millisecond) // polling a system with no change notification
	}
}

type demoAnswer struct {
	Version string `json:"version"`
	Port    int    `json:"port"`
	Host    string `json:"host"`
}

// proxyView asks the proxy n times and returns the version seen per port.
func proxyView(n int) (map[int]string, error) {
	seen := map[int]string{}
	for range n {
		var a demoAnswer
		if err := getJSON("http://"+proxyListen+"/", nil, &a); err != nil {
			return nil, err
		}
		seen[a.Port] = a.Version
	}
	return seen, nil
}

// proxyServes checks that the proxy reaches all three instances, each
// serving version.
func proxyServes(version string) func() error {
	return func() error {
		seen, err := proxyView(30)
		if err != nil {
			return err
		}
		if len(seen) != 3 {
			return fmt.Errorf("proxy reaches %v", seen)
		}
		for p, v := range seen {
			if v != version {
				return fmt.Errorf("port %d serves %s", p, v)
			}
		}
		return nil
	}
}

func TestContainersRollOnRegistryPush(t *testing.T) {
	clu := needCluster(t)
	claimUnits(t, "my-service", ctrPorts...)
	cluster.NeedTools(t, "podman", "runc", "docker-registry", "nginx", "busybox", "ldd")
	tmp := t.TempDir()
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	regConf := filepath.Join(tmp, "registries.conf")
	writeFile(t, regConf, "[[registry]]\nlocation = \""+regAddr+"\"\ninsecure = true\n", 0o644)
	containersConf := filepath.Join(repo, "contrib", "container", "containers.conf")
	c := &ctrEnv{t: t, tmp: tmp, repo: repo,
		env: append(os.Environ(), "CONTAINERS_CONF="+containersConf, "CONTAINERS_REGISTRIES_CONF="+regConf)}
	im := buildImages(t, true)
	version, fleetrollImage, demoImage := im.version, im.fleetroll, im.demo

	// The image: the stamped version, a non-root user, and only what it needs.
	if out := c.run(time.Minute, "podman", "run", "--rm", fleetrollImage, "version"); !strings.HasPrefix(strings.TrimSpace(out), "fleetroll "+version+" (revision ") {
		t.Fatalf("fleetroll version in the image: %q", out)
	}
	if user := strings.TrimSpace(c.run(time.Minute, "podman", "image", "inspect", "--format", "{{.Config.User}}", fleetrollImage)); user != "65532:65532" {
		t.Fatalf("image user %q", user)
	}
	ctr := strings.TrimSpace(c.run(time.Minute, "podman", "create", fleetrollImage))
	defer c.run(time.Minute, "podman", "rm", ctr)
	tarFile := filepath.Join(tmp, "rootfs.tar")
	c.run(time.Minute, "podman", "export", "-o", tarFile, ctr)
	var files []string
	for _, f := range strings.Fields(c.run(time.Minute, "tar", "-tf", tarFile)) {
		if !strings.HasSuffix(f, "/") {
			files = append(files, f)
		}
	}
	want := map[string]bool{"etc/group": true, "etc/passwd": true, "etc/ssl/certs/ca-certificates.crt": true, "usr/local/bin/fleetroll": true}
	for _, f := range files {
		if !want[strings.TrimPrefix(f, "/")] && !strings.HasPrefix(f, "etc/hosts") && !strings.HasPrefix(f, "etc/resolv.conf") && !strings.HasPrefix(f, "run/") {
			t.Errorf("unexpected file in the image: %s", f)
		}
	}

	// A registry that notifies fleetroll. Until fleetroll listens, a sink
	// takes the notifications of the first pushes (the registry retries
	// until someone answers).
	startRegistry(t, tmp, regAddr, hookListen, ctrRegToken)
	sinkLn, err := net.Listen("tcp", hookListen)
	if err != nil {
		t.Fatal(err)
	}
	sinkGot := make(chan struct{}, 100)
	sink := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		sinkGot <- struct{}{}
	})}
	go func() { _ = sink.Serve(sinkLn) }()
	c.run(5*time.Minute, "podman", "push", "--tls-verify=false", fleetrollImage)
	c.run(5*time.Minute, "podman", "push", "--tls-verify=false", demoImage+":v1", demoImage+":latest")
	// The proxy's image, made of the host's nginx, pulled by its unit.
	proxyImage := regAddr + "/e2e/nginx:host"
	pimg, err := proxyimage.Build(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pref, err := name.NewTag(proxyImage)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(pref, pimg); err != nil {
		t.Fatal(err)
	}
	notified := waiting(t, waitPoll, "the registry's first notification")
	select {
	case <-sinkGot:
	case <-time.After(time.Minute):
		t.Fatal("the registry sent no notification")
	}
	notified()
	eventually(t, 30*time.Second, "registry queue drained", func() error {
		// Drain until a second goes by without a notification.
		select {
		case <-sinkGot:
			return fmt.Errorf("still sending")
		case <-time.After(time.Second):
			return nil
		}
	})
	_ = sink.Close()

	// fleetroll's configuration and token on "the host".
	etc := filepath.Join(tmp, "etc-fleetroll")
	writeFile(t, filepath.Join(etc, "config.yaml"), `services:
  - name: my-service
    ports: `+strings.Join(ctrPorts, ",")+`
    grace: 1s
    min_healthy_time: 0s
    health: {path: /healthz, successes: 1, interval: 200ms}   # "running" is systemd's; answering is the gate's
    registry:
      - repository: demo/my-service
        tags: [latest]
`, 0o644)
	// One secret for the API, one for the registry's notifications.
	for file, secret := range map[string]string{"token": ctrToken, "registry-token": ctrRegToken} {
		writeFile(t, filepath.Join(etc, file), secret+"\n", 0o400)
		if err := os.Chown(filepath.Join(etc, file), 65532, 65532); err != nil {
			t.Fatal(err)
		}
	}

	// The proxy directory, as an operator installs it.
	proxyDir := filepath.Join(tmp, "my-service-proxy")
	c.run(time.Minute, "cp", "-r", filepath.Join(repo, "contrib", "proxy", "my-service-proxy"), proxyDir)
	writeFile(t, filepath.Join(proxyDir, "listen.conf"), "listen "+proxyListen+";\n", 0o644)
	confd := c.run(10*time.Minute, "contrib/proxy/build-confd.sh", filepath.Join(tmp, "confd"))

	// Drop-ins: the site settings, one Environment= line each.
	engine := map[string]string{"DOCKER": "/usr/bin/podman", "CONTAINERS_CONF": containersConf, "CONTAINERS_REGISTRIES_CONF": regConf}
	with := func(m map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range engine {
			out[k] = v
		}
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	// No release in this cluster's etcd: the instances run IMAGE, the tag.
	dropIn(t, "my-service@.service", with(map[string]string{"IMAGE": demoImage + ":latest", "STOP_TIMEOUT": "5", "ETCD": clu.EtcdURL}))
	dropIn(t, "my-service-sidekick@.service", map[string]string{"ETCD": clu.EtcdURL, "ANNOUNCE_HOST": "127.0.0.1", "TTL": "4", "INTERVAL": "1"})
	dropIn(t, "fleetroll@.service", with(map[string]string{"IMAGE": fleetrollImage, "ETC": etc, "ETCD_ENDPOINTS": clu.EtcdURL,
		"FLEET_SOCKET": filepath.Join(clu.Dir, "fleet.sock"), "LISTEN": hookListen, "STOP_TIMEOUT": "60", "SERVE_ARGS": "--quiet-period 1s",
		"SECRET_ARGS": "--registry-token-file /etc/fleetroll/registry-token"}))
	dropIn(t, "my-service-proxy.service", with(map[string]string{"IMAGE": proxyImage, "NAME": proxyCtr, "PROXY_DIR": proxyDir,
		"CONFD": strings.TrimSpace(confd), "ETCD": clu.EtcdURL, "STOP_TIMEOUT": "5"}))

	// Submit the shipped units.
	var instances, sidekicks []string
	for _, p := range ctrPorts {
		instances = append(instances, "my-service@"+p+".service")
		sidekicks = append(sidekicks, "my-service-sidekick@"+p+".service")
	}
	submit(t, filepath.Join(repo, "units", "my-service@.service"), instances...)
	submit(t, filepath.Join(repo, "units", "my-service-sidekick@.service"), sidekicks...)
	submit(t, filepath.Join(repo, "contrib", "proxy", "units", "my-service-proxy.service"), "my-service-proxy.service")
	submit(t, filepath.Join(repo, "units", "fleetroll@.service"), "fleetroll@1.service")
	t.Cleanup(func() {
		// Units first (their ExecStop stops the containers), then leftovers.
		for _, n := range append(instances, "fleetroll@1.service") {
			clu.Destroy(n)
		}
		// The proxy's container removed under its unit would restart it
		// (Restart=on-failure): the unit goes first.
		stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := clu.DestroyAndWait(stopCtx, "my-service-proxy.service"); err != nil {
			t.Log(err)
		}
		names := []string{"fleetroll-1", proxyCtr}
		for _, p := range ctrPorts {
			names = append(names, "my-service-"+p)
		}
		removeContainers(names...)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	launched := waiting(t, waitFleet, "the shipped units running")
	for _, n := range append(append(append([]string{}, instances...), sidekicks...), "my-service-proxy.service", "fleetroll@1.service") {
		if err := clu.WaitRunning(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	launched()
	eventually(t, 2*time.Minute, "fleetroll answering in its container", func() error {
		var h map[string]any
		return getJSON("http://"+hookListen+"/healthz", nil, &h)
	})
	eventually(t, 2*time.Minute, "the proxy routing to all three v1 instances", proxyServes("v1"))
	before := systemd(t, instances...)

	// Push version 2: the registry notifies fleetroll, which rolls.
	c.run(5*time.Minute, "podman", "push", "--tls-verify=false", demoImage+":v2", demoImage+":latest")
	auth := map[string]string{"Authorization": "Bearer " + ctrToken}
	var done map[string]any
	eventually(t, 5*time.Minute, "a rollout triggered by the registry to succeed", func() error {
		var list struct {
			Rollouts []map[string]any `json:"rollouts"`
		}
		if err := getJSON("http://"+hookListen+"/rollouts", auth, &list); err != nil {
			return err
		}
		for _, r := range list.Rollouts {
			trig, _ := r["trigger"].(map[string]any)
			if trig["source"] == "registry" && r["status"] == "succeeded" {
				done = r
				return nil
			}
			if r["status"] == "failed" {
				t.Fatalf("rollout failed: %v", r)
			}
		}
		return fmt.Errorf("rollouts: %v", list.Rollouts)
	})
	t.Logf("rollout %v", done["id"])
	after := systemd(t, instances...)
	for i, n := range instances {
		if !after[i].Up() || after[i].Started == before[i].Started {
			t.Errorf("%s not restarted: %+v -> %+v", n, before[i], after[i])
		}
		var a demoAnswer
		if err := getJSON("http://127.0.0.1:"+ctrPorts[i]+"/", nil, &a); err != nil || a.Version != "v2" {
			t.Errorf("%s serves %+v (%v), want v2", n, a, err)
		}
	}
	eventually(t, time.Minute, "the proxy routing to all three v2 instances", proxyServes("v2"))
}

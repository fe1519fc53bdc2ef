package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	fr "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	client "go.etcd.io/etcd/client/v2"
)

// Registry polling (issue 23): a push whose notification is lost (the
// registry has none configured) is deployed by polling within one
// interval; with two receivers the registry sees one poller, and at most
// one HEAD of the tag per interval while it is unchanged. The registry is
// Debian's docker-registry behind a counting proxy that tells the
// receivers apart by the process owning each connection.
func TestRegistryPollDeploysALostPush(t *testing.T) {
	c := needCluster(t)
	cluster.NeedTools(t, "docker-registry")
	const (
		service  = "e2e-poll"
		proxy    = "127.0.0.1:19451"
		regAddr  = "127.0.0.1:19452"
		interval = 3 * time.Second
	)
	claim(t, "port 19451")
	claim(t, "port 19452")
	launchDemo(t, service, "19453")
	tmp := t.TempDir()

	// The registry, with no notifications: every push's webhook is lost.
	cfg := filepath.Join(tmp, "registry.yml")
	writeFile(t, cfg, fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n",
		filepath.Join(tmp, "registry"), regAddr), 0o644)
	reg := exec.Command("docker-registry", "serve", cfg)
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Process.Kill(); _ = reg.Wait() })
	eventually(t, 30*time.Second, "the registry up", func() error {
		var v any
		return getJSON("http://"+regAddr+"/v2/", nil, &v)
	})
	push := func() string {
		t.Helper()
		img, err := random.Image(256, 1)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.NewTag(regAddr + "/e2e/poll:latest")
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		return d.String()
	}
	d1 := push()

	// The counting proxy: the receivers reach the registry through it.
	type head struct {
		at    time.Time
		pid   int
		etag  bool // sent If-None-Match
		inTag bool // a HEAD of the tag (not of a digest)
	}
	var mu sync.Mutex
	var heads []head
	target, _ := url.Parse("http://" + regAddr)
	rp := httputil.NewSingleHostReverseProxy(target)
	ln, err := net.Listen("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	psrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && strings.HasPrefix(r.URL.Path, "/v2/e2e/poll/manifests/") {
			_, port, _ := net.SplitHostPort(r.RemoteAddr)
			p, _ := strconv.Atoi(port)
			mu.Lock()
			heads = append(heads, head{at: time.Now(), pid: connOwner(p, 19451), etag: r.Header.Get("If-None-Match") != "",
				inTag: strings.HasSuffix(r.URL.Path, "/latest")})
			mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = psrv.Serve(ln) }()
	t.Cleanup(func() { _ = psrv.Close() })

	// The current release: d1, through the proxy's address (the image the
	// receivers know).
	image := proxy + "/e2e/poll"
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{c.EtcdURL}})
	if err != nil {
		t.Fatal(err)
	}
	store := coord.ReleaseStore{KAPI: kapi}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = kapi.Delete(ctx, coord.ReleasesPrefix+"/"+service, &client.DeleteOptions{Recursive: true})
	if err := store.Set(ctx, service, fr.Release{Image: image + "@" + d1, Tag: "latest"}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = kapi.Delete(context.Background(), coord.ReleasesPrefix+"/"+service, &client.DeleteOptions{Recursive: true})
	})

	conf := filepath.Join(tmp, "config.yaml")
	writeFile(t, conf, `services:
  - name: `+service+`
    ports: "19453"
    grace: 0s
    min_healthy_time: 0s
    image: `+image+`
    pre_pull: false
    poll: {interval: `+interval.String()+`, tag: latest}
`, 0o644)
	args := append(secretArgs(t), "--config", conf, "--etcd-endpoints", c.EtcdURL, "--lock-ttl", "5s", "--quiet-period", "0s",
		"--poll-interval", "200ms")
	baseA, cmdA := startServeCmd(t, args...)
	_, cmdB := startServeCmd(t, args...)

	// Unchanged: a few intervals of HEADs.
	time.Sleep(2*interval + interval/2) // observed time, not synchronisation
	d2 := push()
	pushed := time.Now() // the tag moved as the push returned
	var rel *fr.Release
	eventually(t, time.Minute, "the pushed digest deployed", func() error {
		rel, err = store.Current(context.Background(), service)
		if err != nil || rel == nil || rel.Digest() != d2 {
			return fmt.Errorf("current release %v (%v), want %s", rel, err, d2)
		}
		// The store writes the current release, then its history entry
		// (trigger and rollout): a read between the two sees the image
		// alone.
		if rel.Rollout == "" {
			return fmt.Errorf("release %s without its history entry yet", rel.Image)
		}
		return nil
	})
	if rel.Trigger.Source != "poll" {
		t.Errorf("the release's trigger: %+v, want source poll", rel.Trigger)
	}
	// The poll saw the push within one interval: the first HEAD of the
	// tag after the push came no later than that. Queueing it (the digest
	// checked again, the queue written in etcd) follows, a few seconds at
	// most on a machine busy with the suite's other lanes.
	mu.Lock()
	var found time.Time
	for _, h := range heads {
		if h.inTag && !h.at.Before(pushed) {
			found = h.at
			break
		}
	}
	mu.Unlock()
	if found.IsZero() || found.Sub(pushed) > interval+300*time.Millisecond {
		t.Errorf("the first HEAD of the tag after the push came %s after it: want within the %s interval", found.Sub(pushed), interval)
	}
	if lag := rel.Trigger.Received.Sub(pushed); lag > interval+3*time.Second {
		t.Errorf("the push was queued %s after it was pushed: want within the %s interval and the queue's few seconds", lag, interval)
	}
	var rec fr.Report
	eventually(t, time.Minute, "the rollout recorded as succeeded", func() error {
		if err := getJSON(baseA+"/rollouts/"+rel.Rollout, map[string]string{"Authorization": "Bearer " + serveToken}, &rec); err != nil {
			return err
		}
		if rec.Status != fr.StatusSucceeded {
			return fmt.Errorf("rollout %s is %s", rec.ID, rec.Status)
		}
		return nil
	})
	deployed := time.Now()
	time.Sleep(2 * interval) // unchanged again: observed, not synchronisation

	mu.Lock()
	defer mu.Unlock()
	seen := map[int]int{}
	var last time.Time
	for _, h := range heads {
		seen[h.pid]++
		unchanged := h.at.Before(pushed) || h.at.After(deployed)
		if !h.inTag || !unchanged {
			continue
		}
		if !last.IsZero() && h.at.Sub(last) < interval-300*time.Millisecond {
			t.Errorf("two HEADs of the unchanged tag %s apart: want one per %s interval", h.at.Sub(last), interval)
		}
		last = h.at
	}
	if len(seen) != 1 || (seen[cmdA.Process.Pid] == 0 && seen[cmdB.Process.Pid] == 0) {
		t.Errorf("HEADs by process (0: unknown): %v; want one receiver's (pids %d, %d)", seen, cmdA.Process.Pid, cmdB.Process.Pid)
	}
	if len(heads) < 4 {
		t.Errorf("%d HEADs in all: the poller did not poll every interval", len(heads))
	}
}

// connOwner is the process holding the TCP connection from local port
// port to the proxy's port (the kernel's socket table and the processes'
// descriptors); 0 when none is found.
func connOwner(port, proxyPort int) int {
	want := fmt.Sprintf(":%04X", port)
	peer := fmt.Sprintf(":%04X", proxyPort)
	var inode string
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(l)
			if len(fs) > 9 && strings.HasSuffix(fs[1], want) && strings.HasSuffix(fs[2], peer) {
				inode = fs[9]
			}
		}
	}
	if inode == "" {
		return 0
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l == "socket:["+inode+"]" {
				return pid
			}
		}
	}
	return 0
}

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	fr "github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	client "go.etcd.io/etcd/client/v2"
)

// Releases on the real cluster (issue 11): the shipped instance unit with
// podman and a local registry; fleetroll deploy, and fleetroll serve fed by
// the registry's notifications. The service is rel-service: the shipped
// unit under another name, as an operator runs it for theirs (its NAME and
// RELEASE_KEY set in a drop-in), so that the tests of my-service run beside.
const (
	relRegAddr = "127.0.0.1:15001"
	relListen  = "127.0.0.1:18091"
	relToken   = "e2e-release-api-token-0123456789"
	relRegTok  = "e2e-release-registry-token-01234"
)

var relPorts = []string{"19061", "19062", "19063"}

const relService = "rel-service"

// running returns the image each instance's container (NAME-PORT) runs
// (podman inspect): the reference it was started with, then the repository
// digests of the image it runs.
func running(c *ctrEnv, name string, ports []string) map[string]string {
	out := map[string]string{}
	for _, p := range ports {
		s, err := runIn(c.env, c.repo, time.Minute, "podman", "inspect", "--format", "{{.ImageName}} {{.Image}}", name+"-"+p)
		if err != nil {
			out[p] = "none: " + err.Error()
			continue
		}
		ref, id, _ := strings.Cut(strings.TrimSpace(s), " ")
		digests, err := runIn(c.env, c.repo, time.Minute, "podman", "image", "inspect", "--format", "{{range .RepoDigests}}{{.}} {{end}}", id)
		if err != nil {
			digests = err.Error()
		}
		out[p] = ref + " " + strings.TrimSpace(digests)
	}
	return out
}

// containers is running once every instance's container exists: systemd
// reports a unit running as soon as podman run is forked, a moment before
// the container is there.
func containers(t *testing.T, c *ctrEnv, name string, ports []string) map[string]string {
	t.Helper()
	var out map[string]string
	eventually(t, time.Minute, "every instance's container", func() error {
		out = running(c, name, ports)
		for p, got := range out {
			if strings.HasPrefix(got, "none: ") {
				return fmt.Errorf("instance %s: %s", p, got)
			}
		}
		return nil
	})
	return out
}

// versions samples the instances' answers and records every version seen.
type versions struct {
	mu   sync.Mutex
	seen map[string]bool
	stop chan struct{}
	done chan struct{}
}

func watchVersions(ports []string) *versions {
	v := &versions{seen: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(v.done)
		for {
			for _, p := range ports {
				var a demoAnswer
				if getJSON("http://127.0.0.1:"+p+"/", nil, &a) == nil {
					v.mu.Lock()
					v.seen[a.Version] = true
					v.mu.Unlock()
				}
			}
			select {
			case <-v.stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return v
}

func (v *versions) Stop() map[string]bool {
	close(v.stop)
	<-v.done
	return v.seen
}

func TestReleases(t *testing.T) {
	clu := needCluster(t)
	claimUnits(t, relService, relPorts...)
	cluster.NeedTools(t, "podman", "runc", "docker-registry", "curl")
	tmp := t.TempDir()
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	regConf := filepath.Join(tmp, "registries.conf")
	writeFile(t, regConf, "[[registry]]\nlocation = \""+regAddr+"\"\ninsecure = true\n\n[[registry]]\nlocation = \""+relRegAddr+"\"\ninsecure = true\n", 0o644)
	containersConf := filepath.Join(repo, "contrib", "container", "containers.conf")
	c := &ctrEnv{t: t, tmp: tmp, repo: repo,
		env: append(os.Environ(), "CONTAINERS_CONF="+containersConf, "CONTAINERS_REGISTRIES_CONF="+regConf)}
	im := buildImages(t, false)
	image := relRegAddr + "/demo/my-service"

	// fleetroll serve, then the registry that notifies it.
	etc := filepath.Join(tmp, "etc")
	writeFile(t, filepath.Join(etc, "token"), relToken+"\n", 0o600)
	writeFile(t, filepath.Join(etc, "registry-token"), relRegTok+"\n", 0o600)
	writeFile(t, filepath.Join(etc, "config.yaml"), `services:
  - name: `+relService+`
    ports: `+strings.Join(relPorts, ",")+`
    grace: 2s
    min_healthy_time: 0s
    image: `+image+`
    registry:
      - repository: demo/my-service
        tags: [v2, v3]
`, 0o644)
	serve, lines := startFleetroll(t, "serve", "--config", filepath.Join(etc, "config.yaml"), "--listen", relListen,
		"--token-file", filepath.Join(etc, "token"), "--registry-token-file", filepath.Join(etc, "registry-token"),
		"--etcd-endpoints", clu.EtcdURL, "--quiet-period", "1s", "--poll-interval", "200ms", "--log-level", "debug")
	var serveLog strings.Builder
	var logMu sync.Mutex
	go func() {
		for l := range lines {
			logMu.Lock()
			serveLog.WriteString(l + "\n")
			logMu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = serve.Process.Signal(os.Interrupt)
		_ = serve.Wait()
		if t.Failed() {
			logMu.Lock()
			t.Logf("serve's log:\n%s", serveLog.String())
			logMu.Unlock()
		}
	})
	eventually(t, time.Minute, "serve answering", func() error {
		var h map[string]any
		return getJSON("http://"+relListen+"/healthz", nil, &h)
	})
	regDir := startRegistry(t, tmp, relRegAddr, relListen, relRegTok)
	push := func(tag string) string {
		t.Helper()
		c.run(5*time.Minute, "podman", "push", "--tls-verify=false", im.demo+":"+tag, "docker://"+image+":"+tag)
		ref, err := name.NewTag(image + ":" + tag)
		if err != nil {
			t.Fatal(err)
		}
		d, err := remote.Head(ref)
		if err != nil {
			t.Fatal(err)
		}
		return d.Digest.String()
	}
	digest := map[string]string{"v1": push("v1")}

	// The shipped instance unit, with site settings in drop-ins; the
	// pre-pull units take theirs from fleetroll-pull@.service.d.
	engine := map[string]string{"DOCKER": "/usr/bin/podman", "CONTAINERS_CONF": containersConf, "CONTAINERS_REGISTRIES_CONF": regConf, "ETCD": clu.EtcdURL}
	inst := map[string]string{"IMAGE": image + ":v1", "STOP_TIMEOUT": "5", "RUNDIR": filepath.Join(tmp, "run"),
		"NAME": relService, "RELEASE_KEY": "/fleetroll/releases/" + relService + "/current"}
	for k, v := range engine {
		inst[k] = v
	}
	dropIn(t, relService+"@.service", inst)
	dropIn(t, "fleetroll-pull@.service", engine)
	var instances []string
	for _, p := range relPorts {
		instances = append(instances, relService+"@"+p+".service")
	}
	submit(t, filepath.Join(repo, "units", "my-service@.service"), instances...)
	t.Cleanup(func() {
		clu.Destroy(instances...)
		var names []string
		for _, p := range relPorts {
			names = append(names, relService+"-"+p)
		}
		removeContainers(names...)
		_, _ = etcdKAPI(t).Delete(context.Background(), "/fleetroll/releases/"+relService, &client.DeleteOptions{Recursive: true})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	launched := waiting(t, waitFleet, "the shipped units running")
	for _, n := range instances {
		if err := clu.WaitRunning(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	launched()
	// No release yet: each runs IMAGE, the tag.
	for p, got := range containers(t, c, relService, relPorts) {
		if !strings.HasPrefix(got, image+":v1 ") {
			t.Fatalf("instance %s runs %q before any release, want its IMAGE", p, got)
		}
	}
	onRelease := func(tag string) {
		t.Helper()
		want := image + "@" + digest[tag]
		for p, got := range containers(t, c, relService, relPorts) {
			// Started with the pinned reference, and the image it runs
			// carries that digest.
			if !strings.HasPrefix(got, want+" ") || !strings.Contains(strings.TrimPrefix(got, want+" "), want) {
				t.Errorf("instance %s runs %q, want %s", p, got, want)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	cli := func(want int, args ...string) (fr.Report, string) {
		t.Helper()
		args = append(args, "--ports", strings.Join(relPorts, ","), "--etcd-endpoints", clu.EtcdURL, "--grace", "1s", "--min-healthy-time", "0s", "-o", "json")
		code, out := fleetroll(t, args...)
		if code != want {
			t.Fatalf("fleetroll %v: exit %d, want %d\n%s", args, code, want, out)
		}
		var rep fr.Report
		// The report on stdout, between the progress lines and the error
		// line on stderr.
		if i := strings.Index(out, "{\n"); i >= 0 {
			if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&rep); err != nil {
				t.Fatalf("no report in the output: %v\n%s", err, out)
			}
		}
		return rep, out
	}

	// 1. Deploy a pinned digest: pre-pulled, written, run. It is v1 with
	// a label of its own, an image the machine only ever pulls by digest
	// (as the pre-pull does; v1 itself ran above by its tag, IMAGE).
	firstRef := derive(t, image, "v1", "v1p", func(img v1Image) (v1Image, error) {
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		cfg := cf.Config
		cfg.Labels = map[string]string{"e2e": "first release"}
		return mutate.Config(img, cfg)
	})
	digest["v1p"] = strings.TrimPrefix(firstRef, image+"@")
	rep, out := cli(0, "deploy", relService, "--image", firstRef)
	if rep.Pull == nil || len(rep.Pull.Machines) != 1 || rep.Pull.Machines[0].Error != "" || rep.Release == nil || rep.Release.From != nil {
		t.Fatalf("first deploy: %s", out)
	}
	onRelease("v1p")

	// 2. A push mid-roll: v2 rolls (serve, from the registry's
	// notification), v3 is pushed while it does; the follow-up rollout
	// moves every instance to v3, and no instance ever ran another image.
	seen := watchVersions(relPorts)
	auth := map[string]string{"Authorization": "Bearer " + relToken}
	list := func() []fr.Report {
		var l struct {
			Rollouts []fr.Report `json:"rollouts"`
		}
		_ = getJSON("http://"+relListen+"/rollouts", auth, &l)
		return l.Rollouts
	}
	digest["v2"] = push("v2")
	eventually(t, 2*time.Minute, "the v2 rollout restarting its first instance", func() error {
		for _, r := range list() {
			if r.Trigger.Tag == "v2" && r.Status == fr.StatusRunning && r.Restarted() >= 1 {
				return nil
			}
			if r.Trigger.Tag == "v2" && r.Status.Final() {
				return fmt.Errorf("the v2 rollout ended before v3 was pushed: %+v", r)
			}
		}
		return fmt.Errorf("rollouts %+v", list())
	})
	digest["v3"] = push("v3")
	byTag := map[string]fr.Report{}
	eventually(t, 5*time.Minute, "the v2 and v3 rollouts to succeed", func() error {
		for _, r := range list() {
			if r.Status == fr.StatusFailed {
				t.Fatalf("rollout failed: %+v", r)
			}
			if r.Status == fr.StatusSucceeded {
				byTag[r.Trigger.Tag] = r
			}
		}
		if byTag["v2"].ID == "" || byTag["v3"].ID == "" {
			return fmt.Errorf("succeeded so far: %v", byTag)
		}
		return nil
	})
	onRelease("v3")
	for tag, r := range byTag {
		for _, u := range r.Units {
			if u.ImageDigest != digest[tag] {
				t.Errorf("rollout %s (%s): %s started with %q, want %s", r.ID, tag, u.Unit, u.ImageDigest, digest[tag])
			}
		}
	}
	for v := range seen.Stop() {
		if v != "v1" && v != "v2" && v != "v3" {
			t.Errorf("an instance answered as %q", v)
		}
	}

	// 2b. Pruning (issue 23): after three releases, the machine holds the
	// current and the previous image of the service, not the first; the
	// v3 rollout's record says it removed it. IMAGE's tag, not a release,
	// is untouched.
	var v3 fr.Report
	eventually(t, time.Minute, "the v3 rollout's record with its prune", func() error {
		if err := getJSON("http://"+relListen+"/rollouts/"+byTag["v3"].ID, auth, &v3); err != nil {
			return err
		}
		if v3.Prune == nil {
			return fmt.Errorf("no prune in %+v", v3)
		}
		return nil
	})
	first := image + "@" + digest["v1p"]
	if p := v3.Prune; len(p.Remove) != 1 || p.Remove[0] != first || len(p.Machines) != 1 || len(p.Machines[0].Removed) != 1 || p.Machines[0].Error != "" {
		t.Fatalf("v3's prune: %+v", p)
	}
	for ref, want := range map[string]bool{first: false, image + "@" + digest["v2"]: true, image + "@" + digest["v3"]: true, image + ":v1": true} {
		_, err := runIn(c.env, c.repo, time.Minute, "podman", "image", "exists", ref)
		if (err == nil) != want {
			t.Errorf("%s on the machine: %v, want it there %v", ref, err, want)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// 3. Rollback: a release whose instances fail the health gate.
	badRef := derive(t, image, "v3", "bad", func(img v1Image) (v1Image, error) {
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		cfg := cf.Config
		cfg.Entrypoint = append(append([]string{}, cfg.Entrypoint...), "-fail-health")
		return mutate.Config(img, cfg)
	})
	obs := observe(clu, instances, relPorts, 200*time.Millisecond)
	rep, out = cli(3, "deploy", relService, "--image", badRef, "--on-failure", "rollback", "--health-path", "/healthz", "--health-timeout", "8s", "--health-interval", "500ms")
	obs.Stop()
	if rep.Status != fr.StatusRolledBack || rep.Release.To.Digest() == digest["v3"] || rep.Release.From.Digest() != digest["v3"] {
		t.Fatalf("rollback report: %s", out)
	}
	if rep.Units[0].Outcome != fr.OutcomeRolledBack || rep.Units[0].ImageDigest != digest["v3"] || rep.Units[1].Outcome != fr.OutcomeUntouched {
		t.Fatalf("units: %+v", rep.Units)
	}
	onRelease("v3")
	if obs.maxDown > 1 || obs.maxHTTPDown > 1 {
		t.Fatalf("%d instances down at once (systemd), %d (HTTP)", obs.maxDown, obs.maxHTTPDown)
	}

	// 3b. A canary that falls ill during its wait: the deploy pauses after
	// the first instance, checks it when the wait ends, finds it failing
	// its health check, and rolls it back to the release before.
	illRef := derive(t, image, "v3", "ill", func(img v1Image) (v1Image, error) {
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		cfg := cf.Config
		cfg.Entrypoint = append(append([]string{}, cfg.Entrypoint...), "-fail-health-after", "10s")
		return mutate.Config(img, cfg)
	})
	// Healthy for 10 s after its start: it passes its gate even when fleet
	// reports it running late (the suite's other tests write to the same
	// fleet), and falls ill within the wait of 16 s after the gate.
	rep, out = cli(3, "deploy", relService, "--image", illRef, "--canary", "1", "--canary-wait", "16s", "--health-path", "/healthz",
		"--health-timeout", "4s", "--health-interval", "200ms", "--health-successes", "1")
	if rep.Status != fr.StatusRolledBack || rep.Canary == nil || rep.Canary.Kind != fr.DecisionAbort || rep.Canary.By != "canary wait" ||
		!strings.Contains(rep.Canary.Reason, "is not healthy") {
		t.Fatalf("ill canary: %s", out)
	}
	if rep.Units[0].Outcome != fr.OutcomeRolledBack || rep.Units[0].ImageDigest != digest["v3"] || rep.Units[1].Outcome != fr.OutcomeUntouched {
		t.Fatalf("units after the ill canary: %+v", rep.Units)
	}
	onRelease("v3")

	// 4. A broken push: a layer the registry has lost. The pull fails on
	// the machine; no instance is touched and the pull units are gone.
	var lost string
	brokenRef := derive(t, image, "v2", "broken", func(img v1Image) (v1Image, error) {
		l, err := random.Layer(1<<20, "application/vnd.docker.image.rootfs.diff.tar.gzip")
		if err != nil {
			return nil, err
		}
		d, _ := l.Digest()
		lost = d.Hex
		return mutate.AppendLayers(img, l)
	})
	if err := os.Remove(filepath.Join(regDir, "docker", "registry", "v2", "blobs", "sha256", lost[:2], lost, "data")); err != nil {
		t.Fatal(err)
	}
	before := systemd(t, instances...)
	rep, out = cli(1, "deploy", relService, "--image", brokenRef)
	if rep.Phase != fr.PhasePull || rep.Pull == nil || len(rep.Pull.Machines) != 1 || rep.Pull.Machines[0].Error == "" ||
		!strings.Contains(rep.Error, "no instance was touched") || !strings.Contains(strings.ToLower(rep.Error), "blob") {
		t.Fatalf("broken push: %s", out)
	}
	after := systemd(t, instances...)
	for i := range instances {
		if after[i].MainPID != before[i].MainPID || after[i].Started != before[i].Started {
			t.Errorf("%s was restarted by a deploy whose pull failed: %+v -> %+v", instances[i], before[i], after[i])
		}
	}
	api, err := clu.API()
	if err != nil {
		t.Fatal(err)
	}
	units, err := api.Units()
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range units {
		if strings.HasPrefix(u.Name, fr.PullPrefix) {
			t.Errorf("pull unit %s left in fleet", u.Name)
		}
	}
	onRelease("v3")
	code, st := fleetroll(t, "status", relService, "--etcd-endpoints", clu.EtcdURL)
	if code != 0 || !strings.Contains(st, "release:  "+image+"@"+digest["v3"]) || !strings.Contains(st, "previous: "+image+"@"+digest["v2"]) {
		t.Fatalf("status: %d\n%s", code, st)
	}
}

type v1Image = v1.Image

// derive reads image:from from the registry, changes it with fn, pushes the
// result as image:tag and returns image@digest.
func derive(t *testing.T, image, from, tag string, fn func(v1Image) (v1Image, error)) string {
	t.Helper()
	src, err := name.NewTag(image + ":" + from)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(src)
	if err != nil {
		t.Fatal(err)
	}
	out, err := fn(img)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := name.NewTag(image + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(dst, out); err != nil {
		t.Fatal(err)
	}
	d, err := out.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return image + "@" + d.String()
}

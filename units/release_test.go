package units

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// shellOf turns a unit's /bin/sh -c '...' command into the script systemd
// hands to sh for instance inst: %i expanded, %% and $$ unescaped.
func shellOf(t *testing.T, cmd, inst string) string {
	t.Helper()
	cmd = strings.TrimPrefix(cmd, "-")
	script, ok := strings.CutPrefix(cmd, "/bin/sh -c '")
	if !ok || !strings.HasSuffix(script, "'") {
		t.Fatalf("not a /bin/sh -c '...' command: %s", cmd)
	}
	script = strings.TrimSuffix(script, "'")
	script = strings.ReplaceAll(script, "%%", "\x00")
	script = strings.ReplaceAll(script, "%i", inst)
	script = strings.ReplaceAll(script, "\x00", "%")
	return strings.ReplaceAll(script, "$$", "$")
}

// The instance unit's contract (docs/releases.md), run with sh against a
// fake etcd and a fake docker: the release when etcd has one, IMAGE when it
// has none, the last release when etcd cannot answer; a pinned image that
// is present is not pulled again; ExecStart runs what ExecStartPre chose.
func TestServiceUnitRunsTheRelease(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	uf := load(t, "my-service@.service")
	var resolve, start string
	for _, c := range values(uf, "Service", "ExecStartPre") {
		if strings.Contains(c, "RELEASE_KEY") {
			resolve = shellOf(t, c, "8901")
		}
	}
	start = shellOf(t, one(t, uf, "Service", "ExecStart"), "8901")
	// A release is IMAGE's repository pinned by digest.
	pinned := "docker.io/demo/my-service@sha256:" + strings.Repeat("ab", 32)

	// What the fake etcd answers; set between runs of the script (the
	// lock: the race detector cannot see through the sh process).
	var mu sync.Mutex
	var code int
	var body string
	answer := func(c int, b string) { mu.Lock(); code, body = c, b; mu.Unlock() }
	etcd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/keys/fleetroll/releases/my-service/current" {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		c, b := code, body
		mu.Unlock()
		w.WriteHeader(c)
		fmt.Fprint(w, b)
	}))
	defer etcd.Close()
	dir := t.TempDir()
	// A docker that logs its calls and has the images listed in "present".
	docker := filepath.Join(dir, "docker")
	if err := os.WriteFile(docker, []byte(`#!/bin/sh
echo "$*" >>"$LOG"
case "$1 $2" in
  "image inspect") grep -qxF "$3" "$PRESENT" 2>/dev/null ;;
  "pull "*) [ "$2" != "$FAIL_PULL" ] && echo "$2" >>"$PRESENT" ;;
  "run "*) exit 0 ;;
esac
`), 0o755); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "DOCKER="+docker, "ETCD="+etcd.URL, "RELEASE_KEY=/fleetroll/releases/my-service/current",
		"RUNDIR="+filepath.Join(dir, "run"), "IMAGE=docker.io/demo/my-service:latest", "NAME=my-service", "ARGS=-port 8901",
		"LOG="+filepath.Join(dir, "log"), "PRESENT="+filepath.Join(dir, "present"), "FAIL_PULL=")
	run := func(script string) (string, error) {
		cmd := exec.Command("/bin/sh", "-c", script)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	calls := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "log"))
		_ = os.Remove(filepath.Join(dir, "log"))
		return strings.TrimSpace(string(b))
	}
	chosen := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "run", "8901.image"))
		return strings.TrimSpace(string(b))
	}
	etcdValue := func(v string) string {
		return `{"action":"get","node":{"key":"/fleetroll/releases/my-service/current","value":"` + v + `","modifiedIndex":7,"createdIndex":7}}`
	}

	// No release yet: IMAGE, pulled as today.
	answer(404, `{"errorCode":100,"message":"Key not found"}`)
	if out, err := run(resolve); err != nil || chosen() != "docker.io/demo/my-service:latest" {
		t.Fatalf("no release: %v %s, chose %q", err, out, chosen())
	}
	if got := calls(); !strings.Contains(got, "pull docker.io/demo/my-service:latest") {
		t.Fatalf("calls %q", got)
	}
	// A release: pulled once, then present: no pull.
	answer(200, etcdValue(pinned))
	for i, wantPull := range []bool{true, false} {
		if out, err := run(resolve); err != nil || chosen() != pinned {
			t.Fatalf("release (%d): %v %s, chose %q", i, err, out, chosen())
		}
		if got := calls(); strings.Contains(got, "pull ") != wantPull {
			t.Fatalf("release (%d): calls %q", i, got)
		}
	}
	if _, err := run(start); err != nil || !strings.Contains(calls(), "run --name my-service-8901 --net=host "+pinned+" -port 8901") {
		t.Fatal("ExecStart does not run the chosen image")
	}
	// etcd cannot answer: the last release, not the tag.
	answer(500, "oops")
	if out, err := run(resolve); err != nil || chosen() != pinned || !strings.Contains(out, "running the last release") {
		t.Fatalf("etcd down: %v %s, chose %q", err, out, chosen())
	}
	// A value that is not a pinned image, or etcd down on a new machine: the
	// start fails rather than run something else.
	answer(200, etcdValue("docker.io/demo/my-service:latest"))
	if out, err := run(resolve); err == nil || !strings.Contains(out, "holds no pinned image") {
		t.Fatalf("unpinned value: %v %s", err, out)
	}
	_ = os.RemoveAll(filepath.Join(dir, "run"))
	answer(500, "oops")
	if out, err := run(resolve); err == nil || !strings.Contains(out, "ran no release before") {
		t.Fatalf("etcd down, nothing before: %v %s", err, out)
	}
	// A pull that fails fails the start.
	answer(200, etcdValue(strings.Replace(pinned, "ab", "cd", 1)))
	env = append(env, "FAIL_PULL="+strings.Replace(pinned, "ab", "cd", 1))
	if out, err := run(resolve); err == nil {
		t.Fatalf("failed pull: %s", out)
	}
}

package units

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Issue 22, item 11: the instance unit runs only what a release may be:
// IMAGE's repository @sha256: and 64 hex digits, the whole value of the
// key. Anything else etcd holds (another registry or repository, a name
// starting with -, a longer digest, more words) fails the start with a
// message for the journal, and nothing is pulled or run.
func TestServiceUnitRefusesAReleaseThatIsNotItsImagePinned(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	uf := load(t, "my-service@.service")
	var resolve string
	for _, c := range values(uf, "Service", "ExecStartPre") {
		if strings.Contains(c, "RELEASE_KEY") {
			resolve = shellOf(t, c, "8901")
		}
	}
	var mu sync.Mutex
	var value string
	etcd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		v := value
		mu.Unlock()
		// As etcd answers: the value JSON-encoded (quotes and backslashes
		// escaped, no raw newline).
		_ = json.NewEncoder(w).Encode(map[string]any{"action": "get",
			"node": map[string]any{"key": "/fleetroll/releases/my-service/current", "value": v, "modifiedIndex": 7, "createdIndex": 7}})
	}))
	defer etcd.Close()
	dir := t.TempDir()
	docker := filepath.Join(dir, "docker")
	if err := os.WriteFile(docker, []byte("#!/bin/sh\necho \"$*\" >>\"$LOG\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	hex := strings.Repeat("0123456789abcdef", 4)
	run := func(image, v string) (string, string, error) {
		mu.Lock()
		value = v
		mu.Unlock()
		_ = os.Remove(filepath.Join(dir, "log"))
		_ = os.RemoveAll(filepath.Join(dir, "run"))
		cmd := exec.Command("/bin/sh", "-c", resolve)
		cmd.Env = append(os.Environ(), "DOCKER="+docker, "ETCD="+etcd.URL, "RELEASE_KEY=/fleetroll/releases/my-service/current",
			"RUNDIR="+filepath.Join(dir, "run"), "IMAGE="+image, "LOG="+filepath.Join(dir, "log"))
		out, err := cmd.CombinedOutput()
		calls, _ := os.ReadFile(filepath.Join(dir, "log"))
		return string(out), string(calls), err
	}
	for _, image := range []string{"docker.io/demo/my-service:latest", "127.0.0.1:5000/demo/my-service", "127.0.0.1:5000/demo/my-service:v1@sha256:" + hex} {
		repo := strings.TrimSuffix(strings.TrimSuffix(strings.Split(image, "@")[0], ":latest"), ":v1")
		for _, v := range []string{
			"-" + repo + "@sha256:" + hex,
			"--privileged " + repo + "@sha256:" + hex,
			"evil.example/demo/my-service@sha256:" + hex,
			"docker.io/demo/other@sha256:" + hex,
			repo + "x@sha256:" + hex,
			"x" + repo + "@sha256:" + hex,
			repo + "@sha256:" + hex + "0",
			repo + "@sha256:" + hex[:63],
			repo + "@sha256:" + strings.ToUpper(hex),
			repo + "@sha256:" + hex + " --privileged",
			repo + "@sha256:" + hex + "\n" + repo + "@sha256:" + hex,
			repo + "@sha256:" + hex + `","value":"` + repo + "@sha256:" + hex,
			repo + ":latest",
			repo + "@sha512:" + hex + hex,
			"",
		} {
			out, calls, err := run(image, v)
			if err == nil || !strings.Contains(out, "holds no pinned image of "+repo) || calls != "" {
				t.Errorf("IMAGE=%s, etcd holds %q: %v, %q, engine called %q; want a failed start, nothing pulled", image, v, err, out, calls)
			}
		}
		// IMAGE's repository pinned: run.
		want := repo + "@sha256:" + hex
		out, calls, err := run(image, want)
		chosen, _ := os.ReadFile(filepath.Join(dir, "run", "8901.image"))
		if err != nil || strings.TrimSpace(string(chosen)) != want || !strings.Contains(calls, " "+want) {
			t.Errorf("IMAGE=%s, etcd holds %s: %v %s, chose %q, engine %q", image, want, err, out, chosen, calls)
		}
	}
}

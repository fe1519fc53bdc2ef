package units

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fleetroll/fleetroll/internal/unitsh"
)

// fakeDocker is a DOCKER that prints its arguments, one a line, and fails
// a pull (the registry down).
func fakeDocker(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "docker")
	script := "#!/bin/sh\n[ \"$1\" = pull ] && { echo registry down >&2; exit 1; }\nprintf '%s\\n' \"$@\"\n"
	if err := os.WriteFile(f, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return f
}

// runLine runs the nth line of key of fleetroll@1 through /bin/sh, as
// systemd would, and returns the fake engine's arguments.
func runLine(t *testing.T, key string, n int, set map[string]string) ([]string, error) {
	t.Helper()
	u, err := unitsh.Load("fleetroll@.service")
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := u.Command(t.Context(), key, n, "1", set)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.Output()
	return strings.Split(strings.TrimSpace(string(out)), "\n"), err
}

// The shell of fleetroll@.service: etcd's certificate files are mounted at
// their own paths and given to serve only when set; the image is
// REPOSITORY:VERSION or IMAGE; without either the unit does not start; a
// pull that fails is ignored; reload sends SIGHUP.
func TestHookUnitsShell(t *testing.T) {
	docker := fakeDocker(t)
	tlsEnv := map[string]string{"DOCKER": docker, "VERSION": "v1.2.3", "ETCD_ENDPOINTS": "https://10.0.0.1:2379",
		"ETCD_CA_FILE": "/etc/ssl/etcd/ca.pem", "ETCD_CERT_FILE": "/etc/ssl/etcd/client.pem", "ETCD_KEY_FILE": "/etc/ssl/etcd/client-key.pem"}
	args, err := runLine(t, "ExecStart", 0, tlsEnv)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{
		"-v /etc/ssl/etcd/ca.pem:/etc/ssl/etcd/ca.pem:ro", "-v /etc/ssl/etcd/client.pem:/etc/ssl/etcd/client.pem:ro",
		"-v /etc/ssl/etcd/client-key.pem:/etc/ssl/etcd/client-key.pem:ro",
		"docker.io/fleetroll/fleetroll:v1.2.3 serve", "--etcd-endpoints https://10.0.0.1:2379 --lock wait",
		"--etcd-ca-file /etc/ssl/etcd/ca.pem", "--etcd-cert-file /etc/ssl/etcd/client.pem", "--etcd-key-file /etc/ssl/etcd/client-key.pem",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("ExecStart with etcd over TLS: %q lacks %q", joined, want)
		}
	}
	if i := slices.Index(args, "serve"); i < 0 || slices.Contains(args[i:], "-v") || slices.Contains(args[:i], "--etcd-ca-file") {
		t.Errorf("the mounts go to the engine, the flags to serve: %q", args)
	}

	plain, err := runLine(t, "ExecStart", 0, map[string]string{"DOCKER": docker, "IMAGE": "registry.example.com/ops/fleetroll:v1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	joined = strings.Join(plain, " ")
	if strings.Contains(joined, "--etcd-ca-file") || strings.Contains(joined, "--etcd-cert-file") || strings.Count(joined, "-v ") != 2 ||
		!strings.Contains(joined, "registry.example.com/ops/fleetroll:v1.2.3 serve") {
		t.Errorf("ExecStart without TLS, with IMAGE: %q", joined)
	}

	// ExecStartPre: the check, the leftover's removal, the pull.
	if _, err := runLine(t, "ExecStartPre", 0, map[string]string{"DOCKER": docker}); err == nil {
		t.Error("no VERSION nor IMAGE: the unit starts")
	}
	if _, err := runLine(t, "ExecStartPre", 0, map[string]string{"DOCKER": docker, "VERSION": "v1.2.3"}); err != nil {
		t.Errorf("VERSION set: %v", err)
	}
	u, _ := unitsh.Load("fleetroll@.service")
	pull := u.Lines("ExecStartPre")[2]
	if !strings.HasPrefix(pull, "-") || !strings.Contains(pull, " pull ") {
		t.Errorf("ExecStartPre %q: a pull that fails must not keep the receiver from starting", pull)
	}
	if _, err := runLine(t, "ExecStartPre", 2, map[string]string{"DOCKER": docker, "VERSION": "v1.2.3"}); err == nil {
		t.Error("the fake registry is down, yet the pull succeeded: the test proves nothing")
	}

	reload, err := runLine(t, "ExecReload", 0, map[string]string{"DOCKER": docker})
	if err != nil || strings.Join(reload, " ") != "kill --signal HUP fleetroll-1" {
		t.Errorf("ExecReload: %q, %v", reload, err)
	}
}

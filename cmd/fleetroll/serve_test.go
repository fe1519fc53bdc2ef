package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/hook"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
	"github.com/urfave/cli/v2"
)

const token = "serve-test-token-0123456789"

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServeBadInput(t *testing.T) {
	tok := writeFile(t, "token", token+"\n")
	short := writeFile(t, "short", "abc")
	badCfg := writeFile(t, "bad.yaml", "services:\n  - name: a\n    grace: soon\n")
	goodCfg := writeFile(t, "good.yaml", "services:\n  - name: a\n")
	t.Setenv("FLEETROLL_TOKEN", "")
	for _, tc := range []struct {
		name string
		args []string
		msg  string
	}{
		{"no service", []string{"serve", "--token-file", tok}, "give --config FILE or --service NAME"},
		{"no token", []string{"serve", "--service", "a"}, "a token is required"},
		{"short token", []string{"serve", "--service", "a", "--token-file", short}, "at least 16 characters"},
		{"missing token file", []string{"serve", "--service", "a", "--token-file", tok + ".nope"}, "--token-file"},
		{"both", []string{"serve", "--service", "a", "--config", goodCfg, "--token-file", tok}, "not both"},
		{"bad config", []string{"serve", "--config", badCfg, "--token-file", tok}, "services[0].grace"},
		{"ports with config", []string{"serve", "--config", goodCfg, "--ports", "1", "--token-file", tok}, "go with --service"},
		{"bad ports", []string{"serve", "--service", "a", "--ports", "x", "--token-file", tok}, "--ports"},
		{"bad repository", []string{"serve", "--service", "a", "--repository", "noslash", "--token-file", tok}, "repository"},
		{"tls half", []string{"serve", "--service", "a", "--token-file", tok, "--tls-cert", "c.pem"}, "--tls-cert and --tls-key"},
		{"bad cidr", []string{"serve", "--service", "a", "--token-file", tok, "--allow-from", "10.0.0.0/99"}, "--allow-from"},
		{"bad callback origin", []string{"serve", "--service", "a", "--token-file", tok, "--callback-allow", "https://x/path"}, "--callback-allow"},
		{"argument", []string{"serve", "extra", "--service", "a", "--token-file", tok}, "no arguments"},
		{"shared secret", []string{"serve", "--service", "a", "--token-file", tok, "--dockerhub-token-file", tok}, "the API token and the Docker Hub token are the same"},
		{"short sender secret", []string{"serve", "--service", "a", "--token-file", tok, "--github-secret-file", short}, "the GitHub secret must be at least 16"},
		{"service name of a path", []string{"serve", "--service", "../..", "--token-file", tok}, "services[0].name"},
		{"bad drain prefix", []string{"serve", "--service", "a", "--token-file", tok, "--drain", "--drain-prefix", "services"}, "drain.prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCLI(t, tc.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2\n%s\n%s", code, out, errs)
			}
			lines := strings.Split(strings.TrimSpace(errs), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tc.msg) {
				t.Fatalf("stderr = %q, want one line with %q", errs, tc.msg)
			}
			if strings.Contains(errs, token) {
				t.Fatal("the token was printed")
			}
		})
	}
}

func TestServeTokenFromEnvironment(t *testing.T) {
	t.Setenv("FLEETROLL_TOKEN", token)
	app := newApp(&bytes.Buffer{}, &bytes.Buffer{})
	var got *serveOptions
	for _, c := range app.Commands {
		if c.Name == "serve" {
			c.Action = func(c *cli.Context) error {
				var err error
				got, err = serveOptionsFrom(c)
				return err
			}
		}
	}
	if err := app.Run([]string{"fleetroll", "serve", "--service", "a", "--repository", "demo/a", "--tag", "v*"}); err != nil {
		t.Fatal(err)
	}
	if got.hook.Secrets.API != token || got.config.Services[0].DockerHub[0].Tags[0] != "v*" {
		t.Fatalf("options = %+v", got.hook)
	}
}

func TestReloadKeepsTheOldConfigOnError(t *testing.T) {
	cfgFile := writeFile(t, "c.yaml", "services:\n  - name: a\n")
	cfg, err := hook.LoadConfig(cfgFile, testBase())
	if err != nil {
		t.Fatal(err)
	}
	fleet, _ := fleetroll.Connect("http://127.0.0.1:1", time.Second)
	srv, err := hook.New(hook.Options{Fleet: fleet, Config: cfg, Secrets: hook.Secrets{API: token}})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	o := &serveOptions{configFile: cfgFile, base: testBase()}

	os.WriteFile(cfgFile, []byte("services:\n  - name: a\n  - name: b\n"), 0o600)
	reload(o, srv, log)
	if n := len(srv.Config().Services); n != 2 {
		t.Fatalf("%d services after a good reload", n)
	}
	os.WriteFile(cfgFile, []byte("services:\n  - name: a\n    token: x\n"), 0o600)
	reload(o, srv, log)
	if n := len(srv.Config().Services); n != 2 {
		t.Fatalf("a bad reload replaced the config: %d services", n)
	}
	if !strings.Contains(logs.String(), "config reload failed") || !strings.Contains(logs.String(), "services[0].token") {
		t.Fatalf("logs do not say why:\n%s", logs.String())
	}
}

// SIGTERM (ctx cancelled) in the middle of a rollout: the listener closes,
// the running unit step finishes (every unit ends launched and running), the
// queued rollout is cancelled, and runServer returns nil (exit 0).
func TestServeShutdownFinishesTheUnitStep(t *testing.T) {
	ff := fakefleet.New("a@1.service", "a@2.service", "b@1.service")
	ff.Steps = 40
	fsrv := httptest.NewServer(ff)
	defer fsrv.Close()
	fleet, _ := fleetroll.Connect(fsrv.URL, 5*time.Second)
	cfg, _ := hook.ParseConfig([]byte("services: [{name: a}, {name: b}]"), testBase())
	srv, err := hook.New(hook.Options{Fleet: fleet, Config: cfg, Secrets: hook.Secrets{API: token}, MaxParallel: 1})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	addr, cancel, returned := serveInBackground(t, &serveOptions{shutdownTimeout: time.Minute}, srv, slog.New(slog.NewTextHandler(&logs, nil)))
	base := "http://" + addr
	first := postRollout(t, base, token, "a")
	second := postRollout(t, base, token, "b")
	// Wait until the first unit is being stopped.
	timeout := time.After(10 * time.Second)
	for stopping := false; !stopping; {
		changed := srv.Store().Changed()
		if r, _ := srv.Store().Get(first); len(r.Units) > 0 && r.Units[0].Phase == fleetroll.PhaseStop {
			stopping = true
			continue
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatal("the rollout did not start")
		}
	}
	cancel()
	select {
	case err := <-returned:
		if err != nil {
			t.Fatalf("runServer: %v\n%s", err, logs.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("no shutdown")
	}
	for _, name := range []string{"a@1.service", "a@2.service", "b@1.service"} {
		if u, _ := ff.Unit(name); u.Desired != "launched" || u.Active != "active" {
			t.Fatalf("%s left %s/%s", name, u.Desired, u.Active)
		}
	}
	if u, _ := ff.Unit("a@2.service"); u.Restarts != 0 {
		t.Fatal("the next unit was restarted after SIGTERM")
	}
	// It had begun: interrupted. The queued one never ran: cancelled.
	if r, _ := srv.Store().Get(first); r.Status != fleetroll.StatusInterrupted || r.Units[0].Outcome != fleetroll.OutcomeInterrupted {
		t.Fatalf("running rollout ended %s (%+v)", r.Status, r.Units)
	}
	if r, _ := srv.Store().Get(second); r.Status != fleetroll.StatusCancelled {
		t.Fatalf("queued rollout ended %s", r.Status)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Fatal("still listening after shutdown")
	}
}

// serveInBackground runs runServer on a loopback port; cancel stands for
// SIGTERM, and returned gives runServer's result.
func serveInBackground(t *testing.T, o *serveOptions, srv *hook.Server, logger *slog.Logger) (addr string, cancel context.CancelFunc, returned <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ret := make(chan error, 1)
	go func() { ret <- runServer(ctx, o, srv, ln, nil, logger) }()
	return ln.Addr().String(), cancel, ret
}

// A notification's secrets come from files in --notify-secrets-dir, or
// without it from the environment; a missing URL file is an error.
func TestNotifySecrets(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "team-a.url"), []byte("https://hooks.example.com/x\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "team-a.key"), []byte("k0123456789abcdefg\n"), 0o600)
	if s, err := notifySecrets(dir)("team-a"); err != nil || s.URL != "https://hooks.example.com/x" || s.Key != "k0123456789abcdefg" {
		t.Fatalf("from files: %+v %v", s, err)
	}
	if _, err := notifySecrets(dir)("nope"); err == nil {
		t.Fatal("a missing URL file was not an error")
	}
	t.Setenv("FLEETROLL_NOTIFY_TEAM_A_URL", "https://hooks.example.com/y")
	if s, err := notifySecrets("")("team-a"); err != nil || s.URL != "https://hooks.example.com/y" || s.Key != "" {
		t.Fatalf("from the environment: %+v %v", s, err)
	}
}

// postRollout triggers a rollout of service through serve's API and
// returns its ID (the answer must be 202).
func postRollout(t *testing.T, base, token, service string) string {
	t.Helper()
	req, _ := http.NewRequest("POST", base+"/rollouts", strings.NewReader(`{"service":"`+service+`"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ans map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&ans)
	if resp.StatusCode != 202 {
		t.Fatalf("trigger %s: %d %v", service, resp.StatusCode, ans)
	}
	return ans["id"].(string)
}

package main

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/hook"
)

// lines is a slog handler that hands each record's message and error to
// the test.
type lines chan string

func (l lines) Enabled(context.Context, slog.Level) bool { return true }
func (l lines) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l lines) WithGroup(string) slog.Handler            { return l }
func (l lines) Handle(_ context.Context, r slog.Record) error {
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			msg += ": " + a.Value.String()
		}
		return true
	})
	select {
	case l <- msg:
	default: // the test reads what it waits for; nothing else must block serve
	}
	return nil
}

// wait reads log lines until one starts with prefix.
func (l lines) wait(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-l:
			if strings.HasPrefix(m, prefix) {
				return m
			}
		case <-timeout:
			t.Fatalf("no log line %q", prefix)
		}
	}
}

// SIGHUP reads the secrets' files again: the new API token and registry
// token are accepted and the old ones refused; a reload that fails (an
// empty file) keeps the secrets in force and says why.
func TestSIGHUPReloadsTheSecrets(t *testing.T) {
	const (
		oldAPI, newAPI = "old-api-token-0123456789", "new-api-token-0123456789"
		oldReg, newReg = "old-registry-token-01234", "new-registry-token-01234"
	)
	apiFile, regFile := writeFile(t, "token", oldAPI+"\n"), writeFile(t, "registry-token", oldReg+"\n")
	o := &serveOptions{shutdownTimeout: time.Minute,
		readSecrets: func() (hook.Secrets, error) {
			return readSecrets(map[string]string{"token-file": apiFile, "registry-token-file": regFile})
		}}
	sec, err := o.readSecrets()
	if err != nil {
		t.Fatal(err)
	}
	fleet, _ := fleetroll.Connect("http://127.0.0.1:1", time.Second)
	cfg, _ := hook.ParseConfig([]byte("services: [{name: a}]"), testBase())
	srv, err := hook.New(hook.Options{Fleet: fleet, Config: cfg, Secrets: sec})
	if err != nil {
		t.Fatal(err)
	}
	logs := make(lines, 256)
	addr, cancel, returned := serveInBackground(t, o, srv, slog.New(logs))
	logs.wait(t, "listening") // logged once SIGHUP is caught
	base := "http://" + addr
	code := func(method, path, bearer string) int {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+bearer)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	check := func(when, api, reg string, refused ...string) {
		t.Helper()
		if c := code("GET", "/rollouts", api); c != 200 {
			t.Errorf("%s: the API token %s answered %d", when, api, c)
		}
		if c := code("POST", "/webhooks/registry", reg); c == 401 {
			t.Errorf("%s: the registry token %s answered 401", when, reg)
		}
		for _, r := range refused {
			if c := code("GET", "/rollouts", r); c != 401 {
				t.Errorf("%s: the API, given %s, answered %d", when, r, c)
			}
			if c := code("POST", "/webhooks/registry", r); c != 401 {
				t.Errorf("%s: the registry sender, given %s, answered %d", when, r, c)
			}
		}
	}
	// Each refusal counts toward the throttle of failed attempts (429): a few.
	check("before", oldAPI, oldReg, newAPI)

	os.WriteFile(apiFile, []byte(newAPI+"\n"), 0o600)
	os.WriteFile(regFile, []byte(newReg+"\n"), 0o600)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	logs.wait(t, "secrets reloaded")
	check("after SIGHUP", newAPI, newReg, oldAPI, oldReg)

	os.WriteFile(regFile, nil, 0o600)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if m := logs.wait(t, "secrets reload failed"); !strings.Contains(m, "--registry-token-file") || !strings.Contains(m, "is empty") {
		t.Errorf("the failed reload does not say why: %q", m)
	}
	check("after a failed reload", newAPI, newReg, oldAPI)

	cancel()
	if err := <-returned; err != nil {
		t.Fatal(err)
	}
}

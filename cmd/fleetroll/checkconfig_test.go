package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// docsConfigExample is the full configuration example of docs/serve.md.
func docsConfigExample(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "serve.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(b), "## Configuration file")
	_, rest, _ = strings.Cut(rest, "```yaml\n")
	example, _, _ := strings.Cut(rest, "```")
	return example
}

// serve --check-config validates a file and the secrets serve would read,
// without fleet or etcd (the endpoints given answer nothing), and never
// prints a secret: 0 and one line when valid, 2 and the error when not.
func TestServeCheckConfig(t *testing.T) {
	t.Setenv("FLEETROLL_TOKEN", token)
	const slackPath = "/services/T000/B000/secret-part-of-the-url"
	t.Setenv("FLEETROLL_NOTIFY_TEAM_URL", "https://hooks.slack.com"+slackPath)
	t.Setenv("FLEETROLL_NOTIFY_CI_URL", "https://ci.example.com/hook")
	t.Setenv("FLEETROLL_NOTIFY_CI_KEY", "ci-signing-key-0123456789")
	nowhere := []string{"--endpoint", "http://127.0.0.1:1", "--etcd-endpoints", "http://127.0.0.1:1"}

	docs := writeFile(t, "docs.yaml", docsConfigExample(t))
	code, out, errs := runCLI(t, append([]string{"serve", "--check-config", docs}, nowhere...)...)
	if code != 0 || !strings.Contains(out, "valid: 1 service(s)") || !strings.Contains(out, "needs etcd") || !strings.Contains(out, "poll") {
		t.Fatalf("docs/serve.md's example: exit %d\n%s%s", code, out, errs)
	}

	notify := "notifications:\n  - {name: team, kind: slack}\n  - {name: ci, kind: webhook}\nservices:\n  - name: my-service\n    notify: [team, ci]\n"
	cfg := writeFile(t, "notify.yaml", notify)
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"a webhook's origin not allowed", []string{"--check-config", cfg}, 2, "https://ci.example.com is not on --notify-allow"},
		{"allowed", []string{"--check-config", cfg, "--notify-allow", "https://hooks.slack.com", "--notify-allow", "https://ci.example.com"}, 0, "valid: 1 service(s), 2 notification(s)"},
		// Allowing the notifications on --callback-allow, as before, does
		// not allow them: the lists are apart.
		{"on the callbacks' list", []string{"--check-config", cfg, "--callback-allow", "https://ci.example.com"}, 2, "not on --notify-allow"},
		{"bad file", []string{"--check-config", writeFile(t, "bad.yaml", "services:\n  - name: a\n    grace: soon\n")}, 2, "services[0].grace"},
		{"unknown key", []string{"--check-config", writeFile(t, "key.yaml", "services:\n  - name: a\n    token: "+token+"\n")}, 2, "services[0].token"},
		{"bad settings", []string{"--check-config", writeFile(t, "bg.yaml", "services:\n  - name: a\n    strategy: blue-green\n")}, 2, "spare"},
		{"missing file", []string{"--check-config", cfg + ".nope"}, 2, "no such file"},
		{"a short secret", []string{"--check-config", docs, "--github-secret-file", writeFile(t, "short", "abc")}, 2, "GitHub secret must be at least 16"},
		{"both files", []string{"--check-config", docs, "--config", cfg}, 2, "not both"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errs := runCLI(t, append(append([]string{"serve"}, c.args...), nowhere...)...)
			if code != c.code || !strings.Contains(out+errs, c.want) {
				t.Fatalf("exit %d, want %d with %q\n%s%s", code, c.code, c.want, out, errs)
			}
			if code == 2 && len(strings.Split(strings.TrimSpace(errs), "\n")) != 1 {
				t.Errorf("not one line: %q", errs)
			}
			for _, secret := range []string{token, slackPath, "ci-signing-key-0123456789"} {
				if strings.Contains(out+errs, secret) {
					t.Errorf("a secret was printed: %s%s", out, errs)
				}
			}
		})
	}
}

// --notify-allow leaves --callback-allow's default (Docker Hub) in place.
func TestNotifyAllowKeepsDockerHubsCallbacks(t *testing.T) {
	o, _ := serveOf(t, "--service", "a", "--etcd-endpoints", "", "--notify-allow", "https://hooks.slack.com", "--notify-allow", "https://chat.example.com")
	cb := o.hook.Callbacks
	if !cb.Allowed("https://registry.hub.docker.com/u/demo/a/hook/1/") {
		t.Error("Docker Hub's callbacks were taken off by --notify-allow")
	}
	if !cb.NotifyAllowed("https://chat.example.com/x") || cb.Allowed("https://chat.example.com/x") || cb.NotifyAllowed("https://registry.hub.docker.com/x") {
		t.Error("the two allow-lists are mixed")
	}
}

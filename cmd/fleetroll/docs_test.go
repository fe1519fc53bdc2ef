package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/hook"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
	"github.com/urfave/cli/v2"
)

// The docs that name the flags, environment variables and endpoints.
var flagDocs = []string{"cli.md", "serve.md"}

// Flags the docs name that are not fleetroll's: git describe's (how a
// release is stamped) and the completion request urfave/cli answers.
var foreignFlags = []string{"always", "dirty", "tags", "generate-bash-completion"}

// Flags of the binary the docs need not name: urfave/cli's own.
var undocumentedFlags = []string{"help"}

// Environment variables read outside the flags' definitions (the secrets,
// which never come from a flag's value), each with the literal the source
// reads it by.
var envOutsideFlags = map[string]string{
	"FLEETROLL_TOKEN":           `"FLEETROLL_TOKEN"`,
	"FLEETROLL_DOCKERHUB_TOKEN": `"FLEETROLL_DOCKERHUB_TOKEN"`,
	"FLEETROLL_REGISTRY_TOKEN":  `"FLEETROLL_REGISTRY_TOKEN"`,
	"FLEETROLL_GITHUB_SECRET":   `"FLEETROLL_GITHUB_SECRET"`,
	"FLEETROLL_NOTIFY_NAME_URL": `"FLEETROLL_NOTIFY_"`, // NAME: the target's
	"FLEETROLL_NOTIFY_NAME_KEY": `"FLEETROLL_NOTIFY_"`,
}

func readDocs(t *testing.T, names ...string) string {
	t.Helper()
	var all strings.Builder
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join("..", "..", "docs", n))
		if err != nil {
			t.Fatal(err)
		}
		all.Write(b)
		all.WriteString("\n")
	}
	return all.String()
}

// binaryFlags walks the app's commands (and subcommands): every flag's
// names and environment variables, as --help shows them.
func binaryFlags(app *cli.App) (flags, env map[string][]string) {
	flags, env = map[string][]string{}, map[string][]string{}
	for _, f := range []cli.Flag{cli.VersionFlag, cli.HelpFlag} {
		for _, n := range f.Names() {
			flags[n] = append(flags[n], "fleetroll")
		}
	}
	var walk func(where string, cmds []*cli.Command)
	walk = func(where string, cmds []*cli.Command) {
		for _, c := range cmds {
			at := strings.TrimSpace(where + " " + c.Name)
			for _, f := range c.Flags {
				for _, n := range f.Names() {
					flags[n] = append(flags[n], at)
				}
				if ef, ok := f.(interface{ GetEnvVars() []string }); ok {
					for _, e := range ef.GetEnvVars() {
						env[e] = append(env[e], at)
					}
				}
			}
			walk(at, c.Subcommands)
		}
	}
	walk("", app.Commands)
	return flags, env
}

// matchesAny reports whether a name the docs give (a glob such as
// --etcd-*-file or FLEETROLL_HEALTH_*) names one of the binary's.
func matchesAny(doc string, names map[string][]string) bool {
	if _, ok := names[doc]; ok {
		return true
	}
	if !strings.Contains(doc, "*") {
		return false
	}
	for n := range names {
		if ok, _ := path.Match(doc, n); ok {
			return true
		}
	}
	return false
}

// Every flag and environment variable docs/cli.md and docs/serve.md name
// exists in the binary; every flag of the binary is named there (but
// urfave/cli's own). A flag renamed, dropped or added without its docs
// fails here (issue 25).
func TestDocsNameTheBinarysFlags(t *testing.T) {
	docs := readDocs(t, flagDocs...)
	flags, env := binaryFlags(newApp(io.Discard, io.Discard))

	docFlags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?:^|[^\w-])--([a-z][a-z0-9*-]*[a-z0-9*])`).FindAllStringSubmatch(docs, -1) {
		docFlags[m[1]] = true
	}
	for f := range docFlags {
		if !slices.Contains(foreignFlags, f) && !matchesAny(f, flags) {
			t.Errorf("the docs name --%s, which no command has", f)
		}
	}
	for f, where := range flags {
		if len(f) > 1 && !docFlags[f] && !slices.Contains(undocumentedFlags, f) {
			t.Errorf("--%s (%s) is not in docs/%s", f, strings.Join(slices.Compact(where), ", "), strings.Join(flagDocs, " or docs/"))
		}
	}

	src := readSources(t)
	for _, m := range regexp.MustCompile(`\b((?:FLEETROLL|FLEETCTL)_[A-Z0-9_*]*[A-Z0-9*])`).FindAllStringSubmatch(docs, -1) {
		e := m[1]
		if matchesAny(e, env) {
			continue
		}
		lit, ok := envOutsideFlags[e]
		switch {
		case !ok:
			t.Errorf("the docs name $%s, which no flag reads", e)
		case !strings.Contains(src, lit):
			t.Errorf("$%s: the source no longer reads %s", e, lit)
		}
	}
}

// readSources is cmd/fleetroll's Go source, its tests left out.
func readSources(t *testing.T) string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all.Write(b)
	}
	return all.String()
}

// docEndpoints are the METHOD PATH endpoints docs/serve.md names ("GET
// /rollouts[?service=NAME]" is GET /rollouts).
func docEndpoints(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, m := range regexp.MustCompile("`((?:GET|POST|PUT|PATCH|DELETE|HEAD) /[^`\\s\\[?]*)[^`]*`").FindAllStringSubmatch(readDocs(t, "serve.md"), -1) {
		if !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	if len(out) < 10 {
		t.Fatalf("only %d endpoints found in docs/serve.md: %v", len(out), out)
	}
	return out
}

// Every endpoint docs/serve.md names is routed by serve's handler (it
// answers something else than the mux's 404 for an unknown route, or its
// 405), and serve --help names it.
func TestDocsEndpointsAreRouted(t *testing.T) {
	const (
		apiToken = "docs-test-api-token-0123456789"
		hubToken = "docs-test-hub-token-0123456789"
	)
	ff := fakefleet.New(units3...)
	fsrv := httptest.NewServer(ff)
	t.Cleanup(fsrv.Close)
	fleet, err := fleetroll.Connect(fsrv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := hook.ParseConfig([]byte("services:\n  - name: my-service\n"), testBase())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := hook.New(hook.Options{Fleet: fleet, Config: cfg, Secrets: hook.Secrets{API: apiToken, DockerHub: hubToken,
		Registry: "docs-test-registry-token-0123456789", GitHub: "docs-test-github-secret-0123456789"}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	client := &http.Client{Timeout: 5 * time.Second}
	ask := func(method, p string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, hs.URL+p, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+apiToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, p, err)
		}
		defer resp.Body.Close()
		// An event stream never ends: its first bytes tell enough.
		b := make([]byte, 512)
		n, _ := io.ReadAtLeast(resp.Body, b, 1)
		return resp.StatusCode, string(b[:n])
	}
	code404, body404 := ask("GET", "/no-such-route/at-all")
	code405, body405 := ask("DELETE", "/rollouts")
	if code404 != 404 || code405 != 405 {
		t.Fatalf("the mux's answers: %d %q, %d %q", code404, body404, code405, body405)
	}

	var help bytes.Buffer
	if code := run(t.Context(), []string{"fleetroll", "serve", "--help"}, &help, io.Discard); code != 0 {
		t.Fatalf("serve --help: exit %d", code)
	}
	helpText := strings.Join(strings.Fields(help.String()), " ")
	for _, ep := range docEndpoints(t) {
		method, p, _ := strings.Cut(ep, " ")
		req := strings.NewReplacer("{id}", "0123456789ab", "{token}", hubToken).Replace(p)
		code, body := ask(method, req)
		if code == code405 || (code == code404 && body == body404) {
			t.Errorf("%s (docs/serve.md) is not routed: %d %q", ep, code, body)
		}
		if !strings.Contains(helpText, ep) {
			t.Errorf("serve --help does not name %s", ep)
		}
	}
}

// A doc's table of contents ("Contents:", before its first section) lists
// its sections (## headings), in order, with GitHub's anchors.
func TestDocsContentsListTheSections(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	nonWord := regexp.MustCompile(`[^\w\- ]`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var toc, heads []string
		inTOC, fence := false, false
		for _, l := range strings.Split(string(b), "\n") {
			switch {
			case strings.HasPrefix(l, "```"):
				fence = !fence
			case fence:
			case l == "Contents:" && heads == nil:
				inTOC = true
			case inTOC && strings.HasPrefix(l, "- ["):
				_, a, _ := strings.Cut(l, "](#")
				toc = append(toc, strings.TrimSuffix(a, ")"))
			case strings.HasPrefix(l, "## "):
				inTOC = false
				h := nonWord.ReplaceAllString(strings.ToLower(strings.TrimSpace(l[3:])), "")
				heads = append(heads, strings.ReplaceAll(h, " ", "-"))
			}
		}
		if toc != nil && !slices.Equal(toc, heads) {
			t.Errorf("%s: the contents list %v, the sections are %v", filepath.Base(f), toc, heads)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestResolveBuild(t *testing.T) {
	vcs := func(rev, modified string) *debug.BuildInfo {
		bi := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}
		if rev != "" {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: "vcs.revision", Value: rev})
		}
		if modified != "" {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: "vcs.modified", Value: modified})
		}
		return bi
	}
	const full = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d"
	for _, tc := range []struct {
		name              string
		version, revision string
		bi                *debug.BuildInfo
		wantVer, wantRev  string
	}{
		{"stamped wins over the build record", "v0.1.0", "abcdefabcdef", vcs(full, "true"), "v0.1.0", "abcdefabcdef"},
		{"a plain build in a clean checkout", "dev", "", vcs(full, "false"), "dev", "1a2b3c4d5e6f"},
		{"a plain build in a modified checkout", "dev", "", vcs(full, "true"), "dev", "1a2b3c4d5e6f-dirty"},
		{"a build outside a checkout", "dev", "", vcs("", ""), "dev", "unknown"},
		{"go install of a tag", "dev", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.2.0"}}, "v0.2.0", "unknown"},
		{"a stamped version keeps the VCS revision", "v0.1.0", "", vcs(full, ""), "v0.1.0", "1a2b3c4d5e6f"},
		{"no build record", "", "", nil, "dev", "unknown"},
		{"a short revision as it is", "dev", "", vcs("abc", "false"), "dev", "abc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := resolveBuild(tc.version, tc.revision, "go1.26.8", tc.bi)
			want := build{Version: tc.wantVer, Revision: tc.wantRev, Go: "go1.26.8"}
			if got != want {
				t.Fatalf("resolveBuild = %+v, want %+v", got, want)
			}
		})
	}
	if s := (build{"v0.1.0", "1a2b3c4d5e6f", "go1.26.0"}).String(); s != "fleetroll v0.1.0 (revision 1a2b3c4d5e6f, go1.26.0)" {
		t.Fatalf("String() = %q", s)
	}
}

var (
	builtOnce sync.Once
	builtBin  string
	builtErr  error
)

// builtFleetroll is this package built as a binary, as a plain go build in
// this checkout makes it (the VCS stamp on), once per test run.
func builtFleetroll(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go on PATH")
	}
	builtOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fleetroll-bin")
		if err != nil {
			builtErr = err
			return
		}
		builtBin = filepath.Join(dir, "fleetroll")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-buildvcs=auto", "-o", builtBin, ".").CombinedOutput()
		if err != nil {
			builtErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if builtErr != nil {
		t.Fatal(builtErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// A plain go build names the checkout's commit, from Go's VCS stamp.
func TestVersionOfAPlainBuild(t *testing.T) {
	bin := builtFleetroll(t)
	head, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^fleetroll (\S+) \(revision ([0-9a-f]{12})(-dirty)?, (go\S+)\)\n$`)
	m := re.FindStringSubmatch(string(out))
	if m == nil || m[2] != strings.TrimSpace(string(head)) || m[4] != runtime.Version() {
		t.Fatalf("fleetroll --version = %q; want the revision %s and %s", out, head, runtime.Version())
	}
}

// The bash script loads, registers its function for fleetroll, and the
// function completes commands and a command's flags from the binary.
func TestCompletionBash(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	bin := builtFleetroll(t)
	script := `set -e
export PATH="$BIN_DIR:$PATH"
source <(fleetroll completion bash)
complete -p fleetroll
COMP_WORDS=(fleetroll de); COMP_CWORD=1; _fleetroll_complete; echo "commands: ${COMPREPLY[*]}"
COMP_WORDS=(fleetroll restart --por); COMP_CWORD=2; _fleetroll_complete; echo "flags: ${COMPREPLY[*]}"
COMP_WORDS=(fleetroll release ""); COMP_CWORD=2; _fleetroll_complete; echo "subcommands: ${COMPREPLY[*]}"
`
	cmd := exec.Command("bash", "--norc", "--noprofile", "-c", script)
	cmd.Env = append(os.Environ(), "BIN_DIR="+filepath.Dir(bin))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("bash: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
	}
	for _, want := range []string{
		"complete -o bashdefault -o default -F _fleetroll_complete fleetroll\n",
		"commands: deploy\n",
		"flags: --ports\n",
		"subcommands: list clear",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("want %q in:\n%s", want, out)
		}
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, tc := range []struct {
		shell string
		want  []string
	}{
		{"bash", []string{"--generate-bash-completion", "complete -o bashdefault -o default -F _fleetroll_complete fleetroll"}},
		{"zsh", []string{"#compdef fleetroll", "compdef _fleetroll_complete fleetroll"}},
		{"fish", []string{"complete -c fleetroll", "-a 'restart'", "-l ports"}},
	} {
		code, out, errs := runCLI(t, "completion", tc.shell)
		if code != 0 {
			t.Fatalf("completion %s: exit %d: %s", tc.shell, code, errs)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("completion %s lacks %q", tc.shell, w)
			}
		}
	}
	for _, args := range [][]string{{"completion"}, {"completion", "tcsh"}, {"completion", "bash", "zsh"}} {
		if code, _, errs := runCLI(t, args...); code != exitUsage || !strings.Contains(errs, "want") {
			t.Errorf("%v: exit %d, %q; want 2 and what it wants", args, code, errs)
		}
	}
}

// The man page is roff that man(1)'s formatter renders without a warning,
// and it names every command.
func TestManPageRenders(t *testing.T) {
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Skip("no groff (Debian: groff-base, which man-db needs)")
	}
	code, page, errs := runCLI(t, "man")
	if code != 0 {
		t.Fatalf("man: exit %d: %s", code, errs)
	}
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = strings.NewReader(page)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("groff -man -ww: %v\n%s", err, out)
	}
	cmd = exec.Command(groff, "-man", "-Tutf8")
	cmd.Stdin = strings.NewReader(page)
	cmd.Env = append(os.Environ(), "GROFF_NO_SGR=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	text := regexp.MustCompile(`.\x08`).ReplaceAllString(string(out), "")
	for _, w := range []string{"fleetroll", "restart", "deploy", "serve", "completion", "version", "--ports"} {
		if !strings.Contains(text, w) {
			t.Errorf("the rendered page lacks %q", w)
		}
	}
}

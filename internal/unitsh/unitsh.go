// Package unitsh runs the shell lines of a shipped unit file outside
// systemd, for tests: the unit's Environment= settings (with the test's
// over them), its specifiers %i and %% and its $$ escapes resolved as
// systemd resolves them.
package unitsh

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/coreos/fleet/unit"
)

// Unit is a parsed unit file.
type Unit struct {
	name string
	uf   *unit.UnitFile
}

// Load reads and parses a unit file with fleet's parser.
func Load(file string) (*Unit, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	uf, err := unit.NewUnitFile(string(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return &Unit{name: file, uf: uf}, nil
}

// Env is the unit's [Service] Environment= settings.
func (u *Unit) Env() map[string]string {
	m := map[string]string{}
	for _, e := range u.uf.Contents["Service"]["Environment"] {
		if k, v, ok := strings.Cut(strings.Trim(e, `"`), "="); ok {
			m[k] = v
		}
	}
	return m
}

// Lines are the values of a [Service] key, as written.
func (u *Unit) Lines(key string) []string { return u.uf.Contents["Service"][key] }

// Command is the nth (from 0) [Service] line key (ExecStart,
// ExecStartPre…) of the instance, as a command of /bin/sh whose
// environment is the unit's settings with set over them (and PATH). A
// leading "-" (failure ignored) is dropped.
func (u *Unit) Command(ctx context.Context, key string, n int, instance string, set map[string]string) (*exec.Cmd, error) {
	lines := u.Lines(key)
	if n >= len(lines) {
		return nil, fmt.Errorf("%s: %d %s= lines, no line %d", u.name, len(lines), key, n)
	}
	line := strings.TrimPrefix(lines[n], "-")
	line = strings.NewReplacer("$$", "$", "%i", instance, "%%", "%").Replace(line)
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", line)
	env := u.Env()
	for k, v := range set {
		env[k] = v
	}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+strings.NewReplacer("%i", instance, "%%", "%").Replace(v))
	}
	return cmd, nil
}

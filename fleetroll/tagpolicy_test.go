package fleetroll

import (
	"strings"
	"testing"
)

func TestTagPolicyAllows(t *testing.T) {
	for _, c := range []struct {
		policy        TagPolicy
		current, next string
		prerelease    bool
		want          string // "" allowed, else a part of why
	}{
		// The acceptance: minor over v1.2.5.
		{TagPolicyMinor, "v1.2.5", "v1.3.0", false, ""},
		{TagPolicyMinor, "v1.2.5", "v2.0.0", false, "another major version"},
		{TagPolicyMinor, "v1.2.5", "v1.2.4", false, "older than the current release's v1.2.5"},
		{TagPolicyMinor, "v1.2.5", "v1.4.0-rc1", false, "pre-release"},
		// Pre-releases when asked for, in semver's order.
		{TagPolicyMinor, "v1.2.5", "v1.4.0-rc1", true, ""},
		{TagPolicyMinor, "v1.4.0", "v1.4.0-rc1", true, "older"},
		{TagPolicyMinor, "v1.4.0-rc1", "v1.4.0", false, ""},
		{TagPolicyMinor, "v1.4.0-rc1", "v1.4.0-rc2", true, ""},
		// The same version again (a tag pushed anew) is not older.
		{TagPolicyMinor, "v1.2.5", "v1.2.5", false, ""},
		{TagPolicyMinor, "v1.2.5", "v1.2.5+build.7", false, ""},
		// patch: the same major.minor.
		{TagPolicyPatch, "v1.2.5", "v1.2.6", false, ""},
		{TagPolicyPatch, "v1.2.5", "v1.3.0", false, "not a patch"},
		{TagPolicyPatch, "v1.2.5", "v1.2.4", false, "older"},
		// major: any newer.
		{TagPolicyMajor, "v1.2.5", "v2.0.0", false, ""},
		{TagPolicyMajor, "v1.2.5", "v9.0.1", false, ""},
		{TagPolicyMajor, "v1.2.5", "v0.9.9", false, "older"},
		// With or without a leading v, and the short forms.
		{TagPolicyMinor, "1.2.5", "1.3.0", false, ""},
		{TagPolicyMinor, "v1.2.5", "1.3.0", false, ""},
		{TagPolicyMinor, "1.2.5", "v1.2.4", false, "older"},
		{TagPolicyMinor, "v1.2", "v1.2.1", false, ""},
		{TagPolicyMinor, "v1.10.0", "v1.9.0", false, "older"},
		// Not a version under a semver policy.
		{TagPolicyMinor, "v1.2.5", "latest", false, "not a semantic version"},
		{TagPolicyPatch, "v1.2.5", "v1.2.5.1", false, "not a semantic version"},
		{TagPolicyMajor, "", "main-abc123", false, "not a semantic version"},
		// No current version to compare with: only the pre-release rule.
		{TagPolicyMinor, "", "v3.0.0", false, ""},
		{TagPolicyMinor, "latest", "v0.1.0", false, ""},
		{TagPolicyMinor, "", "v3.0.0-beta", false, "pre-release"},
		// glob: today's behaviour, anything its trigger matched.
		{TagPolicyGlob, "v1.2.5", "v1.2.4", false, ""},
		{TagPolicyGlob, "v1.2.5", "latest", false, ""},
		{"", "v1.2.5", "v0.0.1-rc1", false, ""},
	} {
		ok, why := c.policy.Allows(c.current, c.next, c.prerelease)
		if ok != (c.want == "") || !strings.Contains(why, c.want) || ok && why != "" {
			t.Errorf("%s %s -> %s (prerelease %v): %v %q, want %q", c.policy, c.current, c.next, c.prerelease, ok, why, c.want)
		}
	}
}

func TestParseTagPolicy(t *testing.T) {
	for in, want := range map[string]TagPolicy{"": TagPolicyGlob, "glob": TagPolicyGlob, "patch": TagPolicyPatch, "minor": TagPolicyMinor, "major": TagPolicyMajor} {
		if got, err := ParseTagPolicy(in); err != nil || got != want {
			t.Errorf("%q: %q %v", in, got, err)
		}
	}
	for _, bad := range []string{"semver", "Minor", "latest"} {
		if _, err := ParseTagPolicy(bad); err == nil || !strings.Contains(err.Error(), "want glob, patch, minor or major") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if TagPolicyGlob.Semver() || TagPolicy("").Semver() || !TagPolicyMinor.Semver() {
		t.Error("Semver")
	}
}

package fleetroll

import (
	"fmt"
	"strings"

	"golang.org/x/mod/semver"
)

// TagPolicy says which pushed tags a sender may deploy to a service: any
// its trigger's glob matches (glob, the default), or, read as semantic
// versions, only those not older than the current release's, within the
// same major.minor (patch), the same major (minor), or any newer (major).
type TagPolicy string

const (
	TagPolicyGlob  TagPolicy = "glob"
	TagPolicyPatch TagPolicy = "patch"
	TagPolicyMinor TagPolicy = "minor"
	TagPolicyMajor TagPolicy = "major"
)

// ParseTagPolicy checks a tag_policy / --tag-policy value ("" is glob).
func ParseTagPolicy(s string) (TagPolicy, error) {
	switch p := TagPolicy(s); p {
	case "", TagPolicyGlob:
		return TagPolicyGlob, nil
	case TagPolicyPatch, TagPolicyMinor, TagPolicyMajor:
		return p, nil
	}
	return "", fmt.Errorf("tag_policy %q: want glob, patch, minor or major", s)
}

// Semver tells whether the policy reads tags as semantic versions.
func (p TagPolicy) Semver() bool {
	return p == TagPolicyPatch || p == TagPolicyMinor || p == TagPolicyMajor
}

// version is a tag as a semantic version (v1.2.3 or 1.2.3, and the short
// v1.2 and v1), and whether it is one.
func version(tag string) (string, bool) {
	v := tag
	if !strings.HasPrefix(v, "v") {
		v = "v" + v
	}
	return v, semver.IsValid(v)
}

// IsVersionTag tells whether a tag reads as a semantic version.
func IsVersionTag(tag string) bool {
	_, ok := version(tag)
	return tag != "" && ok
}

// Allows judges a sender's move of a service from the current release's
// tag (current, "" when it has none) to the pushed tag next: under the
// glob policy anything; under a semantic policy, next must be a version,
// not a pre-release (unless prerelease), not older than current, and
// within the policy's range of it. A current release without a version
// (a first deploy, a deploy by digest) bounds nothing but the pre-release
// rule. why says, when it is not allowed, what refused it.
func (p TagPolicy) Allows(current, next string, prerelease bool) (ok bool, why string) {
	if !p.Semver() {
		return true, ""
	}
	nv, valid := version(next)
	if !valid {
		return false, fmt.Sprintf("tag %q is not a semantic version (vMAJOR.MINOR.PATCH), as tag_policy %s needs", next, p)
	}
	if semver.Prerelease(nv) != "" && !prerelease {
		return false, fmt.Sprintf("tag %s is a pre-release: tag_policy %s excludes them (prerelease: true admits them)", next, p)
	}
	cv, valid := version(current)
	if current == "" || !valid {
		return true, ""
	}
	if semver.Compare(nv, cv) < 0 {
		return false, fmt.Sprintf("tag %s is older than the current release's %s: a sender never moves a service back (an operator can, with deploy or rollback)", next, current)
	}
	switch {
	case p == TagPolicyPatch && semver.MajorMinor(nv) != semver.MajorMinor(cv):
		return false, fmt.Sprintf("tag %s is not a patch of the current release's %s (tag_policy patch: %s.x only)", next, current, semver.MajorMinor(cv))
	case p == TagPolicyMinor && semver.Major(nv) != semver.Major(cv):
		return false, fmt.Sprintf("tag %s is another major version than the current release's %s (tag_policy minor: %s.x.x only)", next, current, semver.Major(cv))
	}
	return true, ""
}

package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Release is an image pinned by digest, with the tag it came from and what
// asked for it: what a service runs once a rollout moved it there
// (docs/releases.md).
type Release struct {
	// Image is REGISTRY/REPOSITORY@sha256:HEX, exactly what the instances run.
	Image string `json:"image"`
	// Tag is the tag the digest was resolved from, when there was one.
	Tag     string  `json:"tag,omitempty"`
	Trigger Trigger `json:"trigger"`
	// Rollout is the rollout that deployed it.
	Rollout string    `json:"rollout,omitempty"`
	Created time.Time `json:"created,omitzero"`
}

// Digest is the release's digest, sha256:HEX.
func (r Release) Digest() string {
	_, d, _ := strings.Cut(r.Image, "@")
	return d
}

// Repository is the image without its digest: REGISTRY/REPOSITORY.
func (r Release) Repository() string {
	repo, _, _ := strings.Cut(r.Image, "@")
	return repo
}

var (
	digestRe = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	// A repository as the distribution spec names it, after an optional
	// registry host[:port].
	repoRe = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	hostRe = regexp.MustCompile(`^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]{1,5})?$`)
	tagRe  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// ValidDigest reports whether d is sha256:64 lowercase hex digits.
func ValidDigest(d string) bool { return digestRe.MatchString(d) }

// ValidTag reports whether t is a tag as the distribution spec allows.
func ValidTag(t string) bool { return tagRe.MatchString(t) }

// ValidateImage checks a service's image setting: REGISTRY/REPOSITORY, with
// the registry host named (docker.io for Docker Hub), no tag and no digest.
func ValidateImage(image string) error {
	host, repo, ok := strings.Cut(image, "/")
	if !ok || !strings.ContainsAny(host, ".:") && host != "localhost" {
		return fmt.Errorf("image %q: want REGISTRY/REPOSITORY, e.g. docker.io/team/my-service or 127.0.0.1:5000/demo/my-service", image)
	}
	if !hostRe.MatchString(host) {
		return fmt.Errorf("image %q: registry %q is not a host[:port]", image, host)
	}
	if !repoRe.MatchString(repo) || len(repo) > 255 {
		return fmt.Errorf("image %q: repository %q is not a valid repository name (lowercase, no tag or digest)", image, repo)
	}
	return nil
}

// PinnedImage returns IMAGE@DIGEST after checking both: the only way a
// release's image is built, so that what reaches a unit file or etcd is a
// configured image and a well-formed digest.
func PinnedImage(image, digest string) (string, error) {
	if err := ValidateImage(image); err != nil {
		return "", err
	}
	if !ValidDigest(digest) {
		return "", fmt.Errorf("digest %q: want sha256: and 64 lowercase hex digits", digest)
	}
	return image + "@" + digest, nil
}

// SplitImageRef splits REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@DIGEST
// into the image and its tag or digest, checking both; no tag is "latest".
func SplitImageRef(ref string) (image, tagOrDigest string, err error) {
	if ref == "" {
		return "", "", errors.New("want REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST")
	}
	if i, d, ok := strings.Cut(ref, "@"); ok {
		image, tagOrDigest = i, d
	} else if slash, colon := strings.LastIndex(ref, "/"), strings.LastIndex(ref, ":"); slash >= 0 && colon > slash {
		image, tagOrDigest = ref[:colon], ref[colon+1:]
	} else {
		image, tagOrDigest = ref, "latest"
	}
	if err := ValidateImage(image); err != nil {
		return "", "", err
	}
	if !ValidDigest(tagOrDigest) && !ValidTag(tagOrDigest) {
		return "", "", fmt.Errorf("%q: want a tag or sha256: and 64 hex digits", tagOrDigest)
	}
	return image, tagOrDigest, nil
}

// Validate checks that the release's image is IMAGE@DIGEST, well formed.
func (r Release) Validate() error {
	repo, digest, ok := strings.Cut(r.Image, "@")
	if !ok {
		return fmt.Errorf("release image %q: not pinned by digest", r.Image)
	}
	_, err := PinnedImage(repo, digest)
	return err
}

// Releases keeps a service's current release and its history. Set replaces
// the current release only when it still is prev (compare-and-swap; nil prev:
// there is none yet), so that two fleetrolls never overwrite each other's.
// fleetroll/coord implements it in etcd.
type Releases interface {
	Current(ctx context.Context, service string) (*Release, error)
	Set(ctx context.Context, service string, rel Release, prev *Release) error
}

// Resolver turns a tag of an image into its digest, and checks that a
// digest exists (fleetroll/release implements it with the registry API).
type Resolver interface {
	Resolve(ctx context.Context, image, tagOrDigest string) (digest string, err error)
}

// Package release resolves an image's tag to the digest it points to, through
// the registry API (go-containerregistry): the manifest-list / OCI-index
// media types, and the token flow Docker Hub uses, anonymous, with
// credentials from a file, or with what docker's config holds for the
// registry (a keychain).
package release

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// DefaultTimeout bounds one resolution (token and manifest requests).
const DefaultTimeout = 30 * time.Second

// Registry resolves tags against the registry an image names. Registries on
// loopback or private addresses are spoken to over plain HTTP (as docker
// does for them); every other one over HTTPS.
type Registry struct {
	// Auth is used for every registry; nil: Keychain's.
	Auth authn.Authenticator
	// Keychain, without Auth, finds each registry's credentials
	// (authn.DefaultKeychain: docker's config.json); a registry it has
	// none for, or a nil Keychain, is spoken to anonymously.
	Keychain authn.Keychain
	// Timeout bounds each Resolve; zero is DefaultTimeout.
	Timeout time.Duration
	// Transport, when set, carries the requests (tests).
	Transport http.RoundTripper
	// Clock reads the time a Retry-After date is counted from; the real
	// clock when nil.
	Clock fleetroll.Clock
}

// CredentialsFromFile reads USER:PASSWORD (or USER:TOKEN) from the first line
// of a file, for registries that want credentials (a private repository on
// Docker Hub).
func CredentialsFromFile(path string) (authn.Authenticator, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	user, pass, ok := strings.Cut(strings.TrimSpace(line), ":")
	if !ok || user == "" || pass == "" {
		return nil, fmt.Errorf("registry credentials %s: want USER:PASSWORD on the first line", path)
	}
	return &authn.Basic{Username: user, Password: pass}, nil
}

// authFor is what a request to repo's registry authenticates with: Auth,
// else what Keychain holds for the registry, else nothing (anonymous).
func (r Registry) authFor(ctx context.Context, repo name.Repository) (authn.Authenticator, error) {
	switch {
	case r.Auth != nil:
		return r.Auth, nil
	case r.Keychain != nil:
		auth, err := authn.Resolve(ctx, r.Keychain, repo)
		if err != nil {
			return nil, fmt.Errorf("registry credentials for %s from the keychain (docker's config): %w", repo.RegistryStr(), err)
		}
		return auth, nil
	}
	return authn.Anonymous, nil
}

// Resolve returns the digest of image:tag, or checks that image@digest
// exists when given a digest. The digest of a multi-platform image is its
// index's, which every machine resolves to its own platform.
func (r Registry) Resolve(ctx context.Context, image, tagOrDigest string) (string, error) {
	if err := fleetroll.ValidateImage(image); err != nil {
		return "", err
	}
	var ref name.Reference
	var err error
	switch {
	case fleetroll.ValidDigest(tagOrDigest):
		ref, err = name.NewDigest(image+"@"+tagOrDigest, name.StrictValidation)
	case fleetroll.ValidTag(tagOrDigest):
		ref, err = name.NewTag(image+":"+tagOrDigest, name.StrictValidation)
	default:
		return "", fmt.Errorf("%q: want a tag or sha256:DIGEST", tagOrDigest)
	}
	if err != nil {
		return "", fmt.Errorf("resolve %s %s: %w", image, tagOrDigest, err)
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	auth, err := r.authFor(ctx, ref.Context())
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", ref, err)
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithUserAgent("fleetroll"), remote.WithAuth(auth)}
	if r.Transport != nil {
		opts = append(opts, remote.WithTransport(r.Transport))
	}
	desc, err := remote.Head(ref, opts...)
	var terr *transport.Error
	if errors.As(err, &terr) {
		// A HEAD answer has no body: GET for the registry's own words (and
		// for registries that do not answer HEAD on manifests).
		var d *remote.Descriptor
		if d, err = remote.Get(ref, opts...); err == nil {
			desc = &d.Descriptor
		}
	}
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", ref, err)
	}
	digest := desc.Digest.String()
	if !fleetroll.ValidDigest(digest) {
		return "", fmt.Errorf("resolve %s: the registry answered digest %q", ref, digest)
	}
	if d, ok := ref.(name.Digest); ok && d.DigestStr() != digest {
		return "", fmt.Errorf("resolve %s: the registry answered digest %s", ref, digest)
	}
	return digest, nil
}

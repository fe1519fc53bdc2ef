package release

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// ErrRateLimited is returned when the registry answered 429: Manifest.Wait
// is how long it asked the caller to wait (zero when it did not say).
var ErrRateLimited = errors.New("the registry refused the request: too many requests (429)")

// Manifest is what a HEAD of a tag's manifest told.
type Manifest struct {
	// Digest is the tag's digest (Docker-Content-Digest); on a 304 it is
	// the digest the caller's ETag named, when that ETag was a digest.
	Digest string
	// ETag is the manifest's entity tag, for the next ask's If-None-Match.
	ETag string
	// NotModified: the registry answered 304 to If-None-Match.
	NotModified bool
	// Wait is how long the registry asked the caller to wait before it
	// asks again (Retry-After, or a rate-limit window spent): zero when it
	// asked nothing.
	Wait time.Duration
}

// manifestTypes are the media types a tag's manifest may have: the index
// (multi-platform) ones first, as Resolve's digest is the index's.
var manifestTypes = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

// TagWatch asks one tag's registry for its manifest's digest, again and
// again: it keeps its authenticated transport (the registry's challenge and
// token) between asks, so an unchanged tag costs one HEAD request. It is
// safe for use by one goroutine at a time.
type TagWatch struct {
	reg Registry
	ref name.Tag
	ua  string

	mu sync.Mutex
	rt http.RoundTripper // nil until the first ask, and after a failure
}

// Watch returns a TagWatch of image:tag. userAgent names the asker to the
// registry ("" is "fleetroll").
func (r Registry) Watch(image, tag, userAgent string) (*TagWatch, error) {
	if err := fleetroll.ValidateImage(image); err != nil {
		return nil, err
	}
	if !fleetroll.ValidTag(tag) {
		return nil, fmt.Errorf("%q: not a tag", tag)
	}
	ref, err := name.NewTag(image+":"+tag, name.StrictValidation)
	if err != nil {
		return nil, fmt.Errorf("watch %s:%s: %w", image, tag, err)
	}
	if userAgent == "" {
		userAgent = "fleetroll"
	}
	return &TagWatch{reg: r, ref: ref, ua: userAgent}, nil
}

// Head asks the registry for the tag's manifest with a HEAD request, with
// If-None-Match: etag when etag is not empty. A 429 returns ErrRateLimited
// with the wait asked for. The digest of a 200 is checked to be a sha256
// digest.
func (w *TagWatch) Head(ctx context.Context, etag string) (Manifest, error) {
	timeout := w.reg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rt == nil {
		inner := w.reg.Transport
		if inner == nil {
			inner = remote.DefaultTransport
		}
		// The handshake (a GET /v2/, and a token when the registry wants
		// one) is done once and kept: the bearer transport asks for a new
		// token when the registry refuses the old one.
		auth, err := w.reg.authFor(ctx, w.ref.Context())
		if err != nil {
			return Manifest{}, fmt.Errorf("head %s: %w", w.ref, err)
		}
		rt, err := transport.NewWithContext(ctx, w.ref.Context().Registry, auth, transport.NewUserAgent(inner, w.ua),
			[]string{w.ref.Scope(transport.PullScope)})
		if err != nil {
			return Manifest{}, fmt.Errorf("head %s: %w", w.ref, err)
		}
		w.rt = rt
	}
	u := fmt.Sprintf("%s://%s/v2/%s/manifests/%s", w.ref.Context().Registry.Scheme(), w.ref.Context().RegistryStr(),
		w.ref.Context().RepositoryStr(), w.ref.TagStr())
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
	if err != nil {
		return Manifest{}, fmt.Errorf("head %s: %w", w.ref, err)
	}
	req.Header.Set("Accept", strings.Join(manifestTypes, ", "))
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := w.rt.RoundTrip(req)
	if err != nil {
		w.rt = nil // the next ask shakes hands again
		return Manifest{}, fmt.Errorf("head %s: %w", w.ref, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	now := w.reg.clock().Now()
	m := Manifest{ETag: resp.Header.Get("ETag"), Wait: WaitAsked(resp.StatusCode, resp.Header, now)}
	switch resp.StatusCode {
	case http.StatusOK:
		m.Digest = resp.Header.Get("Docker-Content-Digest")
		if !fleetroll.ValidDigest(m.Digest) {
			return m, fmt.Errorf("head %s: the registry answered digest %q", w.ref, m.Digest)
		}
		return m, nil
	case http.StatusNotModified:
		m.NotModified = true
		if m.ETag == "" {
			m.ETag = etag
		}
		if d := strings.Trim(strings.TrimPrefix(m.ETag, "W/"), `"`); fleetroll.ValidDigest(d) {
			m.Digest = d
		}
		return m, nil
	case http.StatusTooManyRequests:
		return m, fmt.Errorf("head %s: %w", w.ref, ErrRateLimited)
	default:
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			w.rt = nil
		}
		return m, fmt.Errorf("head %s: the registry answered %s", w.ref, resp.Status)
	}
}

func (r Registry) clock() fleetroll.Clock {
	if r.Clock != nil {
		return r.Clock
	}
	return fleetroll.SystemClock{}
}

// WaitAsked is how long an answer asks its client to wait before the next
// request: Retry-After (seconds, or an HTTP date) on any answer; else, on a
// 429 or when the answer says no request is left (RateLimit-Remaining or
// X-RateLimit-Remaining of 0), the window's reset (RateLimit-Reset in
// seconds, X-RateLimit-Reset as a Unix time) or, lacking one, the window
// itself (Docker Hub's "RateLimit-Remaining: 0;w=21600"). Zero: nothing
// asked.
func WaitAsked(status int, h http.Header, now time.Time) time.Duration {
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if s, err := strconv.Atoi(v); err == nil && s >= 0 {
			return seconds(s)
		}
		if t, err := http.ParseTime(v); err == nil {
			return max(t.Sub(now), 0)
		}
	}
	remaining, window, known := rateRemaining(h)
	if status != http.StatusTooManyRequests && (!known || remaining > 0) {
		return 0
	}
	if v := strings.TrimSpace(h.Get("RateLimit-Reset")); v != "" {
		if s, err := strconv.Atoi(v); err == nil && s >= 0 {
			return seconds(s)
		}
	}
	if v := strings.TrimSpace(h.Get("X-RateLimit-Reset")); v != "" {
		if s, err := strconv.ParseInt(v, 10, 64); err == nil && s > 0 {
			return max(time.Unix(s, 0).Sub(now), 0)
		}
	}
	return window
}

// seconds is s seconds (s >= 0), or the longest Duration when s seconds
// are past its range: a sender's number never wraps to a short or negative
// wait.
func seconds(s int) time.Duration {
	if s > int(math.MaxInt64/time.Second) {
		return math.MaxInt64
	}
	return time.Duration(s) * time.Second
}

// rateRemaining reads RateLimit-Remaining (or X-RateLimit-Remaining):
// "N" or Docker Hub's "N;w=SECONDS".
func rateRemaining(h http.Header) (remaining int, window time.Duration, known bool) {
	v := h.Get("RateLimit-Remaining")
	if v == "" {
		v = h.Get("X-RateLimit-Remaining")
	}
	if v == "" {
		return 0, 0, false
	}
	n, params, _ := strings.Cut(v, ";")
	remaining, err := strconv.Atoi(strings.TrimSpace(n))
	if err != nil {
		return 0, 0, false
	}
	for p := range strings.SplitSeq(params, ";") {
		if k, val, ok := strings.Cut(strings.TrimSpace(p), "="); ok && k == "w" {
			if s, err := strconv.Atoi(val); err == nil && s > 0 {
				window = seconds(s)
			}
		}
	}
	return remaining, window, true
}

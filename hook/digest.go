package hook

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"
)

// DigestCheckTimeout bounds the registry's answer when the digest a
// payload names is checked as it arrives (GitHub waits 10 s for an answer).
const DigestCheckTimeout = 10 * time.Second

// bodyDelivery is the replay key of an authenticated body: its SHA-256.
// GitHub's HMAC covers the body and nothing else, so a key taken from a
// header (X-GitHub-Delivery) could be changed without the secret.
func bodyDelivery(sender string, body []byte) string {
	sum := sha256.Sum256(body)
	return sender + "|sha256:" + hex.EncodeToString(sum[:])
}

// verifyDigests checks, for every matched service with an image whose event
// names a tag and a digest (a registry's push, a GitHub package), that the
// registry resolves the tag to that digest now: a captured payload of an
// older push, sent again, must not move the service back to it. It answers
// 409 when the registry's digest differs, 502 or 503 when the registry
// could not be asked; ok when every check passed or none applied (a payload
// naming only a tag is resolved by the runner, under the service's lock).
// The checks share one DigestCheckTimeout.
func (in *intake) verifyDigests(ctx context.Context, log *slog.Logger, matches map[string]Event, order []string) (kept []string, refused []map[string]any, code int, body any) {
	ctx, cancel := context.WithTimeout(ctx, DigestCheckTimeout)
	defer cancel()
	cfg := in.config()
	type ref struct{ image, tag string }
	resolved := map[ref]string{}
	for _, service := range order {
		ev := matches[service]
		svc, found := cfg.Service(service)
		if !found || svc.Settings.Image == "" || ev.Digest == "" || ev.Tag == "" {
			kept = append(kept, service)
			continue
		}
		k := ref{svc.Settings.Image, ev.Tag}
		now, seen := resolved[k]
		if !seen {
			d, err := in.resolver.Resolve(ctx, k.image, k.tag)
			if err != nil {
				err = fmt.Errorf("check the digest of tag %s for service %s: %w", k.tag, service, err)
				log.Warn("digest not checked: the registry could not be asked", "service", service, "image", k.image,
					"tag", k.tag, "digest", ev.Digest, "error", err.Error())
				// Never the error itself: it names the registry's address.
				if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
					code, body := problem(http.StatusServiceUnavailable, fmt.Sprintf(
						"the registry did not answer within %s for tag %s of service %s: its digest could not be checked; nothing was queued, retry later",
						DigestCheckTimeout, k.tag, service))
					return nil, nil, code, body
				}
				code, body := problem(http.StatusBadGateway, fmt.Sprintf(
					"the registry could not resolve tag %s of service %s: its digest could not be checked; nothing was queued, retry later",
					k.tag, service))
				return nil, nil, code, body
			}
			resolved[k], now = d, d
		}
		if now != ev.Digest {
			log.Warn("trigger refused: the payload's digest is not the tag's digest in the registry", "service", service,
				"image", k.image, "tag", k.tag, "digest", ev.Digest, "registry_digest", now)
			_, body := problem(http.StatusConflict, fmt.Sprintf(
				"tag %s of service %s is %s in the registry now, not %s as the payload says: refused, nothing was queued for it",
				k.tag, service, now, ev.Digest))
			m := body.(map[string]any)
			m["service"], m["tag"], m["digest"], m["registry_digest"] = service, k.tag, ev.Digest, now
			refused = append(refused, m)
			continue
		}
		kept = append(kept, service)
	}
	return kept, refused, 0, nil
}

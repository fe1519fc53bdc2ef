package coord

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// QuarantinePrefix is where the digests a service must not be deployed
// again live (docs/releases.md): QuarantinePrefix/SERVICE/HEX, one JSON
// document (Quarantined) per digest, HEX being the sha256 digest's hex.
const QuarantinePrefix = "/fleetroll/quarantine"

// DefaultQuarantineKeep is how many digests a service keeps quarantined
// (the newest; docs/serve.md, "Limits").
const DefaultQuarantineKeep = 20

// MaxQuarantineReason bounds the reason kept with a digest (bytes).
const MaxQuarantineReason = 512

// ErrNotQuarantined is why a clear found nothing to clear.
var ErrNotQuarantined = errors.New("no such digest is quarantined")

// Quarantined is a digest a rollout rolled back from, or whose canaries
// an operator aborted: a later deploy of it is refused until it is
// cleared.
type Quarantined struct {
	Service string `json:"service"`
	// Digest is sha256:HEX; Image the release pinned by it, Tag the tag
	// it was resolved from (when there was one).
	Digest string `json:"digest"`
	Image  string `json:"image,omitempty"`
	Tag    string `json:"tag,omitempty"`
	// Reason is why (the rollout's error); Rollout the rollout that
	// rolled back from it, or whose canaries were aborted.
	Reason  string    `json:"reason"`
	Rollout string    `json:"rollout"`
	At      time.Time `json:"at"`
}

// Quarantine keeps the quarantined digests of each service in etcd, at
// most Keep per service (the oldest dropped).
type Quarantine struct {
	KAPI client.KeysAPI
	Keep int // default DefaultQuarantineKeep
}

func quarantineDir(service string) (string, error) {
	if err := fleetroll.ValidateServiceName(service); err != nil {
		return "", fmt.Errorf("quarantine: %w", err)
	}
	return QuarantinePrefix + "/" + service, nil
}

func quarantineKey(service, digest string) (string, error) {
	dir, err := quarantineDir(service)
	if err != nil {
		return "", err
	}
	if !fleetroll.ValidDigest(digest) {
		return "", fmt.Errorf("quarantine: %q is not a sha256 digest", digest)
	}
	return dir + "/" + strings.TrimPrefix(digest, "sha256:"), nil
}

// Add quarantines a digest of the service (again: its reason and rollout
// are replaced), then drops the oldest beyond Keep.
func (q Quarantine) Add(ctx context.Context, e Quarantined) error {
	key, err := quarantineKey(e.Service, e.Digest)
	if err != nil {
		return err
	}
	if e.Rollout != "" && !fleetroll.ValidRolloutID(e.Rollout) {
		return fmt.Errorf("quarantine: rollout ID %q is not 12 hex digits", e.Rollout)
	}
	if n := MaxQuarantineReason; len(e.Reason) > n {
		for n > 0 && !utf8.RuneStart(e.Reason[n]) {
			n-- // cut on a rune's start
		}
		e.Reason = e.Reason[:n]
	}
	if err := putJSON(ctx, q.KAPI, key, "quarantine "+e.Digest+" of "+e.Service, e, nil); err != nil {
		return err
	}
	return q.prune(ctx, e.Service)
}

// prune drops the service's oldest quarantined digests (last written
// first) beyond Keep.
func (q Quarantine) prune(ctx context.Context, service string) error {
	keep := q.Keep
	if keep <= 0 {
		keep = DefaultQuarantineKeep
	}
	dir, _ := quarantineDir(service)
	resp, err := q.KAPI.Get(ctx, dir, nil)
	if err != nil {
		return fmt.Errorf("quarantine: list %s: %w", service, err)
	}
	nodes := slices.Clone(resp.Node.Nodes)
	slices.SortFunc(nodes, func(a, b *client.Node) int { return cmp.Compare(a.ModifiedIndex, b.ModifiedIndex) })
	for i := 0; i < len(nodes)-keep; i++ {
		if err := deleteKey(ctx, q.KAPI, nodes[i].Key, "quarantine: drop the oldest of "+service); err != nil {
			return err
		}
	}
	return nil
}

// Get returns the quarantine of the service's digest; nil when it is not
// quarantined.
func (q Quarantine) Get(ctx context.Context, service, digest string) (*Quarantined, error) {
	key, err := quarantineKey(service, digest)
	if err != nil {
		return nil, err
	}
	e, _, err := getJSON[Quarantined](ctx, q.KAPI, key, "quarantine of "+service)
	return e, err
}

// List returns the service's quarantined digests, newest first.
func (q Quarantine) List(ctx context.Context, service string) ([]Quarantined, error) {
	dir, err := quarantineDir(service)
	if err != nil {
		return nil, err
	}
	resp, err := q.KAPI.Get(ctx, dir, nil)
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return []Quarantined{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("quarantine: list %s: %w", service, err)
	}
	nodes := slices.Clone(resp.Node.Nodes)
	slices.SortFunc(nodes, func(a, b *client.Node) int { return cmp.Compare(b.ModifiedIndex, a.ModifiedIndex) })
	out := []Quarantined{}
	for _, n := range nodes {
		var e Quarantined
		if json.Unmarshal([]byte(n.Value), &e) == nil && fleetroll.ValidDigest(e.Digest) {
			out = append(out, e)
		}
	}
	return out, nil
}

// ValidDigestPrefix tells whether s names a digest as Clear takes it:
// sha256:HEX, or its first 12 hex digits or more (with or without sha256:).
func ValidDigestPrefix(s string) bool {
	h := strings.TrimPrefix(s, "sha256:")
	return len(h) >= 12 && len(h) <= 64 && strings.Trim(h, "0123456789abcdef") == ""
}

// Clear lifts the quarantine of one of the service's digests, named by
// sha256:HEX or by its first 12 hex digits or more, and returns what it
// cleared; ErrNotQuarantined when none matches.
func (q Quarantine) Clear(ctx context.Context, service, digest string) (*Quarantined, error) {
	if !ValidDigestPrefix(digest) {
		return nil, fmt.Errorf("quarantine: %q: want sha256:HEX or its first 12 hex digits or more", digest)
	}
	want := strings.TrimPrefix(digest, "sha256:")
	all, err := q.List(ctx, service)
	if err != nil {
		return nil, err
	}
	var found []Quarantined
	for _, e := range all {
		if strings.HasPrefix(strings.TrimPrefix(e.Digest, "sha256:"), want) {
			found = append(found, e)
		}
	}
	switch {
	case len(found) == 0:
		return nil, fmt.Errorf("%s of %s: %w", digest, service, ErrNotQuarantined)
	case len(found) > 1:
		return nil, fmt.Errorf("quarantine: %s names %d quarantined digests of %s: give more of it", digest, len(found), service)
	}
	key, _ := quarantineKey(service, found[0].Digest)
	if _, err := q.KAPI.Delete(ctx, key, nil); err != nil {
		if isCode(err, client.ErrorCodeKeyNotFound) {
			return nil, fmt.Errorf("%s of %s: %w", digest, service, ErrNotQuarantined)
		}
		return nil, fmt.Errorf("quarantine: clear %s of %s: %w", found[0].Digest, service, err)
	}
	return &found[0], nil
}

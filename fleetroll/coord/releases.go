package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// ReleasesPrefix is where releases live (docs/releases.md):
//
//	/fleetroll/releases/SERVICE/current     the pinned image, plain text: what
//	                                        the instance unit's ExecStartPre reads
//	/fleetroll/releases/SERVICE/history/N   each release deployed, as JSON
//	                                        (fleetroll.Release), oldest first
const ReleasesPrefix = "/fleetroll/releases"

// ErrReleaseChanged is returned when the current release is not the one the
// caller read: someone else deployed meanwhile.
var ErrReleaseChanged = errors.New("the current release changed meanwhile")

// ReleaseStore keeps each service's current release and its last Keep
// releases in etcd. It implements fleetroll.Releases.
type ReleaseStore struct {
	KAPI client.KeysAPI
	Keep int // default 20
	// Image, when set, is the service's image (REGISTRY/REPOSITORY): Set
	// refuses a release of another one, as the instance unit does.
	Image string
}

func releaseDir(service string) (string, error) {
	if err := fleetroll.ValidateServiceName(service); err != nil {
		return "", fmt.Errorf("releases: %w", err)
	}
	return ReleasesPrefix + "/" + service, nil
}

// Services lists the services that have releases in etcd.
func (s ReleaseStore) Services(ctx context.Context) ([]string, error) {
	resp, err := s.KAPI.Get(ctx, ReleasesPrefix, &client.GetOptions{})
	if client.IsKeyNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("releases: list services: %w", err)
	}
	var out []string
	for _, n := range resp.Node.Nodes {
		if n.Dir {
			out = append(out, strings.TrimPrefix(n.Key, ReleasesPrefix+"/"))
		}
	}
	return out, nil
}

// Current returns the service's current release, with its tag and trigger
// from the history; nil when the service has none yet.
func (s ReleaseStore) Current(ctx context.Context, service string) (*fleetroll.Release, error) {
	dir, err := releaseDir(service)
	if err != nil {
		return nil, err
	}
	resp, err := s.KAPI.Get(ctx, dir+"/current", nil)
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("releases: current of %s: %w", service, err)
	}
	image := resp.Node.Value
	hist, err := s.History(ctx, service)
	if err != nil {
		return nil, err
	}
	for _, r := range hist {
		if r.Image == image {
			return &r, nil
		}
	}
	return &fleetroll.Release{Image: image}, nil
}

// History returns the service's releases, newest first.
func (s ReleaseStore) History(ctx context.Context, service string) ([]fleetroll.Release, error) {
	dir, err := releaseDir(service)
	if err != nil {
		return nil, err
	}
	resp, err := s.KAPI.Get(ctx, dir+"/history", &client.GetOptions{Sort: true})
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("releases: history of %s: %w", service, err)
	}
	var out []fleetroll.Release
	for i := len(resp.Node.Nodes) - 1; i >= 0; i-- {
		var r fleetroll.Release
		if json.Unmarshal([]byte(resp.Node.Nodes[i].Value), &r) == nil && r.Validate() == nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// Set makes rel the current release if the current one is still prev (nil:
// none), then adds it to the history and drops the oldest beyond Keep.
func (s ReleaseStore) Set(ctx context.Context, service string, rel fleetroll.Release, prev *fleetroll.Release) error {
	dir, err := releaseDir(service)
	if err != nil {
		return err
	}
	// What the instance unit runs: REGISTRY/REPOSITORY@sha256:HEX, well
	// formed (never a name starting with -), and the service's own image.
	if err := rel.Validate(); err != nil {
		return fmt.Errorf("releases: %w", err)
	}
	if s.Image != "" && rel.Repository() != s.Image {
		return fmt.Errorf("releases: %s is not an image of %s's repository %s", rel.Image, service, s.Image)
	}
	opts := &client.SetOptions{PrevExist: client.PrevNoExist}
	if prev != nil {
		opts = &client.SetOptions{PrevExist: client.PrevExist, PrevValue: prev.Image}
	}
	if _, err := s.KAPI.Set(ctx, dir+"/current", rel.Image, opts); err != nil {
		if isCode(err, client.ErrorCodeTestFailed) || isCode(err, client.ErrorCodeNodeExist) || isCode(err, client.ErrorCodeKeyNotFound) {
			return fmt.Errorf("releases: set %s of %s: %w", rel.Image, service, ErrReleaseChanged)
		}
		return fmt.Errorf("releases: set %s of %s: %w", rel.Image, service, err)
	}
	b, err := json.Marshal(rel)
	if err != nil {
		return err
	}
	if _, err := s.KAPI.CreateInOrder(ctx, dir+"/history", string(b), nil); err != nil {
		return fmt.Errorf("releases: history of %s: %w", service, err)
	}
	if err := prune(ctx, s.KAPI, dir+"/history", s.Keep, 20); err != nil {
		return fmt.Errorf("releases: %w", err)
	}
	return nil
}

// Clear removes the service's current release when it is still cur (a
// first deploy undone): its instances run their unit's IMAGE again.
func (s ReleaseStore) Clear(ctx context.Context, service string, cur fleetroll.Release) error {
	dir, err := releaseDir(service)
	if err != nil {
		return err
	}
	if _, err := s.KAPI.Delete(ctx, dir+"/current", &client.DeleteOptions{PrevValue: cur.Image}); err != nil {
		if isCode(err, client.ErrorCodeTestFailed) || isCode(err, client.ErrorCodeKeyNotFound) {
			return fmt.Errorf("releases: clear %s of %s: %w", cur.Image, service, ErrReleaseChanged)
		}
		return fmt.Errorf("releases: clear %s of %s: %w", cur.Image, service, err)
	}
	return nil
}

// Previous returns the release to go back to: the newest in the history
// that is not the current one and that no deploy was rolled back from.
func (s ReleaseStore) Previous(ctx context.Context, service string) (*fleetroll.Release, error) {
	cur, err := s.Current(ctx, service)
	if err != nil {
		return nil, err
	}
	if cur == nil {
		return nil, fmt.Errorf("%s has no release yet", service)
	}
	hist, err := s.History(ctx, service)
	if err != nil {
		return nil, err
	}
	if r := PreviousIn(hist, cur.Image); r != nil {
		return r, nil
	}
	return nil, fmt.Errorf("%s has no release before %s in its history", service, cur.Image)
}

// PreviousIn is Previous's choice in a history (newest first) whose
// current image is current: nil when there is none.
func PreviousIn(hist []fleetroll.Release, current string) *fleetroll.Release {
	failed := map[string]bool{}
	for i, r := range hist {
		// Newest first: a release written back by a rollback replaced the
		// one after it, which failed.
		if r.Trigger.Source == fleetroll.TriggerRollback && i+1 < len(hist) {
			failed[hist[i+1].Image] = true
		}
	}
	for _, r := range hist {
		if r.Image != current && !failed[r.Image] {
			return &r
		}
	}
	return nil
}

// Find returns the release of the service's history that a rollout
// deployed, or whose digest is the one given (sha256:HEX, or its first 12 or
// more hex digits).
func (s ReleaseStore) Find(ctx context.Context, service, rolloutOrDigest string) (*fleetroll.Release, error) {
	hist, err := s.History(ctx, service)
	if err != nil {
		return nil, err
	}
	want := strings.TrimPrefix(rolloutOrDigest, "sha256:")
	for _, r := range hist {
		d := strings.TrimPrefix(r.Digest(), "sha256:")
		if r.Rollout == rolloutOrDigest || (len(want) >= 12 && strings.HasPrefix(d, want)) {
			return &r, nil
		}
	}
	return nil, fmt.Errorf("releases: no release of %s deployed by rollout or with digest %q in the last %d", service, rolloutOrDigest, len(hist))
}

// PullReason returns the reader of what a failed pre-pull unit left in etcd
// (fleetroll.PullErrorsPrefix), for fleetroll.PullOptions.Reason.
func PullReason(kapi client.KeysAPI) func(ctx context.Context, key string) string {
	return unitWord(kapi, fleetroll.PullErrorsPrefix)
}

// PruneResult returns the reader of what a prune unit left in etcd
// (fleetroll.PruneResultsPrefix), for fleetroll.PruneOptions.Result.
func PruneResult(kapi client.KeysAPI) func(ctx context.Context, key string) string {
	return unitWord(kapi, fleetroll.PruneResultsPrefix)
}

// unitWord reads what one of fleetroll's one-shot units left under prefix.
func unitWord(kapi client.KeysAPI, prefix string) func(ctx context.Context, key string) string {
	return func(ctx context.Context, key string) string {
		if !strings.HasPrefix(key, prefix+"/") {
			return ""
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		resp, err := kapi.Get(ctx, key, nil)
		if err != nil {
			return ""
		}
		return resp.Node.Value
	}
}

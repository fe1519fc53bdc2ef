package coord

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// PausePrefix is where a rollout paused after its canaries waits for a
// decision: PausePrefix/ROLLOUT, there only while it waits.
const PausePrefix = "/fleetroll/paused"

// Pause is a rollout waiting after its canaries, and the decision taken on
// it once there is one.
type Pause struct {
	Rollout  string              `json:"rollout"`
	Service  string              `json:"service"`
	Canaries []string            `json:"canaries"`
	Since    time.Time           `json:"since"`
	Decision *fleetroll.Decision `json:"decision,omitempty"`
}

// ErrNotPaused is why a decision was refused: no rollout of that ID waits
// for one (it never paused, or its pause is over).
var ErrNotPaused = errors.New("no such rollout is paused")

// ErrDecided is why a second decision on the same pause was refused.
var ErrDecided = errors.New("the pause is already decided")

// Pauses reads and writes the canary pauses in etcd.
type Pauses struct {
	KAPI client.KeysAPI
}

func pauseKey(rollout string) (string, error) {
	if !fleetroll.ValidRolloutID(rollout) {
		return "", fmt.Errorf("rollout ID %q: want letters, digits and dashes", rollout)
	}
	return PausePrefix + "/" + rollout, nil
}

// Open records that the rollout waits for a decision. A pause of the
// rollout already there (left by the fleetroll it was taken over from)
// stays as it is: a decision taken on it meanwhile stands.
func (p Pauses) Open(ctx context.Context, ps Pause) error {
	key, err := pauseKey(ps.Rollout)
	if err != nil {
		return err
	}
	err = putJSON(ctx, p.KAPI, key, "pause of rollout "+ps.Rollout, ps, &client.SetOptions{PrevExist: client.PrevNoExist})
	if isCode(err, client.ErrorCodeNodeExist) {
		return nil
	}
	return err
}

// Close removes the pause (its rollout goes on or ends).
func (p Pauses) Close(ctx context.Context, rollout string) error {
	key, err := pauseKey(rollout)
	if err != nil {
		return err
	}
	return deleteKey(ctx, p.KAPI, key, "pause of rollout "+rollout)
}

// get reads a pause and its etcd index; ErrNotPaused when there is none.
func (p Pauses) get(ctx context.Context, rollout string) (*Pause, uint64, error) {
	key, err := pauseKey(rollout)
	if err != nil {
		return nil, 0, err
	}
	ps, index, err := getJSON[Pause](ctx, p.KAPI, key, "pause of rollout "+rollout)
	if err == nil && ps == nil {
		return nil, 0, fmt.Errorf("rollout %s: %w", rollout, ErrNotPaused)
	}
	return ps, index, err
}

// Decide takes a decision on a paused rollout (compare-and-swap: one
// decision per pause) and returns the pause it decided.
func (p Pauses) Decide(ctx context.Context, rollout string, d fleetroll.Decision) (*Pause, error) {
	ps, index, err := p.get(ctx, rollout)
	if err != nil {
		return nil, err
	}
	if ps.Decision != nil {
		return ps, fmt.Errorf("rollout %s: %w (%s by %s)", rollout, ErrDecided, ps.Decision.Kind, ps.Decision.By)
	}
	ps.Decision = &d
	key, _ := pauseKey(rollout)
	if err := putJSON(ctx, p.KAPI, key, "decide rollout "+rollout, ps, &client.SetOptions{PrevIndex: index}); err != nil {
		if isCode(err, client.ErrorCodeTestFailed) || isCode(err, client.ErrorCodeKeyNotFound) {
			return nil, fmt.Errorf("rollout %s: the pause changed meanwhile, try again: %w", rollout, err)
		}
		return nil, err
	}
	return ps, nil
}

// Await returns the decision taken on the rollout's pause: it watches the
// key and reads it again after each change, and every resync (a watch that
// broke), until ctx ends.
func (p Pauses) Await(ctx context.Context, rollout string, resync time.Duration) (fleetroll.Decision, error) {
	key, err := pauseKey(rollout)
	if err != nil {
		return fleetroll.Decision{}, err
	}
	for {
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ps, index, err := p.get(gctx, rollout)
		cancel()
		switch {
		case errors.Is(err, ErrNotPaused):
			return fleetroll.Decision{}, fmt.Errorf("the pause record of rollout %s was removed", rollout)
		case err == nil && ps.Decision != nil:
			return *ps.Decision, nil
		case ctx.Err() != nil:
			return fleetroll.Decision{}, ctx.Err()
		}
		after := index
		if err != nil {
			after = 0 // etcd unreachable: read again at the resync
		}
		wctx, cancel := context.WithTimeout(ctx, resync)
		if after > 0 {
			_, _ = p.KAPI.Watcher(key, &client.WatcherOptions{AfterIndex: after}).Next(wctx)
		} else {
			<-wctx.Done()
		}
		cancel()
	}
}

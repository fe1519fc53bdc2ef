package coord

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// Drain takes an instance out of the proxy before it is stopped and waits
// until it is back in after it runs again. The proxy routes to the keys
// under Prefix that the sidekick keeps announcing; a drain key under
// DrainPrefix tells the sidekick to stop announcing that instance.
type Drain struct {
	KAPI client.KeysAPI
	// Prefix of the announcements, "/services/my-service"; the key of an
	// instance is Prefix/INSTANCE.
	Prefix string
	// DrainPrefix of the drain keys, "/fleetroll/drain/my-service".
	DrainPrefix string
	// Delay after removing the announcement, so that the proxy stops
	// routing to it and requests in flight finish.
	Delay time.Duration
	// BackTimeout bounds the wait for the announcement after the start.
	BackTimeout time.Duration
	// KeyTTL bounds a drain key's life, should fleetroll die meanwhile.
	KeyTTL time.Duration
	// Clock times the delay; the real clock when nil.
	Clock fleetroll.Clock
}

func instanceOf(unit string) string {
	base := strings.TrimSuffix(unit, ".service")
	_, inst, _ := strings.Cut(base, "@")
	return inst
}

// Out sets the drain key, removes the announcement and waits until it has
// stayed away for the delay. A sidekick that checked the drain key just
// before it appeared can announce the instance once more; Out removes that
// announcement too and starts the delay again, so the proxy has had the
// whole delay without the instance before it is stopped.
// etcd unreachable is an error: the caller must not stop the instance.
func (d Drain) Out(ctx context.Context, unit string) error {
	inst := instanceOf(unit)
	ttl := d.KeyTTL
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	if _, err := d.KAPI.Set(ctx, d.DrainPrefix+"/"+inst, "draining", &client.SetOptions{TTL: ttl}); err != nil {
		return fmt.Errorf("drain %s: set %s/%s: %w", unit, d.DrainPrefix, inst, err)
	}
	key := d.Prefix + "/" + inst
	const maxAnnounced = 5
	for again := 0; ; again++ {
		idx, err := d.remove(ctx, key)
		if err != nil {
			return fmt.Errorf("drain %s: %w", unit, err)
		}
		announced, err := d.quiet(ctx, key, idx)
		if err != nil || !announced {
			if err != nil {
				err = fmt.Errorf("drain %s: %w", unit, err)
			}
			return err
		}
		if again == maxAnnounced {
			return fmt.Errorf("drain %s: %s announced again %d times while draining; is its sidekick honouring %s/%s?",
				unit, key, maxAnnounced+1, d.DrainPrefix, inst)
		}
	}
}

// remove deletes the announcement and returns the etcd index after it.
func (d Drain) remove(ctx context.Context, key string) (uint64, error) {
	resp, err := d.KAPI.Delete(ctx, key, nil)
	if err == nil {
		return resp.Index, nil
	}
	var cerr client.Error
	if errors.As(err, &cerr) && cerr.Code == client.ErrorCodeKeyNotFound {
		return cerr.Index, nil
	}
	return 0, fmt.Errorf("delete %s: %w", key, err)
}

// quiet waits for the delay, watching key from index idx. It returns true
// as soon as the key is set again (announced), false once the delay passed
// without that.
func (d Drain) quiet(ctx context.Context, key string, idx uint64) (bool, error) {
	clock := d.Clock
	if clock == nil {
		clock = fleetroll.SystemClock{}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := clock.NewTimer(d.Delay)
	defer timer.Stop()
	go func() {
		select {
		case <-timer.C():
			cancel()
		case <-wctx.Done():
		}
	}()
	w := d.KAPI.Watcher(key, &client.WatcherOptions{AfterIndex: idx})
	for {
		resp, err := w.Next(wctx)
		switch {
		case ctx.Err() != nil:
			return false, ctx.Err()
		case wctx.Err() != nil:
			return false, nil // the whole delay without an announcement
		case err != nil:
			// Whether the instance is announced again cannot be told.
			return false, fmt.Errorf("watch %s: %w", key, err)
		}
		if resp.Action != "delete" && resp.Action != "expire" && resp.Action != "compareAndDelete" {
			return true, nil
		}
	}
}

// In removes the drain key and waits until the instance is announced again.
func (d Drain) In(ctx context.Context, unit string) error {
	if err := d.Clear(ctx, unit); err != nil {
		return err
	}
	inst := instanceOf(unit)
	key := d.Prefix + "/" + inst
	timeout := d.BackTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		_, err := d.KAPI.Get(wctx, key, nil)
		if err == nil {
			return nil
		}
		if !isCode(err, client.ErrorCodeKeyNotFound) {
			if wctx.Err() != nil {
				return fmt.Errorf("%s not announced again within %s: %w", unit, timeout, err)
			}
			return fmt.Errorf("wait for %s: %w", key, err)
		}
		var cerr client.Error
		errors.As(err, &cerr)
		w := d.KAPI.Watcher(key, &client.WatcherOptions{AfterIndex: cerr.Index})
		if _, err := w.Next(wctx); err != nil {
			if wctx.Err() != nil && ctx.Err() == nil {
				return fmt.Errorf("%s not announced again at %s within %s", unit, key, timeout)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watch %s: %w", key, err)
		}
	}
}

// Clear removes the drain key (idempotent).
func (d Drain) Clear(ctx context.Context, unit string) error {
	_, err := d.KAPI.Delete(ctx, d.DrainPrefix+"/"+instanceOf(unit), nil)
	if err != nil && !isCode(err, client.ErrorCodeKeyNotFound) {
		return fmt.Errorf("undrain %s: %w", unit, err)
	}
	return nil
}

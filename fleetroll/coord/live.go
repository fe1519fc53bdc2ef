package coord

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// LivePrefix is where blue-green records which of a service's two port sets
// serves: LivePrefix/SERVICE.
const LivePrefix = "/fleetroll/live"

// LiveSets are a blue-green service's two port sets: the live one, and the
// spare one the next rollout launches its new units on.
type LiveSets struct {
	Live    []string  `json:"live"`
	Spare   []string  `json:"spare"`
	Rollout string    `json:"rollout"`
	At      time.Time `json:"at"`
}

// Lives reads and writes the live sets.
type Lives struct {
	KAPI client.KeysAPI
}

func liveKey(service string) (string, error) {
	if err := fleetroll.ValidateServiceName(service); err != nil {
		return "", fmt.Errorf("live ports: %w", err)
	}
	return LivePrefix + "/" + service, nil
}

// Get returns the service's live sets, nil before its first blue-green
// rollout.
func (l Lives) Get(ctx context.Context, service string) (*LiveSets, error) {
	key, err := liveKey(service)
	if err != nil {
		return nil, err
	}
	s, _, err := getJSON[LiveSets](ctx, l.KAPI, key, "live ports of "+service)
	return s, err
}

// Put records the service's live sets.
func (l Lives) Put(ctx context.Context, service string, s LiveSets) error {
	key, err := liveKey(service)
	if err != nil {
		return err
	}
	return putJSON(ctx, l.KAPI, key, "live ports of "+service, s, nil)
}

// Resolve says which instances serve now and which the next blue-green
// rollout launches on, from the record and the configuration: ports (the
// configured instances; empty: the launched ones) and spare. Before the
// first rollout the configured ports serve; after it, the record says,
// as long as it names the configured sets.
func (l Lives) Resolve(ctx context.Context, service string, ports, spare []string) (live, next []string, err error) {
	rec, err := l.Get(ctx, service)
	if err != nil {
		return nil, nil, err
	}
	if rec == nil {
		return ports, spare, nil
	}
	same := func(a, b []string) bool {
		a, b = slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b))
		return slices.Equal(a, b)
	}
	switch {
	case len(ports) > 0 && !(same(rec.Live, ports) && same(rec.Spare, spare) || same(rec.Live, spare) && same(rec.Spare, ports)):
		return nil, nil, fmt.Errorf("the live ports of %s in etcd (%v, spare %v) are not the configured sets (%v and %v): fix the configuration or delete %s/%s",
			service, rec.Live, rec.Spare, ports, spare, LivePrefix, service)
	case len(ports) == 0 && !same(rec.Live, spare) && !same(rec.Spare, spare):
		return nil, nil, fmt.Errorf("the live ports of %s in etcd (%v, spare %v) do not include the spare ports %v: fix the configuration or delete %s/%s",
			service, rec.Live, rec.Spare, spare, LivePrefix, service)
	}
	return rec.Live, rec.Spare, nil
}

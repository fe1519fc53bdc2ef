package coord

import (
	"fmt"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// PollerPrefix is where each service's registry poller holds its lease:
// PollerPrefix/SERVICE names the receiver that asks the registry for the
// service's tag (a key with a TTL, kept alive while held).
const PollerPrefix = "/fleetroll/pollers"

// PollerLease is the lease a receiver holds while it polls a service's
// registry: one poller per service however many receivers run. The others
// wait on it (Acquire with wait) and one of them takes over within a TTL of
// the holder's end. It is a Lock of its own, apart from the service's
// rollout lock and its queue's claim: polling goes on while a rollout runs.
func PollerLease(kapi client.KeysAPI, service, owner string, ttl time.Duration, clock fleetroll.Clock) (Lock, error) {
	if err := fleetroll.ValidateServiceName(service); err != nil {
		return Lock{}, fmt.Errorf("poller lease: %w", err)
	}
	return Lock{KAPI: kapi, Key: PollerPrefix + "/" + service, Owner: owner, TTL: ttl, Clock: clock}, nil
}

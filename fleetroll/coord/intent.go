package coord

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// IntentPrefix is where a rollout records, under the service's lock and
// before it acts, the units it is taking down: IntentPrefix/SERVICE.
const IntentPrefix = "/fleetroll/intents"

// Intent is what a rollout has in flight: each unit it drained or stopped
// and has not brought back yet. A fleetroll that takes the lock and finds
// one left by a holder that is gone restores its units first.
type Intent struct {
	Rollout string            `json:"rollout"`
	Trigger fleetroll.Trigger `json:"trigger"`
	Owner   string            `json:"owner"`
	Started time.Time         `json:"started"`
	Units   []IntentUnit      `json:"units"`
}

// IntentUnit is one unit in flight: the phase it entered last, and what it
// must return to (fleet's target launched, its announcement back).
type IntentUnit struct {
	Unit  string          `json:"unit"`
	Phase fleetroll.Phase `json:"phase"`
	Since time.Time       `json:"since"`
}

// Intents reads and writes the intent records.
type Intents struct {
	KAPI client.KeysAPI
}

func intentKey(service string) (string, error) {
	if err := fleetroll.ValidateServiceName(service); err != nil {
		return "", fmt.Errorf("intent: %w", err)
	}
	return IntentPrefix + "/" + service, nil
}

// Get returns the service's intent, nil when there is none.
func (i Intents) Get(ctx context.Context, service string) (*Intent, error) {
	key, err := intentKey(service)
	if err != nil {
		return nil, err
	}
	in, _, err := getJSON[Intent](ctx, i.KAPI, key, "intent of "+service)
	return in, err
}

// Put writes the service's intent; with no unit in flight it deletes it.
func (i Intents) Put(ctx context.Context, service string, in Intent) error {
	key, err := intentKey(service)
	if err != nil {
		return err
	}
	if len(in.Units) == 0 {
		return i.Delete(ctx, service)
	}
	return putJSON(ctx, i.KAPI, key, "intent of "+service, in, nil)
}

// Delete removes the service's intent.
func (i Intents) Delete(ctx context.Context, service string) error {
	key, err := intentKey(service)
	if err != nil {
		return err
	}
	return deleteKey(ctx, i.KAPI, key, "intent of "+service)
}

// Recorder returns the function that keeps one rollout's intent in etcd
// as its units move (fleetroll.Hooks.Intent): each call records that unit
// entered phase p ("" once it is back).
func (i Intents) Recorder(service string, in Intent, clock fleetroll.Clock) func(ctx context.Context, unit string, p fleetroll.Phase) error {
	r := &recorder{store: i, service: service, intent: in, clock: clock}
	return r.phase
}

// recorder keeps one rollout's intent in etcd as its units move.
type recorder struct {
	mu      sync.Mutex // units of one batch move at once
	store   Intents
	service string
	intent  Intent
	clock   fleetroll.Clock
}

// phase records that unit entered phase p ("" once it is back).
func (r *recorder) phase(ctx context.Context, unit string, p fleetroll.Phase) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	units := slices.DeleteFunc(slices.Clone(r.intent.Units), func(u IntentUnit) bool { return u.Unit == unit })
	if p != "" {
		units = append(units, IntentUnit{Unit: unit, Phase: p, Since: r.clock.Now()})
	}
	next := r.intent
	next.Units = units
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.store.Put(wctx, r.service, next); err != nil {
		return err
	}
	r.intent = next
	return nil
}

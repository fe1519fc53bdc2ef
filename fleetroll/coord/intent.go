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
	// BlueGreen, for a blue-green rollout, says which set was being
	// launched and whether the switch to it was made.
	BlueGreen *BlueGreenIntent `json:"blue_green,omitempty"`
}

// BlueGreenIntent is where a blue-green rollout stands: Live serve (or
// served, once Switched), New are being launched (or serve, once
// Switched); Sidekick is the template of each instance's sidekick.
type BlueGreenIntent struct {
	Live     []string `json:"live"`
	New      []string `json:"new"`
	Sidekick string   `json:"sidekick,omitempty"`
	Switched bool     `json:"switched"`
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

// Put writes the service's intent; with no unit in flight (and no
// blue-green switch under way) it deletes it.
func (i Intents) Put(ctx context.Context, service string, in Intent) error {
	key, err := intentKey(service)
	if err != nil {
		return err
	}
	if len(in.Units) == 0 && in.BlueGreen == nil {
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

// Recorder returns what keeps one rollout's intent in etcd as its units
// move.
func (i Intents) Recorder(service string, in Intent, clock fleetroll.Clock) *Recorder {
	return &Recorder{store: i, service: service, intent: in, clock: clock}
}

// Recorder keeps one rollout's intent in etcd as its units move.
type Recorder struct {
	mu      sync.Mutex // units of one batch move at once
	store   Intents
	service string
	intent  Intent
	clock   fleetroll.Clock
}

// BlueGreen records where a blue-green rollout stands; nil once nothing
// of it is left for a recovery to do.
func (r *Recorder) BlueGreen(ctx context.Context, bg *BlueGreenIntent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	next := r.intent
	next.BlueGreen = bg
	return r.commit(ctx, next)
}

// commit writes next and keeps it as the intent once written (r.mu held).
func (r *Recorder) commit(ctx context.Context, next Intent) error {
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.store.Put(wctx, r.service, next); err != nil {
		return err
	}
	r.intent = next
	return nil
}

// Phase records that unit entered phase p ("" once it is back): the
// fleetroll.Hooks.Intent of a rollout.
func (r *Recorder) Phase(ctx context.Context, unit string, p fleetroll.Phase) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	units := slices.DeleteFunc(slices.Clone(r.intent.Units), func(u IntentUnit) bool { return u.Unit == unit })
	if p != "" {
		units = append(units, IntentUnit{Unit: unit, Phase: p, Since: r.clock.Now()})
	}
	next := r.intent
	next.Units = units
	return r.commit(ctx, next)
}

package fleetroll

import "time"

// Defaults of the drain and the health gate (rollout.Settings.Complete
// fills them in).
const (
	DefaultDrainPrefix     = "/services/{service}"
	DefaultDrainDelay      = 5 * time.Second
	DefaultDrainTimeout    = time.Minute
	DefaultHealthSuccesses = 3
	DefaultHealthInterval  = time.Second
	DefaultHealthTimeout   = 2 * time.Minute
)

// StrategyRolling restarts units in place (one at a time or in batches).
const StrategyRolling = "rolling"

// DrainPolicy says where instances are announced and how long a drain waits.
// Zero values take the defaults.
type DrainPolicy struct {
	// Prefix of the announcements, PREFIX/INSTANCE; {service} stands for
	// the service's name.
	Prefix string `yaml:"prefix"`
	// Delay after the announcement is gone, for requests in flight.
	Delay time.Duration `yaml:"delay"`
	// Timeout for the announcement to come back after the start.
	Timeout time.Duration `yaml:"timeout"`
}

// HealthPolicy is the health gate: GET http://MACHINE_IP:PORT/PATH until it
// answers 2xx Successes times in a row. Zero values take the defaults.
type HealthPolicy struct {
	Path      string        `yaml:"path"`
	Successes int           `yaml:"successes"`
	Interval  time.Duration `yaml:"interval"`
	Timeout   time.Duration `yaml:"timeout"`
}

// Gate returns the health gate of the policy.
func (h HealthPolicy) Gate() *HealthGate {
	return &HealthGate{Path: h.Path, Successes: h.Successes, Interval: h.Interval, Timeout: h.Timeout}
}

// orDefault sets *v to def when it is the zero value.
func orDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

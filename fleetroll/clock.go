package fleetroll

import "time"

// Clock is the time source of everything that waits: the roller, the health
// gate, serve's queue. Tests inject a fake one.
type Clock interface {
	Now() time.Time
	// After waits for d like time.After.
	After(d time.Duration) <-chan time.Time
	// NewTimer makes a timer that fires once after d, like time.NewTimer.
	NewTimer(d time.Duration) Timer
}

// Timer is a stoppable one-shot timer made by a Clock.
type Timer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; false if it already fired.
	Stop() bool
}

// SystemClock is the real clock.
type SystemClock struct{}

func (SystemClock) Now() time.Time                         { return time.Now() }
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (SystemClock) NewTimer(d time.Duration) Timer         { return sysTimer{time.NewTimer(d)} }

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }
func (t sysTimer) Stop() bool          { return t.t.Stop() }

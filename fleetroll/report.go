package fleetroll

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Phase is a step of one unit's restart.
type Phase string

const (
	PhaseStop   Phase = "stop"
	PhaseStart  Phase = "start"
	PhaseDrain  Phase = "drain"  // before the stop: taking the unit out of the proxy
	PhaseHealth Phase = "health" // after the start: health gate, back in the proxy
)

// Outcome is what happened to one unit.
type Outcome string

const (
	OutcomeRestarted   Outcome = "restarted"   // stop observed, running again
	OutcomeFailed      Outcome = "failed"      // the roll halted on this unit
	OutcomeInterrupted Outcome = "interrupted" // cancelled; the unit was brought back up
	OutcomeUntouched   Outcome = "untouched"   // the roll halted before this unit
)

// Seconds is a duration that marshals to JSON as fractional seconds.
type Seconds time.Duration

func (s Seconds) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(s).Round(time.Millisecond).Seconds())
}

func (s *Seconds) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*s = Seconds(f * float64(time.Second))
	return nil
}

func (s Seconds) String() string { return time.Duration(s).Round(time.Millisecond).String() }

// UnitReport is the outcome of one unit.
type UnitReport struct {
	Unit    string  `json:"unit"`
	Outcome Outcome `json:"outcome"`
	// Phase and LastState say where a failed or interrupted unit was.
	Phase     Phase  `json:"phase,omitempty"`
	LastState string `json:"last_state,omitempty"`
	// LeftStopped is set when fleetroll stopped the unit and could not
	// bring it back.
	LeftStopped bool `json:"left_stopped,omitempty"`
	// Machine is the (short) ID of the machine the unit runs on after its
	// restart; MovedFrom the one it ran on before, when fleet placed it on
	// another machine meanwhile (its machine was lost, say).
	Machine   string  `json:"machine,omitempty"`
	MovedFrom string  `json:"moved_from,omitempty"`
	Stop      Seconds `json:"stop_seconds"`
	Start     Seconds `json:"start_seconds"`
	Total     Seconds `json:"total_seconds"`
	Error     string  `json:"error,omitempty"`
}

// Report is the outcome of a roll.
type Report struct {
	ID       string       `json:"id,omitempty"`
	Service  string       `json:"service"`
	Started  time.Time    `json:"started"`
	Finished time.Time    `json:"finished"`
	Result   string       `json:"result"` // succeeded, failed or interrupted
	Units    []UnitReport `json:"units"`
	Error    string       `json:"error,omitempty"`
}

// Restarted counts the units restarted.
func (r *Report) Restarted() int {
	n := 0
	for _, u := range r.Units {
		if u.Outcome == OutcomeRestarted {
			n++
		}
	}
	return n
}

// UnitError says which unit a roll halted on, in which phase, and what fleet
// reported last.
type UnitError struct {
	Unit      string
	Phase     Phase
	LastState string
	// LeftStopped: fleetroll stopped this unit and could not start it again.
	LeftStopped bool
	Err         error
}

func (e *UnitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %v", e.Phase, e.Unit, e.Err)
	if e.LastState != "" {
		fmt.Fprintf(&b, " (last state: %s)", e.LastState)
	}
	if e.LeftStopped {
		fmt.Fprintf(&b, "; %s IS DOWN: fleetroll stopped it and could not start it again", e.Unit)
	}
	return b.String()
}

func (e *UnitError) Unwrap() error { return e.Err }

package fleetroll

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// SchemaVersion is the version of the rollout record (docs/record.md). A
// record without a version was written before the schema had one; it is
// read and upgraded (see Report.UnmarshalJSON).
const SchemaVersion = 1

// Status is where a rollout is: one vocabulary for the roller, the queue,
// the API, the history and the CLI.
type Status string

const (
	StatusQueued      Status = "queued"      // waiting in serve's queue
	StatusRunning     Status = "running"     // the roller is at work
	StatusSucceeded   Status = "succeeded"   // every unit restarted
	StatusFailed      Status = "failed"      // halted on a unit, or could not start
	StatusInterrupted Status = "interrupted" // began, then stopped by a signal or a shutdown
	StatusSuperseded  Status = "superseded"  // never ran: a newer trigger took its place
	StatusCancelled   Status = "cancelled"   // never ran: fleetroll shut down first
	// StatusRolledBack: an instance failed on the new release, and every
	// instance moved was returned to the previous one (docs/releases.md).
	StatusRolledBack Status = "rolled_back"
	// StatusPaused: the canaries are back; the rollout waits for a
	// decision (promote or abort).
	StatusPaused Status = "paused"
	// StatusAborted: the canary pause ended in an abort; the other units
	// were not touched (a deploy rolls the canaries back: rolled_back).
	StatusAborted Status = "aborted"
	// StatusRefused: never ran: its release is quarantined, or a sender's
	// tag is outside the service's tag policy (docs/releases.md); nothing
	// was touched.
	StatusRefused Status = "refused"
)

// Final reports whether the status will not change any more.
func (s Status) Final() bool {
	return s != StatusQueued && s != StatusRunning && s != StatusPaused && s != ""
}

// Phase is a step of one unit's restart.
type Phase string

const (
	PhaseDrain  Phase = "drain"  // before the stop: taking the unit out of the proxy
	PhaseStop   Phase = "stop"   // stop requested until fleet reports it stopped
	PhaseStart  Phase = "start"  // start requested until fleet reports it running
	PhaseHealth Phase = "health" // after the start: health gate, back in the proxy
	// PhaseWatch: after the health gate, the unit watched for its minimum
	// healthy time (fleet's state, and its health check when set).
	PhaseWatch Phase = "watch"
	PhaseGrace Phase = "grace" // the wait after the unit before the next one
	// PhasePull is the rollout's pre-pull of a release, before any unit.
	PhasePull Phase = "pull"
)

// Outcome is what happened to one unit.
type Outcome string

const (
	OutcomePending     Outcome = "pending"     // not reached yet (the rollout runs)
	OutcomeInProgress  Outcome = "in_progress" // being restarted now; Phase says where
	OutcomeRestarted   Outcome = "restarted"   // stop observed, running again
	OutcomeFailed      Outcome = "failed"      // the roll halted on this unit
	OutcomeInterrupted Outcome = "interrupted" // cancelled; the unit was brought back up
	OutcomeUntouched   Outcome = "untouched"   // the roll ended before this unit
	OutcomeRolledBack  Outcome = "rolled_back" // moved to the new release, then back to the previous one
	// Blue-green: a new unit that serves, an old one stopped and
	// destroyed, a new one destroyed again because the switch failed.
	OutcomeLaunched  Outcome = "launched"
	OutcomeRetired   Outcome = "retired"
	OutcomeDestroyed Outcome = "destroyed"
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

// Span is when one phase of a unit began and ended (Finished is zero while
// it runs). A timeline is drawn from these.
type Span struct {
	Phase    Phase     `json:"phase"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	// Diagnosis, on a stop or start that fleet had not acted on after
	// StallAfter, says what fleet's agent and published state showed
	// then, and what fleetroll did about it.
	Diagnosis string `json:"diagnosis,omitempty"`
}

// UnitReport is one unit's part of a rollout.
type UnitReport struct {
	Unit    string  `json:"unit"`
	Outcome Outcome `json:"outcome"`
	// Phase says where an in-progress, failed or interrupted unit is or was.
	Phase Phase `json:"phase,omitempty"`
	// LastState is the last state fleet reported for it.
	LastState string `json:"last_state,omitempty"`
	// LeftStopped is set when fleetroll stopped the unit and could not
	// bring it back.
	LeftStopped bool `json:"left_stopped,omitempty"`
	// Machine is the (short) ID of the machine the unit runs on after its
	// restart; MovedFrom the one it ran on before, when fleet placed it on
	// another machine meanwhile (its machine was lost, say).
	Machine   string `json:"machine,omitempty"`
	MovedFrom string `json:"moved_from,omitempty"`
	// ImageDigest is the image the unit was started with, when known.
	ImageDigest string  `json:"image_digest,omitempty"`
	Stop        Seconds `json:"stop_seconds"`
	Start       Seconds `json:"start_seconds"`
	Total       Seconds `json:"total_seconds"`
	// Phases are the unit's steps in order, with their times.
	Phases []Span `json:"phases,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Trigger is what asked for a rollout.
type Trigger struct {
	// Source: dockerhub, registry, github, manual (POST /rollouts) or cli.
	Source     string `json:"source"`
	Repository string `json:"repository,omitempty"`
	Tag        string `json:"tag,omitempty"`
	Digest     string `json:"digest,omitempty"`
	Pusher     string `json:"pusher,omitempty"`
	// PushedAt is the sender's push time (Docker Hub), as sent.
	PushedAt  string    `json:"pushed_at,omitempty"`
	RequestID string    `json:"request_id,omitempty"`
	Received  time.Time `json:"received,omitzero"`
}

// String is "source repository:tag", or the source alone.
func (t Trigger) String() string {
	if t.Repository == "" {
		return t.Source
	}
	s := t.Source + " " + t.Repository
	if t.Tag != "" {
		s += ":" + t.Tag
	}
	return s
}

// UnmarshalJSON also reads the records written before the schema had a
// version, whose trigger was one string: "cli" or "dockerhub repo:tag".
func (t *Trigger) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		source, image, _ := strings.Cut(s, " ")
		repo, tag, _ := strings.Cut(image, ":")
		*t = Trigger{Source: source, Repository: repo, Tag: tag}
		return nil
	}
	type plain Trigger
	return json.Unmarshal(b, (*plain)(t))
}

// QueueInfo is what serve's queue adds to a rollout it ran or dropped.
type QueueInfo struct {
	Queued time.Time `json:"queued"`
	// FirstQueued is when the oldest trigger it took the place of was
	// queued (zero when it superseded none): serve's maximum wait counts
	// from it, so a flood of pushes cannot put a rollout off for ever.
	FirstQueued time.Time `json:"first_queued,omitzero"`
	// SupersededBy is the rollout that took this queued one's place.
	SupersededBy string `json:"superseded_by,omitempty"`
	// Supersedes are the most recent rollouts this one took the place of
	// (at most MaxSupersedes); SupersedesDropped counts the older ones.
	Supersedes        []string `json:"supersedes,omitempty"`
	SupersedesDropped int      `json:"supersedes_dropped,omitempty"`
	// Resumed lists the receivers that took this rollout over after the
	// one running it stopped (serve with etcd), oldest first.
	Resumed []Resumption `json:"resumed,omitempty"`
}

// Resumption is one takeover of a rollout by another receiver.
type Resumption struct {
	At time.Time `json:"at"`
	By string    `json:"by"`
	// Done are the units that were already restarted (by the rollout, or
	// by the recovery of its units in flight) and were not restarted again.
	Done []string `json:"done,omitempty"`
}

// Report is the record of one rollout: what the roller did, and who asked
// for it. restart -o json prints it, serve's API answers it, the etcd
// history stores it and fleetroll status reads it back, all in this shape
// (docs/record.md).
type Report struct {
	Version int     `json:"version"`
	ID      string  `json:"id"`
	Service string  `json:"service"`
	Status  Status  `json:"status"`
	Trigger Trigger `json:"trigger"`
	// Strategy is how the units were replaced: empty for restarts in
	// place (one at a time or in batches), blue-green.
	Strategy string `json:"strategy,omitempty"`
	// By names the fleetroll that ran it.
	By    string     `json:"by,omitempty"`
	Queue *QueueInfo `json:"queue,omitempty"`
	// Started and Finished are the roller's; zero until it starts or ends.
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Release is the move from one release to another, for a service with
	// an image (nil otherwise); Pull is the pre-pull of the new release.
	Release *ReleaseChange `json:"release,omitempty"`
	Pull    *PullReport    `json:"pull,omitempty"`
	// Prune is the removal of the service's older release images from
	// every machine, after a deploy or rollback that succeeded.
	Prune *PruneReport `json:"prune,omitempty"`
	// Canary is the pause after the first units, when there was one.
	Canary *CanaryReport `json:"canary,omitempty"`
	Units  []UnitReport  `json:"units"`
	// NotLaunched are the service's units loaded in fleet but not launched
	// (no rollout left them so): they were not touched.
	NotLaunched []string `json:"not_launched,omitempty"`
	// Phase is where a failed rollout halted: pull, or the phase of the
	// unit it halted on.
	Phase Phase  `json:"phase,omitempty"`
	Error string `json:"error,omitempty"`
}

// ReleaseChange is the release a rollout moved a service from (nil for a
// first deploy) and the one it moved it to.
type ReleaseChange struct {
	From *Release `json:"from,omitempty"`
	To   Release  `json:"to"`
}

// UnmarshalJSON reads a record and upgrades one written before the schema
// had a version: serve then called a rollout stopped by its shutdown
// "cancelled"; now "cancelled" is only for one that never started.
func (r *Report) UnmarshalJSON(b []byte) error {
	type plain Report
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	if p.Version == 0 {
		if p.Status == StatusCancelled && !p.Started.IsZero() {
			p.Status = StatusInterrupted
		}
		if p.Units == nil {
			p.Units = []UnitReport{}
		}
		p.Version = SchemaVersion
	}
	*r = Report(p)
	return nil
}

// Clone returns a deep copy.
func (r *Report) Clone() Report {
	c := *r
	c.Units = make([]UnitReport, len(r.Units))
	for i, u := range r.Units {
		u.Phases = append([]Span(nil), u.Phases...)
		c.Units[i] = u
	}
	if r.Release != nil {
		rc := *r.Release
		if rc.From != nil {
			f := *rc.From
			rc.From = &f
		}
		c.Release = &rc
	}
	if r.Pull != nil {
		p := *r.Pull
		p.Machines = append([]MachinePull(nil), r.Pull.Machines...)
		c.Pull = &p
	}
	if r.Prune != nil {
		p := *r.Prune
		p.Keep, p.Remove = slices.Clone(r.Prune.Keep), slices.Clone(r.Prune.Remove)
		p.Machines = make([]MachinePrune, len(r.Prune.Machines))
		for i, m := range r.Prune.Machines {
			m.Removed, m.Kept, m.Absent = slices.Clone(m.Removed), slices.Clone(m.Kept), slices.Clone(m.Absent)
			p.Machines[i] = m
		}
		c.Prune = &p
	}
	if r.Canary != nil {
		cr := *r.Canary
		cr.Units = append([]string(nil), r.Canary.Units...)
		c.Canary = &cr
	}
	if r.Queue != nil {
		q := *r.Queue
		q.Supersedes = append([]string(nil), r.Queue.Supersedes...)
		q.Resumed = append([]Resumption(nil), r.Queue.Resumed...)
		c.Queue = &q
	}
	return c
}

// Restarted counts the units restarted.
// Done says how many of the rollout's instances are done and how many it
// has: restarted of the units, or for blue-green, new units launched of
// the instances (the record lists the old units, then the new).
func (r *Report) Done() (done, of int) {
	if r.Strategy != StrategyBlueGreen {
		return r.Restarted(), len(r.Units)
	}
	for _, u := range r.Units {
		if u.Outcome == OutcomeLaunched {
			done++
		}
	}
	return done, len(r.Units) / 2
}

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

// JoinInterrupted is the one record of a rollout that its fleetroll's end
// interrupted, from two records of it that were each written knowing a
// part: the queue's, when a newer push took the place of a rollout whose
// receiver had stopped (what it superseded, which rollout took its place,
// the units it had done), and the recovery's of the intent it left (the
// units it had in flight, and whether they were brought back). later is
// the one being written, stored the one already saved; either may come
// first. later's account wins where both have one, except a unit's: there
// the final outcome wins over an in-progress one. What only stored knows is
// kept, and both errors are said. A record of a rollout that ended on its
// own (succeeded, failed, ...) is kept as it is, with the rollout that
// took its place added.
func JoinInterrupted(stored, later Report) Report {
	out := later.Clone()
	st := stored.Clone()
	// One that ended on its own (its receiver died after its end, before
	// its queue entry was removed) keeps its record: the other only adds
	// which rollout took its place.
	for _, p := range [][2]*Report{{&st, &out}, {&out, &st}} {
		if ended, other := p[0], p[1]; endedOnItsOwn(ended.Status) && !endedOnItsOwn(other.Status) {
			if other.Queue != nil && other.Queue.SupersededBy != "" {
				if ended.Queue == nil {
					ended.Queue = &QueueInfo{}
				}
				ended.Queue.SupersededBy = cmp.Or(ended.Queue.SupersededBy, other.Queue.SupersededBy)
			}
			return *ended
		}
	}
	if st.Status == StatusInterrupted {
		out.Status = StatusInterrupted
	}
	if out.Trigger.Source == "" {
		out.Trigger = st.Trigger
	}
	out.Strategy = cmp.Or(out.Strategy, st.Strategy)
	out.By = cmp.Or(out.By, st.By)
	if out.Started.IsZero() || !st.Started.IsZero() && st.Started.Before(out.Started) {
		out.Started = st.Started
	}
	if st.Finished.After(out.Finished) {
		out.Finished = st.Finished
	}
	out.Release = cmp.Or(out.Release, st.Release)
	out.Pull = cmp.Or(out.Pull, st.Pull)
	out.Prune = cmp.Or(out.Prune, st.Prune)
	out.Canary = cmp.Or(out.Canary, st.Canary)
	if len(out.NotLaunched) == 0 {
		out.NotLaunched = st.NotLaunched
	}
	out.Phase = cmp.Or(out.Phase, st.Phase)
	switch {
	case out.Queue == nil:
		out.Queue = st.Queue
	case st.Queue != nil:
		q, sq := out.Queue, st.Queue
		q.SupersededBy = cmp.Or(q.SupersededBy, sq.SupersededBy)
		if q.Queued.IsZero() {
			q.Queued = sq.Queued
		}
		if q.FirstQueued.IsZero() {
			q.FirstQueued = sq.FirstQueued
		}
		if len(q.Supersedes) == 0 {
			q.Supersedes, q.SupersedesDropped = sq.Supersedes, sq.SupersedesDropped
		}
		if len(sq.Resumed) > len(q.Resumed) {
			q.Resumed = sq.Resumed
		}
	}
	// The units, in the order of the longer list (the rollout's plan):
	// later's report of each unless it is still under way where stored's
	// is not.
	byName := map[string]UnitReport{}
	for _, s := range st.Units {
		byName[s.Unit] = s
	}
	for _, l := range out.Units {
		if s, ok := byName[l.Unit]; !ok || !l.Outcome.underWay() || s.Outcome.underWay() {
			byName[l.Unit] = l
		}
	}
	order := st.Units
	if len(out.Units) > len(order) {
		order = out.Units
	}
	units := make([]UnitReport, 0, len(byName))
	for _, u := range append(slices.Clone(order), append(st.Units, out.Units...)...) {
		if r, ok := byName[u.Unit]; ok {
			units = append(units, r)
			delete(byName, u.Unit)
		}
	}
	out.Units = units
	switch {
	case st.Error == "" || strings.Contains(out.Error, st.Error):
	case out.Error == "" || strings.Contains(st.Error, out.Error):
		out.Error = st.Error
	default:
		out.Error += "; " + st.Error
	}
	return out
}

// endedOnItsOwn: a rollout's end that no fleetroll's stop made
// (succeeded, failed, rolled back, aborted, refused).
func endedOnItsOwn(s Status) bool {
	return s.Final() && s != StatusInterrupted && s != StatusSuperseded && s != StatusCancelled
}

// underWay: the unit's outcome is not known yet.
func (o Outcome) underWay() bool { return o == OutcomePending || o == OutcomeInProgress || o == "" }

// Package fakefleet is the one fake fleet of the unit tests: an in-memory
// cluster served over the part of fleet's v1 HTTP API that fleetroll uses
// (list units, unit states, set a target state, create and destroy a unit,
// list machines), so that every test also goes through fleet's own client
// and fleetroll's HTTP adapter. Unit states move one step per state poll after a target state is
// set. Every call is logged; faults can be injected; a hook sees each call.
package fakefleet

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
)

// DefaultMachine is the machine units run on unless told otherwise.
const DefaultMachine = "machine-1"

// Unit is a unit in the fake cluster.
type Unit struct {
	Desired string // inactive, loaded or launched
	Active  string // systemd ActiveState
	Sub     string // systemd SubState
	Machine string
	// NoState: fleet publishes no state for it (fleet restarting, say).
	NoState bool
	// StopPolls and StartPolls are the polls a stop or a start takes
	// (0: the fleet's Steps).
	StopPolls, StartPolls int
	StuckStop             bool // never leaves active
	FailStart             bool // goes to failed instead of running
	StopFailed            bool // the stop ends in "failed" (exit status on SIGTERM)
	// Restarts counts completed starts (a stand-in for a new MainPID).
	Restarts int
	// CrashAfter: a unit started through the fake fails (failed/failed)
	// after this many polls of it running (0: never), as a release that
	// dies a few seconds after its start.
	CrashAfter int
	upPolls    int
	// MissWrites: the next writes of its target state are recorded but not
	// acted on, as fleet's agent misses a write that lands in its blind
	// second; a later write is acted on.
	MissWrites int
	// Current is the target the agent last acted on (fleet's
	// currentState); empty means Desired.
	Current string
	// NoHeartbeat: fleet reports currentState "loaded" for a unit its
	// agent holds launched, as until the agent's next heartbeat of a unit
	// created again.
	NoHeartbeat bool
	// PublishLag: after the agent acts on a write, the published state
	// stays as it was for this many polls (fleet publishes states once a
	// second).
	PublishLag int
	lagLeft    int
	// Moving: a target state was set and not yet reached; Pending polls
	// are left in the transition.
	Moving  bool
	Pending int
	// Options are those it was created with (PUT with options).
	Options []Option
}

// Option is one line of a unit file, as fleet's API carries it.
type Option struct {
	Section string `json:"section"`
	Name    string `json:"name"`
	Value   string `json:"value"`
}

// Option returns the value of a unit's option, "" when it has none.
func (u Unit) Option(section, name string) string {
	for _, o := range u.Options {
		if o.Section == section && o.Name == name {
			return o.Value
		}
	}
	return ""
}

// Fault is what the next call answers instead of being carried out.
type Fault struct {
	Status  int    // an HTTP status with fleet's error body
	Message string // its message
	Drop    bool   // close the connection without an answer
	Hang    bool   // answer nothing until the client gives up
}

// Fleet is the fake cluster; use New.
type Fleet struct {
	mu       sync.Mutex
	units    map[string]*Unit
	calls    []string
	faults   []Fault
	hook     func(call string)
	created  func(name string, u *Unit)
	machines map[string]string
	// unloading: units destroyed whose machines' agents have not unloaded
	// them yet (unit: machine): fleet lists no such unit, and still
	// publishes its state.
	unloading map[string]string
	// Steps is the polls a transition takes when a unit does not say
	// (default 2).
	Steps int
	// PageSize is the number of units per list page (default 2), so that
	// callers must follow nextPageToken.
	PageSize int
}

// New returns a cluster in which every named unit is launched and running
// on DefaultMachine, whose public IP is 127.0.0.1.
func New(names ...string) *Fleet {
	f := &Fleet{units: map[string]*Unit{}, Steps: 2, PageSize: 2, machines: map[string]string{DefaultMachine: "127.0.0.1"}}
	for _, n := range names {
		f.Add(n, Unit{})
	}
	return f
}

// Add adds a unit; one without a desired state is launched and running.
func (f *Fleet) Add(name string, u Unit) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if u.Desired == "" {
		u.Desired, u.Active, u.Sub = "launched", "active", "running"
	}
	if u.Machine == "" {
		u.Machine = DefaultMachine
	}
	f.units[name] = &u
}

// Unit returns a copy of a unit.
func (f *Fleet) Unit(name string) (Unit, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.units[name]
	if !ok {
		return Unit{}, false
	}
	return *u, true
}

// Update changes a unit under the fake's lock.
func (f *Fleet) Update(name string, fn func(*Unit)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.units[name])
}

// AddUnloading adds a unit destroyed that the agent of machine has not
// unloaded yet: fleet lists no such unit, and still publishes its state
// (active/running on machine) among all units' states.
func (f *Fleet) AddUnloading(name, machine string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.unloading == nil {
		f.unloading = map[string]string{}
	}
	f.unloading[name] = machine
}

// SetMachines replaces the machines GET /machines lists (ID to public IP);
// nil makes it answer 500.
func (f *Fleet) SetMachines(m map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.machines = maps.Clone(m)
}

// SetHook sets a function called with each call as it is logged, before
// it is carried out, outside the fake's lock.
func (f *Fleet) SetHook(fn func(call string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = fn
}

// OnCreate sets a function that may change each unit created through the
// API (PUT with options) before it is stored, under the fake's lock. A
// created unit is placed on the machine its X-Fleet MachineID= names and
// starts like any unit; a oneshot unit ends active/exited.
func (f *Fleet) OnCreate(fn func(name string, u *Unit)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created = fn
}

// FailNext makes the next calls answer these faults, one each, in order.
func (f *Fleet) FailNext(faults ...Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, faults...)
}

// Calls returns every call in order: "units", "unit NAME", "machines",
// "set NAME STATE",
// and "state NAME -> ACTIVE/SUB" (or "state NAME" when none is published).
func (f *Fleet) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// Sets returns the target states set, as "NAME STATE", in order.
func (f *Fleet) Sets() []string {
	var out []string
	for _, c := range f.Calls() {
		if len(c) > 4 && c[:4] == "set " {
			out = append(out, c[4:])
		}
	}
	return out
}

// ServeHTTP implements the fleet v1 API subset.
func (f *Fleet) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /fleet/v1/units", f.listUnits)
	mux.HandleFunc("GET /fleet/v1/state", f.listStates)
	// Like fleet v1.0.0, GET /state/NAME drops the connection (a server
	// panic) for a unit without state; callers use the filtered list.
	mux.HandleFunc("GET /fleet/v1/state/{name}", func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })
	mux.HandleFunc("GET /fleet/v1/machines", f.listMachines)
	mux.HandleFunc("GET /fleet/v1/units/{name}", f.getUnit)
	mux.HandleFunc("PUT /fleet/v1/units/{name}", f.setUnit)
	mux.HandleFunc("DELETE /fleet/v1/units/{name}", f.destroyUnit)
	mux.ServeHTTP(w, r)
}

// record logs a call, runs the hook and takes the next fault, if any.
func (f *Fleet) record(call string) *Fault {
	f.mu.Lock()
	f.calls = append(f.calls, call)
	var fault *Fault
	if len(f.faults) > 0 {
		fault = &f.faults[0]
		f.faults = f.faults[1:]
	}
	hook := f.hook
	f.mu.Unlock()
	if hook != nil {
		hook(call)
	}
	return fault
}

// answerFault answers a fault; false when there is none.
func answerFault(w http.ResponseWriter, r *http.Request, fault *Fault) bool {
	switch {
	case fault == nil:
		return false
	case fault.Drop:
		panic(http.ErrAbortHandler)
	case fault.Hang:
		<-r.Context().Done()
		panic(http.ErrAbortHandler)
	}
	writeError(w, fault.Status, fault.Message)
	return true
}

func (f *Fleet) listUnits(w http.ResponseWriter, r *http.Request) {
	if answerFault(w, r, f.record("units")) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.units))
	for n := range f.units {
		names = append(names, n)
	}
	sort.Strings(names)
	start, _ := strconv.Atoi(r.URL.Query().Get("nextPageToken"))
	start = min(max(start, 0), len(names))
	end := min(start+max(f.PageSize, 1), len(names))
	var units []map[string]any
	for _, n := range names[start:end] {
		u := map[string]any{"name": n, "desiredState": f.units[n].Desired, "currentState": f.units[n].Desired}
		if len(f.units[n].Options) > 0 {
			u["options"] = f.units[n].Options // fleet lists each unit's options
		}
		units = append(units, u)
	}
	page := map[string]any{"units": units}
	if end < len(names) {
		page["nextPageToken"] = strconv.Itoa(end)
	}
	writeJSON(w, http.StatusOK, page)
}

// getUnit answers one unit: its desired state and fleet's currentState.
func (f *Fleet) getUnit(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if answerFault(w, r, f.record("unit "+name)) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.units[name]
	if !ok {
		writeError(w, http.StatusNotFound, "unit does not exist")
		return
	}
	current := u.Current
	if current == "" {
		current = u.Desired
	}
	if current == "launched" && u.NoHeartbeat {
		current = "loaded"
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": name, "desiredState": u.Desired, "currentState": current})
}

// listStates answers the states of one unit (?unitName=) or of all, each
// state poll moving the unit one step.
func (f *Fleet) listStates(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("unitName")
	call := "state " + name
	if name == "" {
		call = "states"
	}
	if answerFault(w, r, f.record(call)) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	names := []string{name}
	if name == "" {
		names = names[:0]
		for n := range f.units {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	states := []map[string]string{}
	for _, n := range names {
		u, ok := f.units[n]
		if !ok || u.NoState || u.Desired == "inactive" {
			continue
		}
		u.step(f.Steps)
		if name != "" {
			f.calls[len(f.calls)-1] += " -> " + u.Active + "/" + u.Sub
		}
		states = append(states, map[string]string{"name": n, "machineID": u.Machine, "hash": "h",
			"systemdLoadState": "loaded", "systemdActiveState": u.Active, "systemdSubState": u.Sub})
	}
	if name == "" {
		for _, n := range slices.Sorted(maps.Keys(f.unloading)) {
			states = append(states, map[string]string{"name": n, "machineID": f.unloading[n], "hash": "h",
				"systemdLoadState": "loaded", "systemdActiveState": "active", "systemdSubState": "running"})
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"states": states})
}

func (f *Fleet) listMachines(w http.ResponseWriter, r *http.Request) {
	if answerFault(w, r, f.record("machines")) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.machines == nil {
		writeError(w, http.StatusInternalServerError, "no machines")
		return
	}
	ids := make([]string, 0, len(f.machines))
	for id := range f.machines {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var ms []map[string]string
	for _, id := range ids {
		ms = append(ms, map[string]string{"id": id, "primaryIP": f.machines[id]})
	}
	writeJSON(w, http.StatusOK, map[string]any{"machines": ms})
}

func (f *Fleet) setUnit(w http.ResponseWriter, r *http.Request) {
	var body struct {
		DesiredState string   `json:"desiredState"`
		Options      []Option `json:"options"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.DesiredState == "" {
		writeError(w, http.StatusBadRequest, "bad body")
		return
	}
	name := r.PathValue("name")
	call := "set " + name + " " + body.DesiredState
	if len(body.Options) > 0 {
		call = "create " + name
	}
	if answerFault(w, r, f.record(call)) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.units[name]
	if !ok && len(body.Options) > 0 {
		u = &Unit{Desired: "inactive", Active: "inactive", Sub: "dead", Machine: DefaultMachine, Options: body.Options}
		if m := u.Option("X-Fleet", "MachineID"); m != "" {
			u.Machine = m
		}
		if f.created != nil {
			f.created(name, u)
		}
		f.units[name] = u
	}
	if !ok && len(body.Options) == 0 {
		writeError(w, http.StatusConflict, "unit does not exist and options field empty")
		return
	}
	// fleet's agent compares a target with what it last acted on (its
	// currentState), not with what systemd reports: the same target again
	// does nothing, even to a unit that has failed.
	acted := u.Current
	if acted == "" {
		acted = u.Desired
	}
	switch {
	case u.MissWrites > 0:
		u.MissWrites--
		u.Current = acted
		u.Desired, u.Moving = body.DesiredState, false
	case body.DesiredState == acted:
		u.Desired = body.DesiredState
	default:
		u.Desired, u.Moving, u.Current = body.DesiredState, true, ""
		u.Pending = u.polls(body.DesiredState, f.Steps)
		u.lagLeft = u.PublishLag
	}
	w.WriteHeader(http.StatusNoContent)
}

// destroyUnit removes a unit, as fleet's DELETE does.
func (f *Fleet) destroyUnit(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if answerFault(w, r, f.record("destroy "+name)) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.units[name]; !ok {
		writeError(w, http.StatusNotFound, "unit does not exist")
		return
	}
	delete(f.units, name)
	w.WriteHeader(http.StatusNoContent)
}

// reached reports whether the unit is where its target says.
func (u *Unit) reached() bool {
	if u.Desired == "launched" {
		return u.Active == "active" && u.Sub == "running"
	}
	return u.Active != "active" && u.Active != "activating" && u.Active != "deactivating"
}

func (u *Unit) polls(target string, steps int) int {
	n := u.StartPolls
	if target != "launched" {
		n = u.StopPolls
	}
	if n == 0 {
		n = max(steps, 1)
	}
	return n
}

// step moves the unit one poll closer to its desired state.
func (u *Unit) step(steps int) {
	if !u.Moving {
		if u.CrashAfter > 0 && u.upPolls > 0 && u.Active == "active" {
			if u.upPolls++; u.upPolls > u.CrashAfter {
				u.Active, u.Sub, u.upPolls = "failed", "failed", 0
			}
		}
		return
	}
	if u.lagLeft > 0 {
		u.lagLeft--
		return
	}
	switch u.Desired {
	case "launched":
		if u.Active == "active" && (u.Sub == "running" || u.Sub == "exited") {
			u.Moving = false
			return
		}
		if u.Pending > 1 {
			u.Pending--
			if u.Active != "failed" {
				u.Active, u.Sub = "activating", "start-pre"
			}
			return
		}
		u.Moving = false
		if u.FailStart {
			u.Active, u.Sub = "failed", "failed"
			return
		}
		u.Active, u.Sub = "active", "running"
		if u.Option("Service", "Type") == "oneshot" {
			u.Sub = "exited"
		}
		u.Restarts++
		u.upPolls = 1
	default:
		if u.Active != "active" && u.Active != "deactivating" {
			u.Moving = false
			return
		}
		if u.StuckStop {
			return
		}
		if u.Pending > 1 {
			u.Pending--
			u.Active, u.Sub = "deactivating", "stop-sigterm"
			return
		}
		u.Moving = false
		u.Active, u.Sub = "inactive", "dead"
		if u.StopFailed {
			u.Active, u.Sub = "failed", "failed"
		}
	}
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]any{"error": map[string]any{"code": code, "message": msg}})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Package fakefleet serves the part of fleet's v1 HTTP API that fleetroll
// uses, in memory, for tests of the CLI and the webhook receiver. Unit states
// move one step per state poll after a target state is set.
package fakefleet

import (
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"sync"
)

// Unit is a unit in the fake cluster.
type Unit struct {
	Desired string // inactive, loaded or launched
	Active  string // systemd ActiveState
	Sub     string // systemd SubState
	// FailStart makes the unit fail instead of running when launched.
	FailStart bool
	// Restarts counts completed starts (a stand-in for a new MainPID).
	Restarts int
	pending  int
	moving   bool
}

// Fleet is the fake cluster; its zero value is not usable, use New.
type Fleet struct {
	mu    sync.Mutex
	units map[string]*Unit
	log   []string
	// Steps is the number of polls a transition takes (default 2).
	Steps int
	// PageSize is the number of units per list page (default 2).
	PageSize int
}

// New returns a cluster in which every named unit is launched and running.
func New(names ...string) *Fleet {
	f := &Fleet{units: map[string]*Unit{}, Steps: 2, PageSize: 2}
	for _, n := range names {
		f.units[n] = &Unit{Desired: "launched", Active: "active", Sub: "running"}
	}
	return f
}

// Unit returns a copy of a unit's current record.
func (f *Fleet) Unit(name string) (Unit, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.units[name]
	if !ok {
		return Unit{}, false
	}
	return *u, true
}

// Update changes a unit under the lock.
func (f *Fleet) Update(name string, fn func(*Unit)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.units[name])
}

// Sets returns the target states set, as "NAME STATE", in order.
func (f *Fleet) Sets() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.log...)
}

// ServeHTTP implements the fleet v1 API subset.
func (f *Fleet) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /fleet/v1/units", f.listUnits)
	mux.HandleFunc("GET /fleet/v1/state", f.listStates)
	mux.HandleFunc("PUT /fleet/v1/units/{name}", f.setUnit)
	mux.ServeHTTP(w, r)
}

func (f *Fleet) listUnits(w http.ResponseWriter, r *http.Request) {
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
	var units []map[string]string
	for _, n := range names[start:end] {
		units = append(units, map[string]string{"name": n, "desiredState": f.units[n].Desired, "currentState": f.units[n].Desired})
	}
	page := map[string]any{"units": units}
	if end < len(names) {
		page["nextPageToken"] = strconv.Itoa(end)
	}
	writeJSON(w, 200, page)
}

func (f *Fleet) listStates(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	states := []map[string]string{}
	name := r.URL.Query().Get("unitName")
	if u, ok := f.units[name]; ok && u.Desired != "inactive" {
		u.step(f.Steps)
		states = append(states, map[string]string{"name": name, "machineID": "fake-machine-1", "hash": "h",
			"systemdLoadState": "loaded", "systemdActiveState": u.Active, "systemdSubState": u.Sub})
	}
	writeJSON(w, 200, map[string]any{"states": states})
}

func (f *Fleet) setUnit(w http.ResponseWriter, r *http.Request) {
	var body struct {
		DesiredState string `json:"desiredState"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.DesiredState == "" {
		writeJSON(w, 400, map[string]any{"error": map[string]any{"code": 400, "message": "bad body"}})
		return
	}
	name := r.PathValue("name")
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.units[name]
	if !ok {
		writeJSON(w, 409, map[string]any{"error": map[string]any{"code": 409, "message": "unit does not exist and options field empty"}})
		return
	}
	f.log = append(f.log, name+" "+body.DesiredState)
	if u.Desired != body.DesiredState {
		u.Desired, u.moving, u.pending = body.DesiredState, true, f.Steps
	}
	w.WriteHeader(http.StatusNoContent)
}

func (u *Unit) step(steps int) {
	if !u.moving {
		return
	}
	if u.pending > 1 {
		u.pending--
		if u.Desired == "launched" {
			u.Active, u.Sub = "activating", "start-pre"
		} else {
			u.Active, u.Sub = "deactivating", "stop-sigterm"
		}
		return
	}
	u.moving = false
	switch {
	case u.Desired != "launched":
		u.Active, u.Sub = "inactive", "dead"
	case u.FailStart:
		u.Active, u.Sub = "failed", "failed"
	default:
		u.Active, u.Sub = "active", "running"
		u.Restarts++
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

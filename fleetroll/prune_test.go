package fleetroll

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

func TestPruneUnitIsBuiltFromCheckedValues(t *testing.T) {
	v1, v2 := rel(1), rel(2)
	u, key, err := PruneUnit("my-service", "0123456789ab", "aaaa1111bbbb", []string{v1.Image, v2.Image})
	if err != nil {
		t.Fatal(err)
	}
	if u.Name != PullPrefix+"my-service-0123456789ab-aaaa1111-prune.service" || key != PruneResultsPrefix+"/my-service/0123456789ab/aaaa1111" {
		t.Fatalf("name %s key %s", u.Name, key)
	}
	opts := map[string][]string{}
	for _, o := range u.Options {
		opts[o.Section+"."+o.Name] = append(opts[o.Section+"."+o.Name], o.Value)
	}
	if got := opts["X-Fleet.MachineID"]; len(got) != 1 || got[0] != "aaaa1111bbbb" {
		t.Fatalf("MachineID %v", got)
	}
	if opts["Service.Type"][0] != "oneshot" || opts["Service.RemainAfterExit"][0] != "yes" {
		t.Fatalf("not a oneshot that stays active: %v", opts)
	}
	env := opts["Service.Environment"]
	if !slices.Contains(env, `"REMOVE=`+v1.Image+" "+v2.Image+`"`) || !slices.Contains(env, "RESULT_KEY="+key) {
		t.Fatalf("env %q", env)
	}
	// Removed without force: an image in use is kept.
	if exec := opts["Service.ExecStart"][0]; !strings.Contains(exec, `"$$DOCKER" rmi "$$i"`) || strings.Contains(exec, "-f") {
		t.Fatalf("ExecStart %s", exec)
	}
	many := make([]string, MaxPruneImages+1)
	for i := range many {
		many[i] = rel(i).Image
	}
	for _, bad := range []struct {
		service, rollout, machine string
		images                    []string
	}{
		{"my-service", "0123456789ab", "aaaa", []string{"127.0.0.1:5000/demo/x:latest"}},
		{"my-service", "0123456789ab", "aaaa", []string{v1.Image, "127.0.0.1:5000/demo/x@sha256:$(reboot)"}},
		{"my-service", "0123456789ab", "aaaa", []string{v1.Image + " -a"}},
		{"my-service", "0123456789ab", "a'a", []string{v1.Image}},
		{"my service", "0123456789ab", "aaaa", []string{v1.Image}},
		{"my-service", "nope", "aaaa", []string{v1.Image}},
		{"my-service", "0123456789ab", "aaaa", nil},
		{"my-service", "0123456789ab", "aaaa", many},
	} {
		if _, _, err := PruneUnit(bad.service, bad.rollout, bad.machine, bad.images); err == nil {
			t.Errorf("PruneUnit(%+v) accepted", bad)
		}
	}
}

func TestParsePruneResult(t *testing.T) {
	a, b, c := rel(1).Image, rel(2).Image, rel(3).Image
	for _, tc := range []struct {
		name, result string
		removed      []string
		kept         []KeptImage
		absent       []string
		missing      []string
	}{
		{name: "nothing", result: "", missing: []string{a, b}},
		{name: "each verb", result: ";removed " + a + ";kept " + b + " Error: image used by 1234: image is in use by a container",
			removed: []string{a}, kept: []KeptImage{{b, "Error: image used by 1234: image is in use by a container"}}},
		{name: "absent, and kept without a word", result: ";absent " + a + ";kept " + b, absent: []string{a}, kept: []KeptImage{{b, "the engine refused"}}},
		{name: "an image not asked for is ignored", result: ";removed " + c + ";removed " + a, removed: []string{a}, missing: []string{b}},
		{name: "first word wins", result: ";removed " + a + ";kept " + a + ";gibberish " + b, removed: []string{a}, missing: []string{b}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, missing := ParsePruneResult(tc.result, []string{a, b})
			if !slices.Equal(m.Removed, tc.removed) || !slices.Equal(m.Kept, tc.kept) || !slices.Equal(m.Absent, tc.absent) || !slices.Equal(missing, tc.missing) {
				t.Fatalf("got %+v missing %v", m, missing)
			}
		})
	}
}

// engine stands for each machine's container engine: the images it has,
// and those a container uses. A prune unit created on a machine removes
// what it can and leaves its word under its result key.
type engine struct {
	mu      sync.Mutex
	images  map[string][]string // machine -> images
	inUse   map[string]bool
	results map[string]string // result key -> what the unit left
}

func (e *engine) onCreate(name string, u *fakefleet.Unit) {
	if !strings.HasSuffix(name, "-prune.service") {
		return
	}
	var remove []string
	key := ""
	for _, o := range u.Options {
		if v, ok := strings.CutPrefix(o.Value, `"REMOVE=`); ok && o.Name == "Environment" {
			remove = strings.Fields(strings.TrimSuffix(v, `"`))
		}
		if v, ok := strings.CutPrefix(o.Value, "RESULT_KEY="); ok && o.Name == "Environment" {
			key = v
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	res := ""
	for _, img := range remove {
		switch {
		case !slices.Contains(e.images[u.Machine], img):
			res += ";absent " + img
		case e.inUse[img]:
			res += ";kept " + img + " Error: image is in use by a container"
		default:
			e.images[u.Machine] = slices.DeleteFunc(e.images[u.Machine], func(s string) bool { return s == img })
			res += ";removed " + img
		}
	}
	e.results[key] = res
}

func (e *engine) result(_ context.Context, key string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.results[key]
}

func (e *engine) has(machine string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Sorted(slices.Values(e.images[machine]))
}

// Every machine fleet lists removes the older images it has; one in use is
// kept; an image also in keep is never asked for; the units are gone.
func TestPruneRemovesOlderImagesOnEveryMachine(t *testing.T) {
	v1, v2, v3, v4 := rel(1).Image, rel(2).Image, rel(3).Image, rel(4).Image
	f := fakefleet.New()
	f.SetMachines(map[string]string{"aaaa1111": "10.0.0.1", "bbbb2222": "10.0.0.2", "cccc3333": "10.0.0.3"})
	e := &engine{images: map[string][]string{
		"aaaa1111": {v1, v2, v3, v4},
		"bbbb2222": {v2, v3, v4},
		"cccc3333": {}, // never ran the service
	}, inUse: map[string]bool{}, results: map[string]string{}}
	f.OnCreate(e.onCreate)
	r, _, _ := newTestRoller(t, f, Options{})
	rep, err := r.Prune(t.Context(), "my-service", []string{v4, v3}, []string{v2, v1, v3}, PruneOptions{Result: e.result})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Remove, []string{v2, v1}) || !slices.Equal(rep.Keep, []string{v4, v3}) {
		t.Fatalf("keep %v remove %v", rep.Keep, rep.Remove)
	}
	want := map[string][]string{"aaaa1111": {v3, v4}, "bbbb2222": {v3, v4}, "cccc3333": nil}
	for m, imgs := range want {
		if got := e.has(m); !slices.Equal(got, imgs) {
			t.Errorf("machine %s has %v, want %v", m, got, imgs)
		}
	}
	if len(rep.Machines) != 3 {
		t.Fatalf("machines %+v", rep.Machines)
	}
	a, b, c := rep.Machines[0], rep.Machines[1], rep.Machines[2]
	if a.Machine != "aaaa1111" || !slices.Equal(a.Removed, []string{v2, v1}) || a.Error != "" ||
		!slices.Equal(b.Removed, []string{v2}) || !slices.Equal(b.Absent, []string{v1}) ||
		!slices.Equal(c.Absent, []string{v2, v1}) || len(c.Removed) != 0 {
		t.Fatalf("report %+v", rep.Machines)
	}
	assertPruneUnitsGone(t, f, 3)

	// Nothing to remove: no unit at all.
	before := len(f.Calls())
	if rep, err := r.Prune(t.Context(), "my-service", []string{v4, v3}, []string{v3}, PruneOptions{Result: e.result}); err != nil || len(rep.Machines) != 0 {
		t.Fatalf("nothing to remove: %v %+v", err, rep)
	}
	if calls := f.Calls()[before:]; len(calls) != 0 {
		t.Fatalf("calls for nothing to remove: %v", calls)
	}
}

// An image in use is kept, a machine whose unit fails says so, and the
// others still prune: the error names the machine, nothing else.
func TestPruneKeepsAnImageInUseAndReportsAFailedMachine(t *testing.T) {
	v1, v2, v3 := rel(1).Image, rel(2).Image, rel(3).Image
	f := fakefleet.New()
	f.SetMachines(map[string]string{"aaaa1111": "10.0.0.1", "bbbb2222": "10.0.0.2"})
	e := &engine{images: map[string][]string{"aaaa1111": {v1, v3}, "bbbb2222": {v1, v3}}, inUse: map[string]bool{v1: true}, results: map[string]string{}}
	f.OnCreate(func(name string, u *fakefleet.Unit) {
		if u.Machine == "bbbb2222" {
			u.FailStart = true
			return
		}
		e.onCreate(name, u)
	})
	r, _, _ := newTestRoller(t, f, Options{})
	rep, err := r.Prune(t.Context(), "my-service", []string{v3, v2}, []string{v1}, PruneOptions{Result: e.result})
	if err == nil || !strings.Contains(err.Error(), "machine bbbb2222") || !strings.Contains(err.Error(), "the prune unit failed") {
		t.Fatalf("err = %v", err)
	}
	a, b := rep.Machines[0], rep.Machines[1]
	if len(a.Kept) != 1 || a.Kept[0].Image != v1 || !strings.Contains(a.Kept[0].Why, "in use") || a.Error != "" || len(a.Removed) != 0 {
		t.Fatalf("machine a %+v", a)
	}
	if b.Error == "" || len(b.Removed)+len(b.Kept)+len(b.Absent) != 0 {
		t.Fatalf("machine b %+v", b)
	}
	assertPruneUnitsGone(t, f, 2)

	// A unit that ran but left no word: an error, not a removal.
	f2 := fakefleet.New()
	f2.SetMachines(map[string]string{"aaaa1111": "10.0.0.1"})
	r2, _, _ := newTestRoller(t, f2, Options{})
	rep, err = r2.Prune(t.Context(), "my-service", []string{v3}, []string{v1}, PruneOptions{Result: func(context.Context, string) string { return "" }})
	if err == nil || !strings.Contains(rep.Machines[0].Error, "left no word on "+v1) {
		t.Fatalf("no word: %v %+v", err, rep.Machines)
	}
}

func assertPruneUnitsGone(t *testing.T, f *fakefleet.Fleet, want int) {
	t.Helper()
	created, destroyed := 0, 0
	for _, c := range f.Calls() {
		if name, ok := strings.CutPrefix(c, "create "); ok && strings.HasSuffix(name, "-prune.service") {
			created++
			if _, ok := f.Unit(name); ok {
				t.Fatalf("%s left in fleet", name)
			}
		}
		if strings.HasPrefix(c, "destroy ") && strings.HasSuffix(c, "-prune.service") {
			destroyed++
		}
	}
	if created != want || destroyed < created {
		t.Fatalf("%d prune units created (want %d), %d destroyed", created, want, destroyed)
	}
}

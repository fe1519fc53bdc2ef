package rollout

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

const pruneImage = "127.0.0.1:5000/demo/my-service"

func pruneRel(n int, source string) fleetroll.Release {
	return fleetroll.Release{Image: fmt.Sprintf("%s@sha256:%064x", pruneImage, n), Trigger: fleetroll.Trigger{Source: source}}
}

// What a prune keeps and removes, given a history (newest first): the
// current release and the one a rollback would go back to are kept, and
// both ends of the rollout's change; nothing outside the history is named.
func TestPruneKeepsTheCurrentAndThePrevious(t *testing.T) {
	v := func(n int) fleetroll.Release { return pruneRel(n, "cli") }
	back := func(n int) fleetroll.Release { return pruneRel(n, fleetroll.TriggerRollback) }
	img := func(ns ...int) []string {
		var out []string
		for _, n := range ns {
			out = append(out, v(n).Image)
		}
		return out
	}
	for _, tc := range []struct {
		name         string
		hist         []fleetroll.Release
		current      int
		from, to     int // 0: none
		keep, remove []string
	}{
		{name: "a first deploy", hist: []fleetroll.Release{v(1)}, current: 1, to: 1, keep: img(1)},
		{name: "two releases", hist: []fleetroll.Release{v(2), v(1)}, current: 2, from: 1, to: 2, keep: img(2, 1)},
		{name: "three releases: the first goes", hist: []fleetroll.Release{v(3), v(2), v(1)}, current: 3, from: 2, to: 3,
			keep: img(3, 2), remove: img(1)},
		{name: "five releases, one deployed twice", hist: []fleetroll.Release{v(4), v(3), v(1), v(2), v(1)}, current: 4, from: 3, to: 4,
			keep: img(4, 3), remove: img(1, 2)},
		{name: "a rollback to an older one keeps the one rolled back from", hist: []fleetroll.Release{v(1), v(3), v(2), v(1)}, current: 1, from: 3, to: 1,
			keep: img(1, 3), remove: img(2)},
		{name: "after a failed release rolled back, the release before it is the previous",
			hist: []fleetroll.Release{v(4), back(2), v(3), v(2), v(1)}, current: 4, from: 2, to: 4, keep: img(4, 2), remove: img(3, 1)},
		{name: "the record's change is kept even when the store says otherwise", hist: []fleetroll.Release{v(5), v(4), v(3)}, current: 5, from: 3, to: 5,
			keep: img(5, 4, 3)},
		{name: "an unpinned entry is never named", hist: []fleetroll.Release{v(3), v(2), {Image: pruneImage + ":v1"}, v(1)}, current: 3, from: 2, to: 3,
			keep: img(3, 2), remove: img(1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			change := &fleetroll.ReleaseChange{To: v(tc.to)}
			if tc.from != 0 {
				f := v(tc.from)
				change.From = &f
			}
			keep := keepOf(tc.hist, v(tc.current).Image, change)
			remove := prunable(tc.hist, keep)
			if !slices.Equal(keep, tc.keep) || !slices.Equal(remove, tc.remove) {
				t.Fatalf("keep %v remove %v\nwant keep %v remove %v", keep, remove, tc.keep, tc.remove)
			}
		})
	}
}

// pruneEngine writes what each prune unit would leave in etcd, as the
// unit's script does: each image removed, but one in use kept; on a
// machine marked failing, the unit fails.
type pruneEngine struct {
	mu      sync.Mutex
	asked   map[string][]string // machine -> images asked to remove, every prune
	inUse   string
	failing string
	put     func(key, value string) error
}

func (e *pruneEngine) onCreate(name string, u *fakefleet.Unit) {
	if !strings.HasSuffix(name, "-prune.service") {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if u.Machine == e.failing {
		u.FailStart = true
		return
	}
	var remove []string
	key := ""
	for _, o := range u.Options {
		if v, ok := strings.CutPrefix(o.Value, `"REMOVE=`); ok {
			remove = strings.Fields(strings.TrimSuffix(v, `"`))
		}
		if v, ok := strings.CutPrefix(o.Value, "RESULT_KEY="); ok {
			key = v
		}
	}
	e.asked[u.Machine] = append(e.asked[u.Machine], remove...)
	res := ""
	for _, img := range remove {
		if img == e.inUse {
			res += ";kept " + img + " Error: image is in use by a container"
		} else {
			res += ";removed " + img
		}
	}
	if err := e.put(key, res); err != nil {
		u.FailStart = true
	}
}

// Three deploys: the third removes the first release's image from every
// machine, never the current or the previous, and the record says so. A
// machine whose prune fails does not fail a deploy that succeeded: it is
// in the record.
func TestDeployPrunesOlderReleasesFromEveryMachine(t *testing.T) {
	kapi := startEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	ff := fakefleet.New()
	ff.Add("my-service@1.service", fakefleet.Unit{Machine: "aaaa1111"})
	ff.Add("my-service@2.service", fakefleet.Unit{Machine: "bbbb2222"})
	ff.SetMachines(map[string]string{"aaaa1111": "10.0.0.1", "bbbb2222": "10.0.0.2", "cccc3333": "10.0.0.3"})
	e := &pruneEngine{asked: map[string][]string{}, put: func(key, value string) error {
		_, err := kapi.Set(context.WithoutCancel(ctx), key, value, nil)
		return err
	}}
	ff.OnCreate(e.onCreate)
	r := Runner{Fleet: newFleet(t, ff), Etcd: kapi}
	s := fast()
	s.Ports, s.Image = PortList{"1", "2"}, pruneImage
	deploy := func(n int) *fleetroll.Report {
		t.Helper()
		rep, err := r.Run(ctx, Request{Service: "my-service", Settings: s, Owner: "test", Deploy: &Change{Ref: pruneRel(n, "").Digest()}})
		if err != nil || rep.Status != fleetroll.StatusSucceeded {
			t.Fatalf("deploy %d: %v %+v", n, err, rep)
		}
		return rep
	}
	v1, v2, v3, v4 := pruneRel(1, "").Image, pruneRel(2, "").Image, pruneRel(3, "").Image, pruneRel(4, "").Image
	if rep := deploy(1); rep.Prune != nil {
		t.Fatalf("a first deploy pruned: %+v", rep.Prune)
	}
	if rep := deploy(2); rep.Prune != nil {
		t.Fatalf("a second deploy pruned: %+v", rep.Prune)
	}
	rep := deploy(3)
	p := rep.Prune
	if p == nil || !slices.Equal(p.Keep, []string{v3, v2}) || !slices.Equal(p.Remove, []string{v1}) || len(p.Machines) != 3 || p.Error != "" {
		t.Fatalf("prune after three releases: %+v", p)
	}
	for _, m := range p.Machines {
		if !slices.Equal(m.Removed, []string{v1}) || m.Error != "" || m.Unit != fleetroll.PullPrefix+"my-service-"+rep.ID+"-"+m.Machine+"-prune.service" {
			t.Fatalf("machine %+v", m)
		}
	}
	for _, m := range []string{"aaaa1111", "bbbb2222", "cccc3333"} {
		if got := e.asked[m]; !slices.Equal(got, []string{v1}) {
			t.Fatalf("machine %s was asked to remove %v", m, got)
		}
	}
	if rec, ok, err := (coord.History{KAPI: kapi}).Get(ctx, rep.ID); err != nil || !ok || rec.Prune == nil || !slices.Equal(rec.Prune.Machines[0].Removed, []string{v1}) {
		t.Fatalf("history record: %+v %v %v", rec.Prune, ok, err)
	}
	for _, c := range ff.Calls() {
		if name, ok := strings.CutPrefix(c, "create "); ok {
			if _, left := ff.Unit(name); left && strings.HasPrefix(name, fleetroll.PullPrefix) {
				t.Fatalf("%s left in fleet", name)
			}
		}
	}

	// The fourth: one machine's prune fails, another keeps an image in
	// use; the deploy succeeded, and its record says both.
	e.failing, e.inUse = "bbbb2222", v2
	rep = deploy(4)
	p = rep.Prune
	if p == nil || !slices.Equal(p.Remove, []string{v2, v1}) {
		t.Fatalf("fourth prune: %+v", p)
	}
	a, b := p.Machines[0], p.Machines[1]
	if !slices.Equal(a.Removed, []string{v1}) || len(a.Kept) != 1 || a.Kept[0].Image != v2 || !strings.Contains(a.Kept[0].Why, "in use") ||
		b.Error == "" || !strings.Contains(b.Error, "the prune unit failed") {
		t.Fatalf("fourth prune's machines: %+v", p.Machines)
	}
	rec, ok, err := coord.History{KAPI: kapi}.Get(ctx, rep.ID)
	if err != nil || !ok || rec.Status != fleetroll.StatusSucceeded || rec.Prune == nil || rec.Prune.Machines[1].Error == "" {
		t.Fatalf("history record of the fourth: %+v %v %v", rec, ok, err)
	}
	if cur, _ := (coord.ReleaseStore{KAPI: kapi}).Current(ctx, "my-service"); cur == nil || cur.Image != v4 {
		t.Fatalf("current %+v", cur)
	}

	// Pre-pull off: no prune either (its units are the pre-pull's).
	off := false
	s.PrePull = &off
	before := len(ff.Calls())
	rep, err = r.Run(ctx, Request{Service: "my-service", Settings: s, Owner: "test", Deploy: &Change{Ref: pruneRel(5, "").Digest()}})
	if err != nil || rep.Prune != nil {
		t.Fatalf("deploy without pre-pull: %v %+v", err, rep.Prune)
	}
	for _, c := range ff.Calls()[before:] {
		if strings.HasPrefix(c, "create ") {
			t.Fatalf("a unit created without the pre-pull: %s", c)
		}
	}
}

// A prune keeps what other services of the same repository need (their
// current and previous releases); a service of another repository is no
// concern of it.
func TestPruneKeepsWhatOtherServicesOfTheRepositoryNeed(t *testing.T) {
	kapi := startEtcd(t)
	ctx := t.Context()
	store := coord.ReleaseStore{KAPI: kapi}
	set := func(service string, rels ...fleetroll.Release) {
		t.Helper()
		var prev *fleetroll.Release
		for _, rel := range rels {
			rel.Rollout = "0000000000c1"
			if err := store.Set(ctx, service, rel, prev); err != nil {
				t.Fatal(err)
			}
			prev = &rel
		}
	}
	set("my-service", pruneRel(1, ""), pruneRel(2, ""), pruneRel(3, ""))
	set("worker", pruneRel(1, ""), pruneRel(4, ""), pruneRel(5, ""))
	other := fleetroll.Release{Image: fmt.Sprintf("127.0.0.1:5000/demo/other@sha256:%064x", 9)}
	set("other", other)
	got, err := Runner{Etcd: kapi}.othersNeed(ctx, "my-service", pruneImage)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{pruneRel(5, "").Image, pruneRel(4, "").Image}; !slices.Equal(got, want) {
		t.Fatalf("othersNeed = %v, want worker's current and previous %v", got, want)
	}
}

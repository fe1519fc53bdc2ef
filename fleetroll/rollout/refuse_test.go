package rollout

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// A deploy that rolled back quarantines the digest it rolled back from,
// with its reason and rollout; a later deploy of it, a sender's or an
// operator's, is refused under the lock and recorded, nothing touched,
// until the quarantine is cleared. Under a semantic tag policy a sender's
// older tag is refused the same way; an operator's deploy of it is not.
func TestQuarantineAndTagPolicyRefuseUnderTheLock(t *testing.T) {
	kapi := startEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	a, b := "my-service@1.service", "my-service@2.service"
	ff := fakefleet.New(a, b)
	r := Runner{Fleet: newFleet(t, ff), Etcd: kapi}
	const image = "127.0.0.1:5000/demo/x"
	d := func(c string) string { return "sha256:" + strings.Repeat(c, 64) }
	store := coord.ReleaseStore{KAPI: kapi}
	v1 := fleetroll.Release{Image: image + "@" + d("1"), Tag: "v1.2.5", Rollout: "0000000000e0"}
	if err := store.Set(ctx, "my-service", v1, nil); err != nil {
		t.Fatal(err)
	}
	// b fails to start on v2 while bad is set.
	var bad atomic.Bool
	bad.Store(true)
	ff.SetHook(func(call string) {
		if call == "set "+b+" launched" {
			cur, _ := store.Current(ctx, "my-service")
			fail := bad.Load() && cur != nil && cur.Digest() == d("2")
			ff.Update(b, func(u *fakefleet.Unit) { u.FailStart = fail })
		}
	})
	s := fast()
	s.Image, s.OnFailure, s.TagPolicy = image, fleetroll.OnFailureRollback, fleetroll.TagPolicyMinor
	off := false
	s.PrePull = &off
	push := func(tag, digest string) fleetroll.Trigger {
		return fleetroll.Trigger{Source: "registry", Repository: image, Tag: tag, Digest: digest}
	}
	run := func(id string, tr fleetroll.Trigger, ref string) (*fleetroll.Report, error) {
		return r.Run(ctx, Request{ID: id, Service: "my-service", Settings: s, Trigger: tr, Owner: "test", Deploy: &Change{Ref: ref}})
	}
	history := func(id string) fleetroll.Report {
		t.Helper()
		rec, ok, err := coord.History{KAPI: kapi}.Get(ctx, id)
		if err != nil || !ok {
			t.Fatalf("no record of %s: %v", id, err)
		}
		return rec
	}

	rep, err := run("0000000000a1", push("v1.3.0", d("2")), d("2"))
	var rb *fleetroll.RolledBackError
	if !errors.As(err, &rb) || rep.Status != fleetroll.StatusRolledBack {
		t.Fatalf("v2 should roll back: %v %+v", err, rep)
	}
	q, err := coord.Quarantine{KAPI: kapi}.Get(ctx, "my-service", d("2"))
	if err != nil || q == nil || q.Rollout != "0000000000a1" || q.Tag != "v1.3.0" || !strings.Contains(q.Reason, b) || !strings.Contains(q.Reason, "rolled back") {
		t.Fatalf("quarantine after the rollback: %+v %v", q, err)
	}
	if bq, _ := (coord.Quarantine{KAPI: kapi}).Get(ctx, "my-service", d("1")); bq != nil {
		t.Fatalf("the release rolled back to was quarantined: %+v", bq)
	}

	// The same push again, then an operator's deploy of it: refused.
	before := len(ff.Sets())
	for i, tr := range []fleetroll.Trigger{push("v1.3.0", d("2")), {Source: "cli"}} {
		id := []string{"0000000000a2", "0000000000a3"}[i]
		rep, err = run(id, tr, d("2"))
		var re *RefusedError
		if !errors.Is(err, ErrRefused) || !errors.As(err, &re) || re.Quarantined == nil || rep == nil || rep.Status != fleetroll.StatusRefused {
			t.Fatalf("%s: a quarantined digest: %v %+v", tr.Source, err, rep)
		}
		rec := history(id)
		if rec.Status != fleetroll.StatusRefused || !strings.Contains(rec.Error, "fleetroll release clear my-service "+d("2")) ||
			!strings.Contains(rec.Error, "rollout 0000000000a1") || rec.Release == nil || rec.Release.To.Digest() != d("2") || rec.Release.From.Digest() != d("1") {
			t.Fatalf("%s: record %+v", tr.Source, rec)
		}
	}
	if len(ff.Sets()) != before {
		t.Fatalf("a refused deploy touched fleet: %v", ff.Sets()[before:])
	}

	// A sender's older tag, or a pre-release: refused; the operator's
	// deploy of the older one goes.
	for _, c := range []struct{ id, tag, want string }{
		{"0000000000b1", "v1.2.4", "older than the current release's v1.2.5"},
		{"0000000000b2", "v1.4.0-rc1", "pre-release"},
		{"0000000000b3", "v2.0.0", "another major version"},
	} {
		rep, err = run(c.id, push(c.tag, d("3")), d("3"))
		if !errors.Is(err, ErrRefused) || rep.Status != fleetroll.StatusRefused || !strings.Contains(history(c.id).Error, c.want) {
			t.Fatalf("%s: %v %+v", c.tag, err, rep)
		}
	}
	if len(ff.Sets()) != before {
		t.Fatalf("a refused deploy touched fleet: %v", ff.Sets()[before:])
	}
	if rep, err = run("0000000000b4", fleetroll.Trigger{Source: "cli"}, d("3")); err != nil || rep.Status != fleetroll.StatusSucceeded {
		t.Fatalf("the operator's deploy of an older release: %v %+v", err, rep)
	}

	// Cleared (and fixed): it deploys.
	if _, err := (coord.Quarantine{KAPI: kapi}).Clear(ctx, "my-service", d("2")); err != nil {
		t.Fatal(err)
	}
	bad.Store(false)
	if rep, err = run("0000000000a4", push("v1.3.0", d("2")), d("2")); err != nil || rep.Status != fleetroll.StatusSucceeded {
		t.Fatalf("after the clear: %v %+v", err, rep)
	}
	if cur, _ := store.Current(ctx, "my-service"); cur == nil || cur.Digest() != d("2") || cur.Tag != "v1.3.0" {
		t.Fatalf("current after the clear: %+v", cur)
	}
}

func TestBySenderAndTagRefusal(t *testing.T) {
	for src, want := range map[string]bool{"": false, "cli": false, "manual": false, "rollback": false, "recover": false,
		"dockerhub": true, "registry": true, "github": true, "poll": true} {
		if got := BySender(fleetroll.Trigger{Source: src}); got != want {
			t.Errorf("%q: %v", src, got)
		}
	}
	s := Settings{TagPolicy: fleetroll.TagPolicyPatch}
	cur := "v1.2.5"
	if why := TagRefusal(s, fleetroll.Trigger{Source: "dockerhub"}, "v1.3.0", cur); !strings.Contains(why, "not a patch") {
		t.Errorf("patch: %q", why)
	}
	if why := TagRefusal(s, fleetroll.Trigger{Source: "manual"}, "v1.0.0", cur); why != "" {
		t.Errorf("an operator's trigger: %q", why)
	}
	if why := TagRefusal(Settings{}, fleetroll.Trigger{Source: "dockerhub"}, "v1.0.0", cur); why != "" {
		t.Errorf("glob: %q", why)
	}
	if why := TagRefusal(s, fleetroll.Trigger{Source: "dockerhub"}, "v1.0.0", ""); why != "" {
		t.Errorf("no current release: %q", why)
	}
}

func TestTagPolicySettings(t *testing.T) {
	for _, c := range []struct {
		s    Settings
		want string
	}{
		{Settings{TagPolicy: "semver"}, `tag_policy "semver"`},
		{Settings{TagPolicy: fleetroll.TagPolicyMinor}, ""},
		{Settings{Prerelease: true}, "prerelease is for tag_policy"},
		{Settings{TagPolicy: fleetroll.TagPolicyMinor, Prerelease: true}, ""},
		{Settings{TagPolicy: fleetroll.TagPolicyGlob}, ""},
	} {
		err := c.s.Complete("my-service").Validate()
		if (err == nil) != (c.want == "") || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.s, err, c.want)
		}
	}
	if got := (Settings{}).Complete("x").TagPolicy; got != fleetroll.TagPolicyGlob {
		t.Errorf("default tag policy %q", got)
	}
}

// A deploy that gave its release up without a full rollback (its rollback
// failed, or a blue-green deploy failed before its switch) quarantines it
// too; a failure that wrote nothing back does not.
func TestGivenUpReleaseIsQuarantined(t *testing.T) {
	kapi := startEtcd(t)
	r := Runner{Etcd: kapi}
	const image = "127.0.0.1:5000/demo/x"
	for _, c := range []struct {
		name   string
		digest string
		err    error
		want   bool
	}{
		{"given up", "sha256:" + strings.Repeat("3", 64), &fleetroll.GaveUpError{Err: errors.New("start s@1.service: failed"),
			Back: fleetroll.Release{Image: image + "@sha256:" + strings.Repeat("1", 64)}}, true},
		{"halted", "sha256:" + strings.Repeat("4", 64), errors.New("start s@1.service: failed"), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := Request{ID: "0000000000a1", Service: "my-service"}
			rep := &fleetroll.Report{Status: fleetroll.StatusFailed, Error: c.err.Error(),
				Release: &fleetroll.ReleaseChange{To: fleetroll.Release{Image: image + "@" + c.digest}}}
			r.quarantine(t.Context(), req, rep, c.err, r.logger())
			q, err := coord.Quarantine{KAPI: kapi}.Get(t.Context(), "my-service", c.digest)
			if err != nil || (q != nil) != c.want {
				t.Fatalf("quarantined: %+v, %v; want %v", q, err, c.want)
			}
		})
	}
}

// The version a sender's tag is judged against: the current release's
// tag, or, when it has none that is a version (deployed by digest, or as
// latest), the newest version of the history, so that a sender cannot move
// the service below it.
func TestCurrentVersionFallsBackToTheHistory(t *testing.T) {
	kapi := startEtcd(t)
	ctx := t.Context()
	store := coord.ReleaseStore{KAPI: kapi}
	const image = "127.0.0.1:5000/demo/x"
	d := func(c string) string { return image + "@sha256:" + strings.Repeat(c, 64) }
	if v, err := CurrentVersion(ctx, store, "my-service", nil); err != nil || v != "" {
		t.Fatalf("no release: %q, %v", v, err)
	}
	var prev *fleetroll.Release
	for _, r := range []fleetroll.Release{{Image: d("1"), Tag: "v1.2.0"}, {Image: d("2"), Tag: "v1.4.1"}, {Image: d("3"), Tag: "latest"}, {Image: d("4")}} {
		r.Rollout = "0000000000b1"
		if err := store.Set(ctx, "my-service", r, prev); err != nil {
			t.Fatal(err)
		}
		prev = &r
	}
	cur, err := store.Current(ctx, "my-service")
	if err != nil {
		t.Fatal(err)
	}
	v, err := CurrentVersion(ctx, store, "my-service", cur)
	if err != nil || v != "v1.4.1" {
		t.Fatalf("CurrentVersion = %q, %v; want the history's newest version v1.4.1", v, err)
	}
	s := Settings{TagPolicy: fleetroll.TagPolicyMinor}
	if why := TagRefusal(s, fleetroll.Trigger{Source: "registry"}, "v1.3.0", v); !strings.Contains(why, "older") {
		t.Fatalf("a sender moved a service deployed by digest below its last version: %q", why)
	}
	if v, _ := CurrentVersion(ctx, store, "my-service", &fleetroll.Release{Tag: "v2.0.0"}); v != "v2.0.0" {
		t.Fatalf("a versioned current release: %q", v)
	}
}

package coord

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

func release(n int) fleetroll.Release {
	return fleetroll.Release{Image: fmt.Sprintf("127.0.0.1:5000/demo/my-service@sha256:%x", sha256.Sum256([]byte{byte(n)})), Tag: fmt.Sprintf("v%d", n),
		Rollout: fmt.Sprintf("%012x", n), Trigger: fleetroll.Trigger{Source: "registry", Tag: fmt.Sprintf("v%d", n)}}
}

func TestReleaseStore(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := ReleaseStore{KAPI: kapi, Keep: 3}
	if cur, err := s.Current(ctx, "my-service"); err != nil || cur != nil {
		t.Fatalf("no release yet: %v, %v", cur, err)
	}
	v1, v2 := release(1), release(2)
	if err := s.Set(ctx, "my-service", v1, &v2); !errors.Is(err, ErrReleaseChanged) {
		t.Fatalf("set over a release that is not there: %v", err)
	}
	if err := s.Set(ctx, "my-service", v1, nil); err != nil {
		t.Fatal(err)
	}
	// Two writers that both read v1: one wins, the other is told.
	if err := s.Set(ctx, "my-service", v2, &v1); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "my-service", release(3), &v1); !errors.Is(err, ErrReleaseChanged) {
		t.Fatalf("second writer: %v", err)
	}
	if err := s.Set(ctx, "my-service", v1, nil); !errors.Is(err, ErrReleaseChanged) {
		t.Fatalf("a first deploy over an existing release: %v", err)
	}
	cur, err := s.Current(ctx, "my-service")
	if err != nil || cur == nil || cur.Image != v2.Image || cur.Tag != "v2" || cur.Trigger.Source != "registry" {
		t.Fatalf("current = %+v, %v", cur, err)
	}
	// What the instance unit reads: the pinned image, as plain text.
	resp, err := kapi.Get(ctx, ReleasesPrefix+"/my-service/current", nil)
	if err != nil || resp.Node.Value != v2.Image {
		t.Fatalf("current key = %v, %v", resp, err)
	}
	for n := 3; n <= 5; n++ {
		prev := release(n - 1)
		if err := s.Set(ctx, "my-service", release(n), &prev); err != nil {
			t.Fatal(err)
		}
	}
	hist, err := s.History(ctx, "my-service")
	if err != nil || len(hist) != 3 || hist[0].Image != release(5).Image || hist[2].Image != release(3).Image {
		t.Fatalf("history (keep 3, newest first) = %+v, %v", hist, err)
	}
	if r, err := s.Find(ctx, "my-service", release(4).Rollout); err != nil || r.Image != release(4).Image {
		t.Fatalf("find by rollout: %+v, %v", r, err)
	}
	if r, err := s.Find(ctx, "my-service", release(3).Digest()[:7+12]); err != nil || r.Image != release(3).Image {
		t.Fatalf("find by digest prefix: %+v, %v", r, err)
	}
	if _, err := s.Find(ctx, "my-service", release(1).Digest()); err == nil {
		t.Fatal("found a release dropped from the history")
	}
	if _, err := s.Current(ctx, "../x"); err == nil {
		t.Fatal("a bad service name reached etcd")
	}
	if err := s.Set(ctx, "my-service", fleetroll.Release{Image: "127.0.0.1:5000/demo/x:latest"}, nil); err == nil {
		t.Fatal("an unpinned image was stored")
	}
}

func TestPreviousReleaseSkipsTheOnesRolledBackFrom(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := ReleaseStore{KAPI: kapi}
	if _, err := s.Previous(ctx, "my-service"); err == nil {
		t.Fatal("a previous release without any release")
	}
	v1, v2, v3 := release(1), release(2), release(3)
	for _, step := range []struct {
		rel, prev *fleetroll.Release
	}{{&v1, nil}, {&v2, &v1}, {&v3, &v2}} {
		if err := s.Set(ctx, "my-service", *step.rel, step.prev); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := s.Previous(ctx, "my-service"); err != nil || p.Image != v2.Image {
		t.Fatalf("previous of v3 = %+v, %v", p, err)
	}
	// v3 failed and was rolled back to v2: the release before v2 is v1,
	// not v3.
	back := v2
	back.Trigger = fleetroll.Trigger{Source: fleetroll.TriggerRollback}
	if err := s.Set(ctx, "my-service", back, &v3); err != nil {
		t.Fatal(err)
	}
	if p, err := s.Previous(ctx, "my-service"); err != nil || p.Image != v1.Image {
		t.Fatalf("previous after a rollback = %+v, %v", p, err)
	}
}

// Each reader reads what its own kind of unit left, nothing else.
func TestPruneResultReadsOnlyUnderItsPrefix(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prune := fleetroll.PruneResultsPrefix + "/my-service/0123456789ab/aaaa1111"
	pull := fleetroll.PullErrorsPrefix + "/my-service/0123456789ab/aaaa1111"
	for k, v := range map[string]string{prune: ";removed x", pull: "manifest unknown"} {
		if _, err := kapi.Set(ctx, k, v, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := PruneResult(kapi)(ctx, prune); got != ";removed x" {
		t.Fatalf("prune result %q", got)
	}
	if got := PruneResult(kapi)(ctx, pull); got != "" {
		t.Fatalf("prune reader read a pull's key: %q", got)
	}
	if got := PullReason(kapi)(ctx, prune); got != "" {
		t.Fatalf("pull reader read a prune's key: %q", got)
	}
	if got := PruneResult(kapi)(ctx, fleetroll.PruneResultsPrefix+"/my-service/0123456789ab/none"); got != "" {
		t.Fatalf("missing key: %q", got)
	}
}

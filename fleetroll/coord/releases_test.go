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

package coord

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

// The live and spare sets: the configured ports before the first
// blue-green rollout, then the record, which must name the configured sets.
func TestLivesResolve(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	l := Lives{KAPI: kapi}
	a, b := []string{"8901", "8902"}, []string{"8911", "8912"}
	live, next, err := l.Resolve(ctx, "my-service", a, b)
	if err != nil || !slices.Equal(live, a) || !slices.Equal(next, b) {
		t.Fatalf("before any record: %v %v %v", live, next, err)
	}
	if err := l.Put(ctx, "my-service", LiveSets{Live: b, Spare: a, Rollout: "00000000000a"}); err != nil {
		t.Fatal(err)
	}
	for _, ports := range [][]string{a, nil} {
		live, next, err := l.Resolve(ctx, "my-service", ports, b)
		if err != nil || !slices.Equal(live, b) || !slices.Equal(next, a) {
			t.Fatalf("after a swap (ports %v): %v %v %v", ports, live, next, err)
		}
	}
	for _, c := range []struct{ ports, spare []string }{
		{[]string{"8901", "8903"}, b},
		{nil, []string{"8921"}},
	} {
		if _, _, err := l.Resolve(ctx, "my-service", c.ports, c.spare); err == nil || !strings.Contains(err.Error(), "/fleetroll/live/my-service") {
			t.Errorf("%v %v: %v", c.ports, c.spare, err)
		}
	}
	if _, err := l.Get(ctx, "../locks"); err == nil {
		t.Error("a bad service name reached etcd")
	}
}

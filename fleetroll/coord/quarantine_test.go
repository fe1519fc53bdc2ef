package coord

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func digestOf(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

// A digest is quarantined per service with its reason and rollout; a
// service keeps at most Keep (the oldest dropped); a clear by the full
// digest or a prefix lifts it, once; names that are not a service or a
// digest never reach a key.
func TestQuarantine(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	q := Quarantine{KAPI: kapi, Keep: 3}
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

	if got, err := q.Get(ctx, "my-service", digestOf('a')); err != nil || got != nil {
		t.Fatalf("nothing quarantined yet: %+v %v", got, err)
	}
	if got, err := q.List(ctx, "my-service"); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("empty list: %#v %v", got, err)
	}
	for i, c := range []byte("abcd") {
		e := Quarantined{Service: "my-service", Digest: digestOf(c), Reason: fmt.Sprintf("reason %c", c),
			Rollout: fmt.Sprintf("00000000000%d", i), At: at.Add(time.Duration(i) * time.Minute)}
		if err := q.Add(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Add(ctx, Quarantined{Service: "other", Digest: digestOf('a'), Reason: "other's", Rollout: "0000000000ff"}); err != nil {
		t.Fatal(err)
	}
	list, err := q.List(ctx, "my-service")
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	for _, e := range list {
		digests = append(digests, e.Digest[7:8])
	}
	if strings.Join(digests, "") != "dcb" {
		t.Fatalf("newest first, at most 3: %q", digests)
	}
	if got, _ := q.Get(ctx, "my-service", digestOf('a')); got != nil {
		t.Fatalf("the oldest was kept past the bound: %+v", got)
	}
	got, err := q.Get(ctx, "my-service", digestOf('c'))
	if err != nil || got == nil || got.Reason != "reason c" || got.Rollout != "000000000002" || !got.At.Equal(at.Add(2*time.Minute)) {
		t.Fatalf("get: %+v %v", got, err)
	}
	if got, _ := q.Get(ctx, "other", digestOf('a')); got == nil || got.Reason != "other's" {
		t.Fatalf("another service's quarantine: %+v", got)
	}

	// Quarantined again: the newest, with its new reason; b is the oldest.
	if err := q.Add(ctx, Quarantined{Service: "my-service", Digest: digestOf('b'), Reason: strings.Repeat("x", 2000), Rollout: "000000000009"}); err != nil {
		t.Fatal(err)
	}
	if list, _ := q.List(ctx, "my-service"); len(list) != 3 || list[0].Digest != digestOf('b') || len(list[0].Reason) != MaxQuarantineReason {
		t.Fatalf("quarantined again: %+v", list)
	}

	if _, err := q.Clear(ctx, "my-service", "sha256:ccccc"); err == nil || errors.Is(err, ErrNotQuarantined) {
		t.Fatalf("a prefix under 12 digits: %v", err)
	}
	cleared, err := q.Clear(ctx, "my-service", strings.Repeat("c", 12))
	if err != nil || cleared.Digest != digestOf('c') {
		t.Fatalf("clear by prefix: %+v %v", cleared, err)
	}
	if got, _ := q.Get(ctx, "my-service", digestOf('c')); got != nil {
		t.Fatalf("still quarantined after its clear: %+v", got)
	}
	if _, err := q.Clear(ctx, "my-service", digestOf('c')); !errors.Is(err, ErrNotQuarantined) {
		t.Fatalf("a second clear: %v", err)
	}
	if _, err := q.Clear(ctx, "my-service", digestOf('d')); err != nil {
		t.Fatalf("clear by digest: %v", err)
	}

	for _, bad := range []struct{ service, digest string }{{"../locks", digestOf('a')}, {"my-service", "sha256:../../x"}, {"my-service", "latest"}} {
		if err := q.Add(ctx, Quarantined{Service: bad.service, Digest: bad.digest, Rollout: "000000000001"}); err == nil {
			t.Errorf("added %q %q", bad.service, bad.digest)
		}
		if _, err := q.Get(ctx, bad.service, bad.digest); err == nil {
			t.Errorf("read %q %q", bad.service, bad.digest)
		}
	}
	if _, err := q.List(ctx, "../locks"); err == nil {
		t.Error("listed a bad service name")
	}
}

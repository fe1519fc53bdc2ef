package main

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// pushRandom pushes a random image to repo:tag and returns its digest.
func pushRandom(t *testing.T, repo, tag string) string {
	t.Helper()
	img, err := random.Image(128, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return d.String()
}

func TestDeployRollbackAndStatus(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	image := strings.TrimPrefix(reg.URL, "http://") + "/demo/my-service"
	digests := map[string]string{}
	for _, v := range []string{"v1", "v2", "v3"} {
		digests[v] = pushRandom(t, image, v)
	}
	etcd, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{etcd}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	store := coord.ReleaseStore{KAPI: kapi}
	current := func() string {
		r, err := store.Current(context.Background(), "my-service")
		if err != nil || r == nil {
			return ""
		}
		return r.Image
	}
	f, url := fakeCluster(t)
	for _, n := range units3 {
		f.Add(n, fakefleet.Unit{Machine: "aaaa1111"})
	}
	// The middle instance fails to start on v3.
	f.SetHook(func(call string) {
		if call == "set "+units3[1]+" launched" {
			bad := current() == image+"@"+digests["v3"]
			f.Update(units3[1], func(u *fakefleet.Unit) { u.FailStart = bad })
		}
	})
	common := []string{"--endpoint", url, "--etcd-endpoints", etcd, "--grace", "0s", "--min-healthy-time", "0s", "--poll-interval", "1ms"}
	deploy := func(want int, args ...string) (string, string) {
		t.Helper()
		code, out, errs := runCLI(t, append(args, common...)...)
		if code != want {
			t.Fatalf("%v: exit %d, want %d\nstdout: %s\nstderr: %s", args, code, want, out, errs)
		}
		return out, errs
	}

	_, errs := deploy(0, "deploy", "my-service", "--image", image+":v1")
	if current() != image+"@"+digests["v1"] || !strings.Contains(errs, "pre-pulling "+image+"@"+digests["v1"]) {
		t.Fatalf("current %s\n%s", current(), errs)
	}
	pulls := 0
	for _, c := range f.Calls() {
		if strings.HasPrefix(c, "create "+fleetroll.PullPrefix) {
			pulls++
		}
	}
	if pulls != 1 {
		t.Fatalf("%d pull units for one machine", pulls)
	}
	if _, ok := f.Unit(fleetroll.PullPrefix); ok {
		t.Fatal("pull unit left")
	}
	out, _ := deploy(0, "deploy", "my-service", "--image", image+"@"+digests["v2"], "-o", "json")
	var rep fleetroll.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Release == nil || rep.Release.From.Digest() != digests["v1"] || rep.Release.To.Digest() != digests["v2"] || rep.Units[2].ImageDigest != digests["v2"] {
		t.Fatalf("report %s", out)
	}
	code, out, errs := runCLI(t, "status", "my-service", "--etcd-endpoints", etcd)
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "release:  "+image+"@"+digests["v2"]) || !strings.Contains(out, "previous: "+image+"@"+digests["v1"]+" (tag v1") {
		t.Fatalf("status:\n%s", out)
	}

	// v3 fails on the second instance: rolled back to v2, exit 3.
	out, _ = deploy(3, "deploy", "my-service", "--image", image+":v3", "--on-failure", "rollback", "-o", "json")
	rep = fleetroll.Report{}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Status != fleetroll.StatusRolledBack || current() != image+"@"+digests["v2"] {
		t.Fatalf("status %s, current %s", rep.Status, current())
	}
	for i, want := range []fleetroll.Outcome{fleetroll.OutcomeRolledBack, fleetroll.OutcomeRolledBack, fleetroll.OutcomeUntouched} {
		if rep.Units[i].Outcome != want || i < 2 && rep.Units[i].ImageDigest != digests["v2"] {
			t.Fatalf("unit %d: %+v", i, rep.Units[i])
		}
	}

	// rollback: the release before the current one, then one by digest.
	deploy(0, "rollback", "my-service")
	if current() != image+"@"+digests["v1"] {
		t.Fatalf("after rollback: %s", current())
	}
	deploy(0, "rollback", "my-service", "--to", digests["v2"][:7+12])
	if current() != image+"@"+digests["v2"] {
		t.Fatalf("after rollback --to: %s", current())
	}

	// Bad input: usage errors touch nothing; a tag the registry lacks is
	// exit 1 before anything is touched.
	before := len(f.Sets())
	for _, args := range [][]string{
		{"deploy", "my-service"},
		{"deploy", "my-service", "--image", "my-service:v1"},
		{"deploy", "my-service", "--image", image + ":bad tag"},
		{"deploy", "my-service@8901.service", "--image", image + ":v1"},
		{"deploy", "my-service", "--image", image + ":v1", "--on-failure", "retry"},
	} {
		deploy(2, args...)
	}
	_, errs = deploy(1, "deploy", "my-service", "--image", image+":v9")
	_ = code
	if !strings.Contains(errs, "MANIFEST_UNKNOWN") || !strings.Contains(errs, "nothing was touched") {
		t.Fatalf("missing tag: %s", errs)
	}
	_, errs = deploy(1, "rollback", "my-service", "--to", "0123456789ab")
	if !strings.Contains(errs, "no release of my-service") {
		t.Fatalf("rollback to an unknown rollout: %s", errs)
	}
	if len(f.Sets()) != before {
		t.Fatalf("bad input touched units: %v", f.Sets()[before:])
	}
}

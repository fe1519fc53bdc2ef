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
	"github.com/google/go-containerregistry/pkg/registry"
)

// A quarantined digest: deploy refuses it (exit 5, recorded, nothing
// touched), release list and status show it, release clear lifts it (a
// second clear and a bad digest are usage errors), and the deploy goes.
func TestReleaseQuarantineListClearAndDeploy(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	image := strings.TrimPrefix(reg.URL, "http://") + "/demo/my-service"
	v1, v2 := pushRandom(t, image, "v1"), pushRandom(t, image, "v2")
	etcd, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{etcd}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f, url := fakeCluster(t)
	f.Add(units3[0], fakefleet.Unit{Machine: "aaaa1111"})
	common := []string{"--endpoint", url, "--etcd-endpoints", etcd, "--grace", "0s", "--min-healthy-time", "0s", "--poll-interval", "1ms", "--ports", "8901"}
	cli := func(want int, args ...string) (string, string) {
		t.Helper()
		code, out, errs := runCLI(t, args...)
		if code != want {
			t.Fatalf("%v: exit %d, want %d\nstdout: %s\nstderr: %s", args, code, want, out, errs)
		}
		return out, errs
	}
	cli(0, append([]string{"deploy", "my-service", "--image", image + ":v1"}, common...)...)

	q := coord.Quarantined{Service: "my-service", Digest: v2, Image: image + "@" + v2, Tag: "v2", Reason: "start my-service@8901.service: unit failed",
		Rollout: "0123456789ab", At: time.Now()}
	if err := (coord.Quarantine{KAPI: kapi}).Add(context.Background(), q); err != nil {
		t.Fatal(err)
	}
	before := len(f.Sets())
	out, errs := cli(exitRefused, append([]string{"deploy", "my-service", "--image", image + ":v2", "-o", "json"}, common...)...)
	var rep fleetroll.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if rep.Status != fleetroll.StatusRefused || !strings.Contains(errs, "fleetroll release clear my-service "+v2) || !strings.Contains(errs, "nothing was touched") {
		t.Fatalf("refused deploy: %+v\n%s", rep, errs)
	}
	if len(f.Sets()) != before {
		t.Fatalf("a refused deploy touched units: %v", f.Sets()[before:])
	}
	if cur, _ := (coord.ReleaseStore{KAPI: kapi}).Current(context.Background(), "my-service"); cur == nil || cur.Digest() != v1 {
		t.Fatalf("the release changed: %+v", cur)
	}

	// Read it: release list (text and JSON, the etcd flags after the
	// arguments), status.
	out, _ = cli(0, "release", "list", "my-service", "--etcd-endpoints", etcd)
	if !strings.Contains(out, "release:  "+image+"@"+v1) || !strings.Contains(out, v2+"  v2   0123456789ab") || !strings.Contains(out, "unit failed") {
		t.Fatalf("release list:\n%s", out)
	}
	out, _ = cli(0, "release", "list", "my-service", "-o", "json", "--etcd-endpoints", etcd)
	var doc struct {
		Current     *fleetroll.Release  `json:"current"`
		Quarantined []coord.Quarantined `json:"quarantined"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || doc.Current == nil || len(doc.Quarantined) != 1 || doc.Quarantined[0].Digest != v2 {
		t.Fatalf("release list -o json: %v\n%s", err, out)
	}
	out, _ = cli(0, "status", "my-service", "--etcd-endpoints", etcd)
	if !strings.Contains(out, "quarantined: 1") || !strings.Contains(out, v2) || !strings.Contains(out, "refused") {
		t.Fatalf("status:\n%s", out)
	}

	// Clear it: by a 12-digit prefix; again, and a bad digest: usage.
	out, _ = cli(0, "release", "clear", "my-service", v2[7:19], "--etcd-endpoints", etcd)
	if !strings.Contains(out, v2+" of my-service cleared") {
		t.Fatalf("clear: %s", out)
	}
	cli(exitUsage, "release", "clear", "my-service", v2, "--etcd-endpoints", etcd)
	cli(exitUsage, "release", "clear", "my-service", "latest", "--etcd-endpoints", etcd)
	cli(exitUsage, "release", "clear", "../x", v2, "--etcd-endpoints", etcd)
	cli(exitUsage, "release", "list", "--etcd-endpoints", etcd)
	out, _ = cli(0, "release", "list", "my-service", "--etcd-endpoints", etcd)
	if !strings.Contains(out, "quarantined: none") {
		t.Fatalf("release list after the clear:\n%s", out)
	}
	cli(0, append([]string{"deploy", "my-service", "--image", image + ":v2"}, common...)...)
	if cur, _ := (coord.ReleaseStore{KAPI: kapi}).Current(context.Background(), "my-service"); cur == nil || cur.Digest() != v2 {
		t.Fatalf("after the clear: %+v", cur)
	}
}

package coord

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// etcd is fleet's own when fleet's machines are registered in it and the
// units fleet's API lists are its jobs: two clusters of one host share
// their machine, not their units.
func TestFleetOwn(t *testing.T) {
	kapi, _, _ := startEtcd(t)
	ctx := t.Context()
	ff := fakefleet.New("a@1.service", "a@2.service")
	ff.SetMachines(map[string]string{"m1": "10.0.0.1"})
	srv := httptest.NewServer(ff)
	t.Cleanup(srv.Close)
	fleet, err := fleetroll.Connect(srv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	put := func(key string) {
		if _, err := kapi.Set(ctx, DefaultFleetPrefix+key, "{}", nil); err != nil {
			t.Fatal(err)
		}
	}
	check := func(want bool, why string) {
		t.Helper()
		own, got, err := FleetOwn(ctx, kapi, fleet)
		if err != nil || own != want || !strings.Contains(got, why) {
			t.Fatalf("own %v (%q), want %v (%q)", own, got, want, why)
		}
	}
	check(false, "no fleet machine is registered in it")
	put("machines/m9/object")
	check(false, "not this cluster's")
	put("machines/m1/object")
	put("job/a@1.service/object")
	check(false, "its fleet units are not this cluster's")
	put("job/a@2.service/object")
	check(true, "")
	put("job/b@1.service/object")
	check(false, "its fleet units are not this cluster's")

	gone, err := Connect(Config{Endpoints: []string{"http://127.0.0.1:1"}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if own, why, err := FleetOwn(ctx, gone, fleet); own || err != nil || !strings.Contains(why, "does not answer") {
		t.Fatalf("an etcd that does not answer: %v %q %v", own, why, err)
	}
	// A fleet that does not answer: it cannot tell, and says so.
	srv.Close()
	if own, _, err := FleetOwn(ctx, kapi, fleet); own || err == nil {
		t.Fatalf("a fleet that does not answer: %v %v", own, err)
	}
}

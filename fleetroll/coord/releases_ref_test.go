package coord

import (
	"context"
	"strings"
	"testing"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// Issue 22, item 11: what Set writes to the key the instance unit runs is
// REGISTRY/REPOSITORY@sha256:HEX, well formed, and, when the store knows
// the service's image, of that image; anything else is refused before etcd
// is asked (no KAPI here: a write would panic).
func TestReleaseStoreSetRefusesWhatTheUnitMustNotRun(t *testing.T) {
	hex := strings.Repeat("0123456789abcdef", 4)
	own := "registry.example.com/team/my-service"
	s := ReleaseStore{Image: own}
	for _, img := range []string{
		"-registry.example.com/team/my-service@sha256:" + hex,
		"registry.example.com/-team/my-service@sha256:" + hex,
		"--privileged@sha256:" + hex,
		"registry.example.com/team/my-service@sha256:" + hex + "0",
		"registry.example.com/team/my-service@sha256:" + strings.ToUpper(hex),
		"registry.example.com/team/my-service:latest",
		"registry.example.com/team/my-service@sha256:" + hex + " --privileged",
		"evil.example/team/my-service@sha256:" + hex,
		"registry.example.com/team/other@sha256:" + hex,
		"registry.example.com/team/my-service/x@sha256:" + hex,
	} {
		if err := s.Set(context.Background(), "my-service", fleetroll.Release{Image: img}, nil); err == nil {
			t.Errorf("Set(%q) taken", img)
		}
	}
	// Without the service's image, another repository is only checked for
	// its form (a CLI deploy without a configuration).
	if err := (ReleaseStore{}).Set(context.Background(), "my-service", fleetroll.Release{Image: "-x.example/a@sha256:" + hex}, nil); err == nil {
		t.Error("a reference starting with - taken")
	}
}

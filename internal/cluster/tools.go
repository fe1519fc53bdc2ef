package cluster

import (
	"os"
	"os/exec"
	"testing"
)

// NeedTools skips the test when one of the tools is not on PATH, or fails
// it under CI=true, where contrib/cluster/deps.sh has installed them all.
func NeedTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required under CI=true (contrib/cluster/deps.sh installs it)", tool)
			}
			t.Skipf("no %s", tool)
		}
	}
}

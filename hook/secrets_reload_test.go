package hook

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// SetSecrets replaces the secrets in force, but never turns a sender on
// or off (its endpoint is routed at the start) nor takes invalid ones;
// then the secrets in force stay.
func TestSetSecrets(t *testing.T) {
	env := newTestEnv(t, nil)
	s := env.srv
	start := s.secretsNow()
	for _, tc := range []struct {
		name string
		sec  Secrets
		err  string
	}{
		{"a sender turned off", Secrets{API: "api-token-rotated-0123", DockerHub: testHubToken, GitHub: testGHSecret}, "turned on or off"},
		{"too short", Secrets{API: "short", DockerHub: testHubToken, Registry: testRegToken, GitHub: testGHSecret}, "at least"},
		{"two alike", Secrets{API: "same-secret-0123456789", Registry: "same-secret-0123456789"}, "the same"},
	} {
		if err := s.SetSecrets(tc.sec); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.err)
		}
		if s.secretsNow() != start {
			t.Fatalf("%s: a refused reload replaced the secrets", tc.name)
		}
	}
	next := start
	next.API = "api-token-rotated-0123"
	if err := s.SetSecrets(next); err != nil || s.secretsNow() != next {
		t.Fatalf("a rotation: %v", err)
	}
}

// An event stream read with the API token ends when a reload replaces the
// token: the old token reads nothing more.
func TestEventStreamEndsWithItsReplacedToken(t *testing.T) {
	env := newTestEnv(t, nil)
	resp := stream(t, env.http.URL, "", map[string]string{"Authorization": "Bearer " + testToken})
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream with the token: %d", resp.StatusCode)
	}
	next := env.srv.secretsNow()
	next.API = "api-token-rotated-0123"
	if err := env.srv.SetSecrets(next); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); ended <- err }()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("the stream broke instead of ending: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the old token's stream goes on after a reload replaced the token")
	}
}

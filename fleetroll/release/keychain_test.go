package release

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"
)

// basicRegistry is a registry that wants USER:PASSWORD (HTTP basic auth)
// on every request, and a door around it without any, to push through.
func basicRegistry(t *testing.T, user, pass string) (reg, raw *httptest.Server) {
	t.Helper()
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	raw = httptest.NewServer(inner)
	t.Cleanup(raw.Close)
	reg = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="test-registry"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(reg.Close)
	return reg, raw
}

// dockerConfig makes docker's config directory (DOCKER_CONFIG) with
// config.json holding USER:PASSWORD for host, and a HOME without one.
func dockerConfig(t *testing.T, host, user, pass string) {
	t.Helper()
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, host, auth)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", t.TempDir())
	t.Setenv("DOCKER_CONFIG", dir)
	t.Setenv("REGISTRY_AUTH_FILE", "")
	t.Setenv("XDG_RUNTIME_DIR", "")
}

// Without a credentials file, the keychain finds the registry's
// credentials in docker's config.json; a config without an entry for the
// registry, or no keychain, is anonymous (refused); a credentials file
// comes first.
func TestResolveWithDockersConfig(t *testing.T) {
	reg, raw := basicRegistry(t, "robot", "s3cret-pass")
	tr := &tokenRegistry{raw: raw}
	want := tr.push(t, "private/my-service", "v2")
	host := strings.TrimPrefix(reg.URL, "http://")
	image := host + "/private/my-service"
	ctx := context.Background()

	dockerConfig(t, host, "robot", "s3cret-pass")
	withKeychain := Registry{Keychain: authn.DefaultKeychain}
	if got, err := withKeychain.Resolve(ctx, image, "v2"); err != nil || got != want {
		t.Fatalf("resolve with docker's config = %q, %v; want %s", got, err, want)
	}
	w, err := withKeychain.Watch(image, "v2", "fleetroll-test")
	if err != nil {
		t.Fatal(err)
	}
	if m, err := w.Head(ctx, ""); err != nil || m.Digest != want {
		t.Fatalf("a tag watch with docker's config: %+v, %v; want %s", m, err, want)
	}
	if _, err := (Registry{}).Resolve(ctx, image, "v2"); err == nil || !strings.Contains(err.Error(), "401") && !strings.Contains(err.Error(), "UNAUTHORIZED") {
		t.Fatalf("without a keychain: %v", err)
	}

	credFile := filepath.Join(t.TempDir(), "creds")
	if err := os.WriteFile(credFile, []byte("robot:wrong-pass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wrong, err := CredentialsFromFile(credFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (Registry{Auth: wrong, Keychain: authn.DefaultKeychain}).Resolve(ctx, image, "v2"); err == nil {
		t.Fatal("the credentials file's wrong password was passed over for docker's config")
	}

	dockerConfig(t, "registry.example.com", "robot", "s3cret-pass")
	if _, err := withKeychain.Resolve(ctx, image, "v2"); err == nil || !strings.Contains(err.Error(), "401") && !strings.Contains(err.Error(), "UNAUTHORIZED") {
		t.Fatalf("docker's config for another registry: %v", err)
	}

	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "config.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", bad)
	if _, err := withKeychain.Resolve(ctx, image, "v2"); err == nil || !strings.Contains(err.Error(), "docker's config") {
		t.Fatalf("a docker config that cannot be read: %v", err)
	}
}

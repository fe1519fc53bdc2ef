package release

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// tokenRegistry is a registry that, like Docker Hub, answers 401 with a
// Bearer challenge and accepts only tokens from its own token server. Pulls
// of "private/..." need the user's password at the token server.
type tokenRegistry struct {
	reg, raw  *httptest.Server
	user      string
	pass      string
	issued    atomic.Int32
	challenge atomic.Int32
}

func newTokenRegistry(t *testing.T) *tokenRegistry {
	t.Helper()
	tr := &tokenRegistry{user: "robot", pass: "s3cret-pass"}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	tr.raw = httptest.NewServer(inner)
	t.Cleanup(tr.raw.Close)
	// The token server: a token per scope, anonymous for public
	// repositories, only with the password for private ones.
	// (It answers on the registry's own address: go-containerregistry
	// refuses a realm on another loopback or private address.)
	tokens := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scope := r.URL.Query().Get("scope")
		if r.URL.Query().Get("service") != "test-registry" {
			http.Error(w, "unknown service", http.StatusBadRequest)
			return
		}
		if strings.HasPrefix(scope, "repository:private/") {
			u, p, ok := r.BasicAuth()
			if !ok || u != tr.user || p != tr.pass {
				http.Error(w, `{"details":"incorrect username or password"}`, http.StatusUnauthorized)
				return
			}
		}
		tr.issued.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]string{"token": "tok:" + scope})
	})
	tr.reg = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			tokens.ServeHTTP(w, r)
			return
		}
		repo := strings.TrimPrefix(r.URL.Path, "/v2/")
		if i := strings.Index(repo, "/manifests/"); i >= 0 {
			repo = repo[:i]
		}
		scope := "repository:" + repo + ":pull"
		if r.Header.Get("Authorization") != "Bearer tok:"+scope {
			tr.challenge.Add(1)
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test-registry",scope=%q`, tr.reg.URL+"/token", scope))
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.reg.Close)
	return tr
}

// push writes a random multi-platform image to repo:tag and returns its
// index digest.
func (tr *tokenRegistry) push(t *testing.T, repo, tag string) string {
	t.Helper()
	idx, err := random.Index(256, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(strings.TrimPrefix(tr.raw.URL, "http://") + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func (tr *tokenRegistry) image(repo string) string {
	return strings.TrimPrefix(tr.reg.URL, "http://") + "/" + repo
}

func TestResolveThroughTheTokenFlow(t *testing.T) {
	tr := newTokenRegistry(t)
	public := tr.push(t, "demo/my-service", "v2")
	private := tr.push(t, "private/my-service", "v2")
	credFile := filepath.Join(t.TempDir(), "creds")
	if err := os.WriteFile(credFile, []byte(tr.user+":"+tr.pass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	creds, err := CredentialsFromFile(credFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// Anonymous: a public image's tag resolves to its index's digest.
	got, err := Registry{}.Resolve(ctx, tr.image("demo/my-service"), "v2")
	if err != nil || got != public {
		t.Fatalf("anonymous resolve = %q, %v; want %s", got, err, public)
	}
	if tr.challenge.Load() == 0 || tr.issued.Load() == 0 {
		t.Fatalf("no token flow: %d challenges, %d tokens", tr.challenge.Load(), tr.issued.Load())
	}
	// A digest is checked, not trusted.
	if got, err := (Registry{}).Resolve(ctx, tr.image("demo/my-service"), public); err != nil || got != public {
		t.Fatalf("resolve by digest = %q, %v", got, err)
	}
	missing := "sha256:" + strings.Repeat("ab", 32)
	if _, err := (Registry{}).Resolve(ctx, tr.image("demo/my-service"), missing); err == nil {
		t.Fatal("a digest the registry does not have resolved")
	}
	// A private image: refused anonymously, resolved with the credentials.
	if _, err := (Registry{}).Resolve(ctx, tr.image("private/my-service"), "v2"); err == nil || !strings.Contains(err.Error(), "UNAUTHORIZED") && !strings.Contains(err.Error(), "401") {
		t.Fatalf("anonymous resolve of a private image: %v", err)
	}
	if got, err := (Registry{Auth: creds}).Resolve(ctx, tr.image("private/my-service"), "v2"); err != nil || got != private {
		t.Fatalf("resolve with credentials = %q, %v; want %s", got, err, private)
	}
	// A tag that does not exist.
	if _, err := (Registry{}).Resolve(ctx, tr.image("demo/my-service"), "v9"); err == nil || !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") {
		t.Fatalf("missing tag: %v", err)
	}
}

func TestResolveRejectsBadInput(t *testing.T) {
	for _, c := range []struct{ image, ref, want string }{
		{"my-service", "v1", "REGISTRY/REPOSITORY"},
		{"127.0.0.1:5000/Demo/x", "v1", "not a valid repository"},
		{"127.0.0.1:5000/demo/x:v1", "v1", "not a valid repository"},
		{"127.0.0.1:5000/demo/x", "v1;rm -rf /", "want a tag"},
		{"127.0.0.1:5000/demo/x", "sha256:XYZ", "want a tag"},
	} {
		_, err := Registry{}.Resolve(context.Background(), c.image, c.ref)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Resolve(%q, %q) = %v, want %q", c.image, c.ref, err, c.want)
		}
	}
	if _, err := CredentialsFromFile(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("a missing credentials file was accepted")
	}
	f := filepath.Join(t.TempDir(), "bad")
	_ = os.WriteFile(f, []byte("no-colon\n"), 0o600)
	if _, err := CredentialsFromFile(f); err == nil || !strings.Contains(err.Error(), "USER:PASSWORD") {
		t.Errorf("bad credentials file: %v", err)
	}
}

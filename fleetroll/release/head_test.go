package release

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/clocktest"
)

// etagRegistry answers HEADs of demo/app's manifests like
// registry/distribution: an ETag that is the digest, 304 to a matching
// If-None-Match; behind a Bearer challenge and a token server.
type etagRegistry struct {
	srv *httptest.Server

	mu        sync.Mutex
	digest    string
	heads     []string // each HEAD's If-None-Match
	tokens    int
	limited   int    // answer this many 429s next
	retry     string // their Retry-After
	remaining string // RateLimit-Remaining on every answer
}

func newETagRegistry(t *testing.T) *etagRegistry {
	t.Helper()
	er := &etagRegistry{digest: "sha256:" + strings.Repeat("a", 64)}
	er.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		er.mu.Lock()
		defer er.mu.Unlock()
		if r.URL.Path == "/token" {
			er.tokens++
			_ = json.NewEncoder(w).Encode(map[string]string{"token": "tok"})
			return
		}
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test",scope="repository:demo/app:pull"`, er.srv.URL+"/token"))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.URL.Path != "/v2/demo/app/manifests/latest" {
			w.WriteHeader(http.StatusOK) // the /v2/ ping
			return
		}
		if r.Method != http.MethodHead {
			t.Errorf("%s of the manifest: want HEAD only", r.Method)
		}
		if !strings.Contains(r.Header.Get("Accept"), "application/vnd.oci.image.index.v1+json") {
			t.Errorf("Accept %q: want the index types", r.Header.Get("Accept"))
		}
		er.heads = append(er.heads, r.Header.Get("If-None-Match"))
		if er.remaining != "" {
			w.Header().Set("RateLimit-Remaining", er.remaining)
		}
		if er.limited > 0 {
			er.limited--
			w.Header().Set("Retry-After", er.retry)
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		etag := `"` + er.digest + `"`
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Docker-Content-Digest", er.digest)
		w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(er.srv.Close)
	return er
}

func (er *etagRegistry) image() string {
	return strings.TrimPrefix(er.srv.URL, "http://") + "/demo/app"
}

func TestHeadETagAnd304(t *testing.T) {
	er := newETagRegistry(t)
	w, err := Registry{}.Watch(er.image(), "latest", "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := w.Head(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest != er.digest || m.ETag != `"`+er.digest+`"` || m.NotModified || m.Wait != 0 {
		t.Fatalf("first HEAD: %+v", m)
	}
	m2, err := w.Head(t.Context(), m.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if !m2.NotModified || m2.Digest != er.digest {
		t.Fatalf("HEAD with the ETag: %+v, want 304 with the digest", m2)
	}
	er.mu.Lock()
	er.digest = "sha256:" + strings.Repeat("b", 64)
	er.mu.Unlock()
	m3, err := w.Head(t.Context(), m.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if m3.NotModified || m3.Digest != "sha256:"+strings.Repeat("b", 64) {
		t.Fatalf("HEAD after a push: %+v", m3)
	}
	er.mu.Lock()
	defer er.mu.Unlock()
	if want := []string{"", m.ETag, m.ETag}; strings.Join(er.heads, "|") != strings.Join(want, "|") {
		t.Errorf("If-None-Match sent: %q, want %q", er.heads, want)
	}
	if er.tokens != 1 {
		t.Errorf("%d tokens asked for three HEADs, want 1 (the handshake is kept)", er.tokens)
	}
}

func TestHead429(t *testing.T) {
	er := newETagRegistry(t)
	er.limited, er.retry = 1, "120"
	w, err := Registry{}.Watch(er.image(), "latest", "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := w.Head(t.Context(), "")
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("error %v, want ErrRateLimited", err)
	}
	if m.Wait != 2*time.Minute {
		t.Errorf("wait %s, want the 2m Retry-After asked", m.Wait)
	}
	if m, err = w.Head(t.Context(), ""); err != nil || m.Digest != er.digest {
		t.Fatalf("after the 429: %+v, %v", m, err)
	}
}

func TestHeadRetryAfterDateByTheClock(t *testing.T) {
	er := newETagRegistry(t)
	clock := clocktest.New()
	er.limited, er.retry = 1, clock.Now().Add(90*time.Second).Format(http.TimeFormat)
	w, err := Registry{Clock: clock}.Watch(er.image(), "latest", "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := w.Head(t.Context(), "")
	if !errors.Is(err, ErrRateLimited) || m.Wait != 90*time.Second {
		t.Fatalf("%+v, %v: want ErrRateLimited and a wait of 90s", m, err)
	}
}

func TestWatchRefusesBadNames(t *testing.T) {
	for _, c := range []struct{ image, tag string }{{"-x/y", "latest"}, {"example.com/app", "bad tag"}, {"example.com/app", ""}} {
		if _, err := (Registry{}).Watch(c.image, c.tag, ""); err == nil {
			t.Errorf("Watch(%q, %q): no error", c.image, c.tag)
		}
	}
}

func TestWaitAsked(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name   string
		status int
		h      map[string]string
		want   time.Duration
	}{
		{"nothing asked", 200, nil, 0},
		{"429 without a word", 429, nil, 0},
		{"Retry-After seconds", 429, map[string]string{"Retry-After": "30"}, 30 * time.Second},
		{"Retry-After on a 503", 503, map[string]string{"Retry-After": "5"}, 5 * time.Second},
		{"Retry-After date", 429, map[string]string{"Retry-After": now.Add(time.Minute).Format(http.TimeFormat)}, time.Minute},
		{"Retry-After date past", 429, map[string]string{"Retry-After": now.Add(-time.Minute).Format(http.TimeFormat)}, 0},
		{"Retry-After garbage", 429, map[string]string{"Retry-After": "soon"}, 0},
		{"Docker Hub window spent", 200, map[string]string{"RateLimit-Remaining": "0;w=21600"}, 6 * time.Hour},
		{"Docker Hub window left", 200, map[string]string{"RateLimit-Remaining": "76;w=21600"}, 0},
		{"429 with Docker Hub window", 429, map[string]string{"RateLimit-Remaining": "0;w=21600"}, 6 * time.Hour},
		{"RateLimit-Reset seconds", 200, map[string]string{"RateLimit-Remaining": "0", "RateLimit-Reset": "42"}, 42 * time.Second},
		{"X-RateLimit-Reset unix", 429, map[string]string{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": fmt.Sprint(now.Add(10 * time.Minute).Unix())}, 10 * time.Minute},
		{"reset without spent", 200, map[string]string{"RateLimit-Remaining": "3", "RateLimit-Reset": "42"}, 0},
		{"Retry-After wins", 429, map[string]string{"Retry-After": "7", "RateLimit-Remaining": "0;w=60"}, 7 * time.Second},
		// Seconds past a Duration's range ask for the longest wait, not a
		// wrapped one (18446744074 s wraps to 0.29 s, 9300000000 s below 0).
		{"Retry-After past the range", 429, map[string]string{"Retry-After": "18446744074"}, math.MaxInt64},
		{"Retry-After past the range, negative", 503, map[string]string{"Retry-After": "9300000000"}, math.MaxInt64},
		{"RateLimit-Reset past the range", 429, map[string]string{"RateLimit-Remaining": "0", "RateLimit-Reset": "18446744074"}, math.MaxInt64},
		{"window past the range", 429, map[string]string{"RateLimit-Remaining": "0;w=18446744074"}, math.MaxInt64},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range c.h {
				h.Set(k, v)
			}
			if got := WaitAsked(c.status, h, now); got != c.want {
				t.Errorf("WaitAsked = %s, want %s", got, c.want)
			}
		})
	}
}

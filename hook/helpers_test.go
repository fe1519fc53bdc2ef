package hook

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

const (
	testToken    = "test-token-0123456789abcdef"
	testHubToken = "dockerhub-token-0123456789"
	testRegToken = "registry-token-0123456789"
	testGHSecret = "github-secret-0123456789"
)

// fixture reads a sample payload from testdata (captured from the real
// senders).
func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("fixture %s: %v", name, err)
	}
	return b
}

const testConfig = `
services:
  - name: my-service
    ports: 8901-8903
    dockerhub:
      - repository: demo/my-service
        tags: [latest]
    registry:
      - repository: demo/my-service
        tags: [v1, v2s2, "release-*"]
    github:
      - repository: demo/my-service
  - name: other
    ports: [9001]
`

var testUnits = []string{"my-service@8901.service", "my-service@8902.service", "my-service@8903.service", "other@9001.service"}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testEnv struct {
	srv   *Server
	fleet *fakefleet.Fleet
	http  *httptest.Server
	logs  *syncBuffer
	// stop stops the server's queue (and sends the callbacks left) before
	// the test ends.
	stop func()
}

// newTestEnv starts a server over an in-memory fleet; modify adjusts its
// options first. The queue stops when the test ends.
func newTestEnv(t *testing.T, modify func(*Options)) *testEnv {
	t.Helper()
	env, err := newTestEnvErr(t, modify)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// newTestEnvErr is newTestEnv, returning New's error.
func newTestEnvErr(t *testing.T, modify func(*Options)) (*testEnv, error) {
	t.Helper()
	ff := fakefleet.New(testUnits...)
	fsrv := httptest.NewServer(ff)
	t.Cleanup(fsrv.Close)
	fleet, err := fleetroll.Connect(fsrv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig([]byte(testConfig), testBase())
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	// No callback origin is allowed unless a test says so: the fixtures name
	// Docker Hub, and tests never leave this machine.
	noCallbacks, err := NewCallbacker(nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	opt := Options{
		Callbacks: noCallbacks,
		Fleet:     fleet,
		Config:    cfg,
		Secrets:   Secrets{API: testToken, DockerHub: testHubToken, Registry: testRegToken, GitHub: testGHSecret},
		Logger:    slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if modify != nil {
		modify(&opt)
	}
	srv, err := New(opt)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Run(ctx, time.Second)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return &testEnv{srv: srv, fleet: ff, http: hs, logs: logs, stop: stop}, nil
}

func (e *testEnv) do(t *testing.T, method, path string, body []byte, headers map[string]string) (*http.Response, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, e.http.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return resp, m
}

// waitRollout waits until the rollout reaches a final status.
func (e *testEnv) waitRollout(t *testing.T, id string) fleetroll.Report {
	t.Helper()
	return waitStore(t, e.srv.Store(), id, func(r fleetroll.Report) bool { return r.Status.Final() })
}

// waitIdle waits until the queue has nothing queued or running.
func (e *testEnv) waitIdle(t *testing.T) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		changed := e.srv.queue.Changed()
		if qd, rn := e.srv.queue.Depth(); qd == 0 && rn == 0 {
			return
		}
		select {
		case <-deadline:
			t.Fatal("the queue did not become idle")
		case <-changed:
		}
	}
}

// waitStore waits until the store's record of id satisfies cond.
func waitStore(t *testing.T, s *Store, id string, cond func(fleetroll.Report) bool) fleetroll.Report {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		changed := s.Changed()
		if ro, ok := s.Get(id); ok && cond(ro) {
			return ro
		}
		select {
		case <-deadline:
			ro, _ := s.Get(id)
			t.Fatalf("rollout %s: condition not met: %+v", id, ro)
		case <-changed:
		}
	}
}

func jsonHeaders() map[string]string { return map[string]string{"Content-Type": "application/json"} }

func withHeaders(base map[string]string, kv ...string) map[string]string {
	m := map[string]string{}
	for k, v := range base {
		m[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func mustContain(t *testing.T, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Fatalf("%q does not contain %q", s, sub)
	}
}

// testBase are the settings the tests' configurations are decoded over:
// the defaults, with no grace, no watch and quick polls for the fake fleet.
func testBase() rollout.Settings {
	s := rollout.Defaults()
	s.Grace, s.PollInterval, s.MinHealthyTime = 0, time.Millisecond, 0
	return s
}

package fleetroll

import (
	"github.com/coreos/fleet/client"
	"github.com/coreos/fleet/machine"
	"github.com/coreos/fleet/schema"
	"google.golang.org/api/googleapi"

	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fleetAPI serves the few fleet v1 endpoints the roller uses, with two units
// per page so callers must follow nextPageToken.
func fleetAPI(t *testing.T, units []string) http.Handler {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /fleet/v1/units", func(w http.ResponseWriter, r *http.Request) {
		start := 0
		if tok := r.URL.Query().Get("nextPageToken"); tok != "" {
			if err := json.Unmarshal([]byte(tok), &start); err != nil {
				http.Error(w, "bad token", 400)
				return
			}
		}
		end := min(start+2, len(units))
		page := map[string]any{}
		var us []map[string]string
		for _, n := range units[start:end] {
			us = append(us, map[string]string{"name": n, "desiredState": "launched", "currentState": "launched"})
		}
		page["units"] = us
		if end < len(units) {
			tok, _ := json.Marshal(end)
			page["nextPageToken"] = string(tok)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(page)
	})
	// Like fleet v1.0.0, GET /state/NAME drops the connection (a server panic)
	// for a unit without state; the filtered list answers empty.
	mux.HandleFunc("GET /fleet/v1/state/{name}", func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	})
	mux.HandleFunc("GET /fleet/v1/state", func(w http.ResponseWriter, r *http.Request) {
		var states []map[string]string
		if name := r.URL.Query().Get("unitName"); name == units[0] {
			states = append(states, map[string]string{"name": name, "machineID": "abcdef0123",
				"systemdActiveState": "active", "systemdSubState": "running", "systemdLoadState": "loaded"})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"states": states})
	})
	mux.HandleFunc("GET /fleet/v1/machines", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"machines":[{"id":"abcdef0123","primaryIP":"10.0.0.7"},{"id":"feed","primaryIP":"10.0.0.8"}]}`))
	})
	mux.HandleFunc("PUT /fleet/v1/units/{name}", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			DesiredState string `json:"desiredState"`
		}
		if r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&body) != nil {
			http.Error(w, "bad request", 400)
			return
		}
		for _, u := range units {
			if u == r.PathValue("name") {
				w.WriteHeader(204)
				return
			}
		}
		w.WriteHeader(409)
		_, _ = w.Write([]byte(`{"error":{"code":409,"message":"unit does not exist and options field empty"}}`))
	})
	return mux
}

func TestConnectHTTP(t *testing.T) {
	units := []string{"s@1.service", "s@2.service", "s@3.service", "s@4.service", "s@5.service"}
	srv := httptest.NewServer(fleetAPI(t, units))
	defer srv.Close()
	f, err := Connect(srv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	got, err := f.Units(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range got {
		names = append(names, u.Name)
	}
	if !reflect.DeepEqual(names, units) {
		t.Fatalf("paginated units = %v, want %v", names, units)
	}

	st, err := f.UnitState(ctx, "s@1.service")
	if err != nil || st.SystemdSubState != "running" || st.MachineID != "abcdef0123" {
		t.Fatalf("state = %+v, %v", st, err)
	}
	if st, err := f.UnitState(ctx, "s@2.service"); !errors.Is(err, ErrNotFound) || st != nil {
		t.Fatalf("404 state = %+v, %v; want ErrNotFound", st, err)
	}
	if err := f.SetUnitTargetState(ctx, "s@1.service", "loaded"); err != nil {
		t.Fatal(err)
	}
	if err := f.SetUnitTargetState(ctx, "nope@1.service", "loaded"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("set on unknown unit = %v, want ErrNotFound", err)
	}

	ips, err := f.MachineIPs(ctx)
	if err != nil || ips["abcdef0123"] != "10.0.0.7" || ips["feed"] != "10.0.0.8" {
		t.Fatalf("machine IPs = %v, %v", ips, err)
	}

	// The plan follows pagination too.
	p, err := MakePlan(ctx, f, Target{Service: "s"})
	if err != nil || len(p.Units) != 5 {
		t.Fatalf("plan = %+v, %v", p, err)
	}
}

func TestConnectUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "fleet.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(fleetAPI(t, []string{"s@1.service"}))
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	for _, ep := range []string{"unix://" + sock, "file://" + sock} {
		f, err := Connect(ep, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.UnitState(context.Background(), "s@1.service"); err != nil {
			t.Fatalf("%s: %v", ep, err)
		}
	}
}

func TestConnectRejectsBadEndpoints(t *testing.T) {
	for _, ep := range []string{"ftp://x", "http://", "unix://", "://", "127.0.0.1:49153"} {
		if _, err := Connect(ep, time.Second); err == nil {
			t.Errorf("Connect(%q) accepted", ep)
		}
	}
	if _, err := Connect("http://127.0.0.1:1", 0); err == nil {
		t.Error("zero request timeout accepted")
	}
}

func TestConnectRequestTimeoutAndCancel(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)

	f, _ := Connect(srv.URL, 50*time.Millisecond)
	_, err := f.UnitState(context.Background(), "s@1.service")
	if err == nil || !IsTransient(err) {
		t.Fatalf("timed-out request: err = %v, want a transient error", err)
	}

	f, _ = Connect(srv.URL, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := f.Units(ctx)
		errc <- err
	}()
	<-arrived // the timed-out request
	<-arrived // the one to cancel
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled request: err = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("request not cancelled with its context")
	}
	if _, err := f.Units(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("call on a cancelled context: %v", err)
	}
}

func TestConnectUnreachable(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	f, _ := Connect("http://"+addr, time.Second)
	_, err := f.Units(context.Background())
	if err == nil || !IsTransient(err) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("err = %v", err)
	}
}

// stubAPI is a context-free client.API subset.
type stubAPI struct {
	states []*schema.UnitState
	setErr error
}

func (s stubAPI) Units() ([]*schema.Unit, error)               { return []*schema.Unit{{Name: "s@1.service"}}, nil }
func (s stubAPI) UnitStates() ([]*schema.UnitState, error)     { return s.states, nil }
func (s stubAPI) SetUnitTargetState(name, target string) error { return s.setErr }
func (s stubAPI) Machines() ([]machine.MachineState, error) {
	return []machine.MachineState{{ID: "m1", PublicIP: "10.0.0.1"}}, nil
}

func TestWrapAPI(t *testing.T) {
	var _ API = client.API(nil) // fleet's client satisfies API
	f := WrapAPI(stubAPI{
		states: []*schema.UnitState{{Name: "s@2.service"}, {Name: "s@1.service", SystemdActiveState: "active"}},
		setErr: &googleapi.Error{Code: 409, Message: "unit does not exist and options field empty"},
	})
	ctx := context.Background()
	if st, err := f.UnitState(ctx, "s@1.service"); err != nil || st.SystemdActiveState != "active" {
		t.Fatalf("state = %+v, %v", st, err)
	}
	if _, err := f.UnitState(ctx, "s@3.service"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing state: %v", err)
	}
	if err := f.SetUnitTargetState(ctx, "s@3.service", "loaded"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("set on missing unit: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.Units(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

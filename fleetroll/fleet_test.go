package fleetroll

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coreos/fleet/client"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

// fiveUnits is a fake with five units (three pages of two), s@1 on machine
// abcdef0123, s@2 with no state published, and two machines.
func fiveUnits() (*fakefleet.Fleet, []string) {
	units := []string{"s@1.service", "s@2.service", "s@3.service", "s@4.service", "s@5.service"}
	f := fakefleet.New(units...)
	f.Update(units[0], func(u *fakefleet.Unit) { u.Machine = "abcdef0123" })
	f.Update(units[1], func(u *fakefleet.Unit) { u.NoState = true })
	f.SetMachines(map[string]string{"abcdef0123": "10.0.0.7", "feed": "10.0.0.8"})
	return f, units
}

func TestConnectHTTP(t *testing.T) {
	ff, units := fiveUnits()
	f := connectFake(t, ff)
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
	if err := f.SetUnitTargetState(ctx, "s@1.service", "launched"); err != nil {
		t.Fatal(err)
	}
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
	srv := httptest.NewUnstartedServer(fakefleet.New("s@1.service"))
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

// WrapAPI adapts fleet's own context-free client.
func TestWrapAPI(t *testing.T) {
	ff, _ := fiveUnits()
	srv := httptest.NewServer(ff)
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	api, err := client.NewHTTPClient(&http.Client{Timeout: 5 * time.Second}, *u)
	if err != nil {
		t.Fatal(err)
	}
	f := WrapAPI(api)
	ctx := context.Background()
	if ips, err := f.MachineIPs(ctx); err != nil || ips["feed"] != "10.0.0.8" {
		t.Fatalf("machines = %v, %v", ips, err)
	}
	if st, err := f.UnitState(ctx, "s@1.service"); err != nil || st.SystemdActiveState != "active" {
		t.Fatalf("state = %+v, %v", st, err)
	}
	if _, err := f.UnitState(ctx, "s@2.service"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing state: %v", err)
	}
	if err := f.SetUnitTargetState(ctx, "s@9.service", "loaded"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("set on missing unit: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.Units(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
	"github.com/fleetroll/fleetroll/internal/golden"
)

var units3 = []string{"my-service@8901.service", "my-service@8902.service", "my-service@8903.service"}

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), append([]string{"fleetroll"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func fakeCluster(t *testing.T, names ...string) (*fakefleet.Fleet, string) {
	t.Helper()
	f := fakefleet.New(names...)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func TestRestartSucceeds(t *testing.T) {
	f, url := fakeCluster(t, units3...)
	code, out, errs := runCLI(t, "restart", "my-service", "--ports", "8901-8903", "--endpoint", url, "--grace", "0s", "--min-healthy-time", "0s", "--poll-interval", "1ms")
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	want := []string{units3[0] + " loaded", units3[0] + " launched", units3[1] + " loaded", units3[1] + " launched", units3[2] + " loaded", units3[2] + " launched"}
	if got := f.Sets(); !reflect.DeepEqual(got, want) {
		t.Fatalf("sets = %v", got)
	}
	if !strings.Contains(out, "succeeded: 3/3 restarted") {
		t.Fatalf("summary missing: %s", out)
	}
	for _, phase := range []string{": stopping\n", ": stopped in", ": starting\n", ": running in"} {
		if strings.Count(errs, phase) != 3 {
			t.Fatalf("want 3 %q progress lines:\n%s", phase, errs)
		}
	}
}

func TestRestartJSONReport(t *testing.T) {
	_, url := fakeCluster(t, units3...)
	t.Setenv("FLEETCTL_ENDPOINT", url)
	t.Setenv("FLEETROLL_GRACE", "0s")
	t.Setenv("FLEETROLL_POLL_INTERVAL", "1ms")
	code, out, errs := runCLI(t, "restart", "my-service", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var rep fleetroll.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("stdout is not a JSON report: %v\n%s", err, out)
	}
	if rep.Status != fleetroll.StatusSucceeded || rep.Restarted() != 3 || rep.Units[0].Unit != units3[0] {
		t.Fatalf("report = %+v", rep)
	}
}

func TestRestartFailureExits1AndLeavesTheRestUntouched(t *testing.T) {
	f, url := fakeCluster(t, units3...)
	f.Update(units3[1], func(u *fakefleet.Unit) { u.FailStart = true })
	code, out, errs := runCLI(t, "restart", "my-service", "--endpoint", url, "--grace", "0s", "--min-healthy-time", "0s", "--poll-interval", "1ms")
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s\n%s", code, out, errs)
	}
	if !strings.Contains(errs, "start my-service@8902.service") || !strings.Contains(errs, "IS DOWN") {
		t.Fatalf("stderr does not name the unit loudly:\n%s", errs)
	}
	for _, s := range f.Sets() {
		if strings.HasPrefix(s, units3[2]) {
			t.Fatalf("third unit touched: %v", f.Sets())
		}
	}
	if !strings.Contains(out, units3[2]+"  untouched") {
		t.Fatalf("summary:\n%s", out)
	}
}

func TestRestartDryRunTouchesNothing(t *testing.T) {
	f, url := fakeCluster(t, units3...)
	code, out, errs := runCLI(t, "restart", "my-service", "--dry-run", "--endpoint", url)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if len(f.Sets()) != 0 {
		t.Fatalf("dry run set states: %v", f.Sets())
	}
	for _, u := range units3 {
		if !strings.Contains(out, u) {
			t.Fatalf("plan does not list %s:\n%s", u, out)
		}
	}
}

// TestBadInput: one clear line on stderr, the right exit code, nothing touched.
func TestBadInput(t *testing.T) {
	f, url := fakeCluster(t, units3...)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown unit", []string{"restart", "my-service", "--ports", "8901,8999", "--endpoint", url}, 2, "unknown to fleet: my-service@8999.service"},
		{"bad port list", []string{"restart", "my-service", "--ports", "89x1", "--endpoint", url}, 2, `--ports: port list "89x1"`},
		{"reversed range", []string{"restart", "my-service", "--ports", "8903-8901", "--endpoint", url}, 2, "reversed"},
		{"unreachable endpoint", []string{"restart", "my-service", "--endpoint", dead}, 1, "cannot reach fleet at " + dead},
		{"bad endpoint scheme", []string{"restart", "my-service", "--endpoint", "ftp://x"}, 2, "unsupported scheme"},
		{"bad duration", []string{"restart", "my-service", "--grace", "soon", "--endpoint", url}, 2, "grace"},
		{"negative grace", []string{"restart", "my-service", "--grace", "-1s", "--endpoint", url}, 2, "grace must not be negative"},
		{"zero stop timeout", []string{"restart", "my-service", "--stop-timeout", "0s", "--endpoint", url}, 2, "stop_timeout must be positive"},
		{"unknown flag", []string{"restart", "my-service", "--nope", "--endpoint", url}, 2, "nope"},
		{"no service", []string{"restart", "--endpoint", url}, 2, "name a service"},
		{"ports with units", []string{"restart", units3[0], "--ports", "1", "--endpoint", url}, 2, "--ports goes with a service name"},
		{"bad output", []string{"restart", "my-service", "-o", "yaml", "--endpoint", url}, 2, "--output"},
		{"unknown command", []string{"restrat"}, 2, "unknown command"},
		{"service name of a path", []string{"restart", "../x", "--endpoint", url}, 2, "service"},
		{"status of a path", []string{"status", "../.."}, 2, "neither a rollout ID"},
		{"status of a dot-dot", []string{"status", ".."}, 2, "neither a rollout ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCLI(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out, errs)
			}
			lines := strings.Split(strings.TrimSpace(errs), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "fleetroll: ") || !strings.Contains(lines[0], tc.msg) {
				t.Fatalf("stderr = %q, want one line containing %q", errs, tc.msg)
			}
		})
	}
	if len(f.Sets()) != 0 {
		t.Fatalf("bad input touched units: %v", f.Sets())
	}
}

func TestVersion(t *testing.T) {
	want := fmt.Sprintf("fleetroll %s (revision %s, %s)\n", thisBuild().Version, thisBuild().Revision, runtime.Version())
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, errOut := runCLI(t, args...)
		if code != 0 || out != want {
			t.Fatalf("fleetroll %v: exit %d, out %q (want %q), err %q", args, code, out, want, errOut)
		}
	}
}

func TestMoveFlagsFirst(t *testing.T) {
	app := newApp(nil, nil)
	for _, tc := range []struct{ in, want []string }{
		{[]string{"fleetroll", "restart", "svc", "--ports", "1,2", "--dry-run", "--grace=0s"},
			[]string{"fleetroll", "restart", "--ports", "1,2", "--dry-run", "--grace=0s", "svc"}},
		{[]string{"fleetroll", "restart", "--ports", "1", "svc"}, []string{"fleetroll", "restart", "--ports", "1", "svc"}},
		{[]string{"fleetroll", "restart", "a@1.service", "-o", "json", "b@2.service"},
			[]string{"fleetroll", "restart", "-o", "json", "a@1.service", "b@2.service"}},
		{[]string{"fleetroll", "version"}, []string{"fleetroll", "version"}},
		{[]string{"fleetroll", "restart", "svc", "--po", "--generate-bash-completion"}, []string{"fleetroll", "restart", "svc", "--po", "--generate-bash-completion"}},
		{[]string{"fleetroll", "unknown", "x", "--y"}, []string{"fleetroll", "unknown", "x", "--y"}},
	} {
		if got := moveFlagsFirst(app, tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("moveFlagsFirst(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// restart -o json and status ID -o json print the one record, and the same
// document for the same rollout.
func TestRestartAndStatusPrintTheRecordGolden(t *testing.T) {
	_, url := fakeCluster(t, units3...)
	etcd, _ := etcdtest.Start(t)
	code, out, errs := runCLI(t, "restart", "my-service", "--endpoint", url, "--grace", "0s", "--min-healthy-time", "0s", "--poll-interval", "1ms",
		"--etcd-endpoints", etcd, "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	golden.Check(t, "restart.golden.json", []byte(out))
	var rep fleetroll.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	code, status, errs := runCLI(t, "status", rep.ID, "-o", "json", "--etcd-endpoints", etcd)
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errs)
	}
	if canonicalJSON(t, status) != canonicalJSON(t, out) {
		t.Fatalf("status -o json:\n%s\nrestart -o json:\n%s", status, out)
	}
}

func canonicalJSON(t *testing.T, s string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, s)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// An instance left stopped (not launched) is named, not passed over: the
// summary of a roll of every launched instance warns about it.
func TestRestartWarnsAboutInstancesNotLaunched(t *testing.T) {
	f, url := fakeCluster(t, units3[0], units3[2])
	f.Add(units3[1], fakefleet.Unit{Desired: "loaded", Active: "inactive", Sub: "dead"})
	code, out, errs := runCLI(t, "restart", "my-service", "--endpoint", url, "--grace", "0s", "--min-healthy-time", "0s", "--poll-interval", "1ms")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(errs, "warning: "+units3[1]+" is loaded in fleet but not launched") || !strings.Contains(errs, "fleetctl start "+units3[1]) || !strings.Contains(out, "WARNING: not launched, so not restarted: "+units3[1]) {
		t.Fatalf("no warning:\nstdout: %s\nstderr: %s", out, errs)
	}
	for _, s := range f.Sets() {
		if strings.HasPrefix(s, units3[1]) {
			t.Fatalf("%s was touched: %s", units3[1], s)
		}
	}
}

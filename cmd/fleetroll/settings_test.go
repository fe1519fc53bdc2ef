package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	"github.com/fleetroll/fleetroll/hook"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
	"github.com/urfave/cli/v2"
	client "go.etcd.io/etcd/client/v2"
)

// testBase are the settings the tests' configurations are decoded over:
// the defaults, with no grace, no watch and quick polls for the fake fleet.
func testBase() rollout.Settings {
	s := rollout.Defaults()
	s.Grace, s.PollInterval, s.MinHealthyTime = 0, time.Millisecond, 0
	return s
}

// settingCase sets one leaf of rollout.Settings to a value other than its
// default, in the configuration (yaml, a service's keys), with flags, and
// through env vars ("" when the setting has none of that kind). Settings
// it needs come along (a drain delay needs the drain).
type settingCase struct {
	yaml  string
	flags []string
	env   map[string]string
	want  any
}

// settingCases covers every leaf of rollout.Settings, by its path.
var settingCases = map[string]settingCase{
	"Ports":          {"ports: 8901-8902", []string{"--ports", "8901-8902"}, map[string]string{"FLEETROLL_PORTS": "8901,8902"}, rollout.PortList{"8901", "8902"}},
	"Grace":          {"grace: 7s", []string{"--grace", "7s"}, map[string]string{"FLEETROLL_GRACE": "7s"}, 7 * time.Second},
	"MinHealthyTime": {"min_healthy_time: 7s", []string{"--min-healthy-time", "7s"}, map[string]string{"FLEETROLL_MIN_HEALTHY_TIME": "7s"}, 7 * time.Second},
	"ProgressDeadline": {"progress_deadline: 7m", []string{"--progress-deadline", "7m"},
		map[string]string{"FLEETROLL_PROGRESS_DEADLINE": "7m"}, 7 * time.Minute},
	"StopTimeout":    {"stop_timeout: 7s", []string{"--stop-timeout", "7s"}, map[string]string{"FLEETROLL_STOP_TIMEOUT": "7s"}, 7 * time.Second},
	"StartTimeout":   {"start_timeout: 7s", []string{"--start-timeout", "7s"}, map[string]string{"FLEETROLL_START_TIMEOUT": "7s"}, 7 * time.Second},
	"PollInterval":   {"poll_interval: 7s", []string{"--poll-interval", "7s"}, map[string]string{"FLEETROLL_POLL_INTERVAL": "7s"}, 7 * time.Second},
	"NudgeInterval":  {"nudge_interval: 0s", []string{"--nudge-interval", "0s"}, map[string]string{"FLEETROLL_NUDGE_INTERVAL": "0s"}, time.Duration(0)},
	"MaxUnavailable": {"max_unavailable: 50%", []string{"--max-unavailable", "50%"}, map[string]string{"FLEETROLL_MAX_UNAVAILABLE": "50%"}, fleetroll.Unavailable{Percent: 50}},
	"Watch":          {"watch: false", []string{"--watch=false"}, map[string]string{"FLEETROLL_WATCH": "false"}, false},
	"Lock":           {"lock: fail", []string{"--lock", "fail"}, map[string]string{"FLEETROLL_LOCK": "fail"}, rollout.LockFail},
	"LockTTL":        {"lock_ttl: 7s", []string{"--lock-ttl", "7s"}, map[string]string{"FLEETROLL_LOCK_TTL": "7s"}, 7 * time.Second},
	"Drain.Prefix": {"drain: {prefix: /lb/x}", []string{"--drain", "--drain-prefix", "/lb/x"},
		map[string]string{"FLEETROLL_DRAIN": "true", "FLEETROLL_DRAIN_PREFIX": "/lb/x"}, "/lb/x"},
	"Drain.Delay": {"drain: {delay: 7s}", []string{"--drain", "--drain-delay", "7s"},
		map[string]string{"FLEETROLL_DRAIN": "1", "FLEETROLL_DRAIN_DELAY": "7s"}, 7 * time.Second},
	"Drain.Timeout": {"drain: {timeout: 7s}", []string{"--drain", "--drain-timeout", "7s"},
		map[string]string{"FLEETROLL_DRAIN": "1", "FLEETROLL_DRAIN_TIMEOUT": "7s"}, 7 * time.Second},
	"Health.Path": {"health: {path: /up}", []string{"--health-path", "/up"}, map[string]string{"FLEETROLL_HEALTH_PATH": "/up"}, "/up"},
	"Health.Successes": {"health: {path: /up, successes: 7}", []string{"--health-path", "/up", "--health-successes", "7"},
		map[string]string{"FLEETROLL_HEALTH_PATH": "/up", "FLEETROLL_HEALTH_SUCCESSES": "7"}, 7},
	"Health.Interval": {"health: {path: /up, interval: 7s}", []string{"--health-path", "/up", "--health-interval", "7s"},
		map[string]string{"FLEETROLL_HEALTH_PATH": "/up", "FLEETROLL_HEALTH_INTERVAL": "7s"}, 7 * time.Second},
	"Health.Timeout": {"health: {path: /up, timeout: 7s}", []string{"--health-path", "/up", "--health-timeout", "7s"},
		map[string]string{"FLEETROLL_HEALTH_PATH": "/up", "FLEETROLL_HEALTH_TIMEOUT": "7s"}, 7 * time.Second},
	"Image":       {"image: 127.0.0.1:5000/demo/x", []string{"--image", "127.0.0.1:5000/demo/x"}, map[string]string{"FLEETROLL_IMAGE": "127.0.0.1:5000/demo/x"}, "127.0.0.1:5000/demo/x"},
	"OnFailure":   {"on_failure: rollback", []string{"--on-failure", "rollback"}, map[string]string{"FLEETROLL_ON_FAILURE": "rollback"}, fleetroll.OnFailureRollback},
	"PullTimeout": {"pull_timeout: 7s", []string{"--pull-timeout", "7s"}, map[string]string{"FLEETROLL_PULL_TIMEOUT": "7s"}, 7 * time.Second},
	"PrePull":     {"pre_pull: false", []string{"--no-pre-pull"}, map[string]string{"FLEETROLL_NO_PRE_PULL": "true"}, false},
	"TagPolicy":   {"tag_policy: minor", []string{"--tag-policy", "minor"}, map[string]string{"FLEETROLL_TAG_POLICY": "minor"}, fleetroll.TagPolicyMinor},
	"Prerelease":  {"tag_policy: patch\n    prerelease: true", []string{"--tag-policy", "patch", "--prerelease"}, map[string]string{"FLEETROLL_TAG_POLICY": "patch", "FLEETROLL_PRERELEASE": "true"}, true},
	"Canary":      {"canary: 2", []string{"--canary", "2"}, map[string]string{"FLEETROLL_CANARY": "2"}, 2},
	"CanaryWait": {"canary: 1\n    canary_wait: 7s\n    health: {path: /up}", []string{"--canary", "1", "--canary-wait", "7s", "--health-path", "/up"},
		map[string]string{"FLEETROLL_CANARY": "1", "FLEETROLL_CANARY_WAIT": "7s", "FLEETROLL_HEALTH_PATH": "/up"}, 7 * time.Second},
	"Strategy": {"strategy: blue-green\n    spare_ports: 8911", []string{"--strategy", "blue-green", "--spare-ports", "8911"},
		map[string]string{"FLEETROLL_STRATEGY": "blue-green", "FLEETROLL_SPARE_PORTS": "8911"}, rollout.StrategyBlueGreen},
	"SparePorts": {"strategy: blue-green\n    spare_ports: 8911-8912", []string{"--strategy", "blue-green", "--spare-ports", "8911-8912"},
		map[string]string{"FLEETROLL_STRATEGY": "blue-green", "FLEETROLL_SPARE_PORTS": "8911-8912"}, rollout.PortList{"8911", "8912"}},
	"Sidekick": {"strategy: blue-green\n    spare_ports: 8911\n    sidekick: side", []string{"--strategy", "blue-green", "--spare-ports", "8911", "--sidekick", "side"},
		map[string]string{"FLEETROLL_STRATEGY": "blue-green", "FLEETROLL_SPARE_PORTS": "8911", "FLEETROLL_SIDEKICK": "side"}, "side"},
	"PlacementTimeout": {"placement_timeout: 7s", []string{"--placement-timeout", "7s"}, map[string]string{"FLEETROLL_PLACEMENT_TIMEOUT": "7s"}, 7 * time.Second},
}

// leaves are the paths of rollout.Settings' settings: its fields, and the
// fields of the structs its pointers lead to (drain, health).
func leaves(t reflect.Type, prefix string) []string {
	var out []string
	for f := range t.Fields() {
		ft := f.Type
		if ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct {
			out = append(out, leaves(ft.Elem(), prefix+f.Name+".")...)
			continue
		}
		out = append(out, prefix+f.Name)
	}
	return out
}

// leaf is the value at path in s (nil through a nil pointer).
func leaf(s rollout.Settings, path string) any {
	v := reflect.ValueOf(s)
	for name := range strings.SplitSeq(path, ".") {
		for v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return nil
			}
			v = v.Elem()
		}
		v = v.FieldByName(name)
	}
	if v.Kind() == reflect.Pointer && !v.IsNil() && v.Elem().Kind() != reflect.Struct {
		v = v.Elem() // *bool
	}
	return v.Interface()
}

// capture runs the CLI with runRequest replaced and returns the request the
// command built (nil when it failed first, with its exit code and output).
func capture(t *testing.T, args ...string) (*rollout.Request, int, string) {
	t.Helper()
	var got *rollout.Request
	old := runRequest
	runRequest = func(_ context.Context, _ rollout.Runner, req rollout.Request) (*fleetroll.Report, error) {
		got = &req
		now := time.Now()
		return &fleetroll.Report{ID: req.ID, Service: req.Service, Status: fleetroll.StatusSucceeded, Started: now, Finished: now}, nil
	}
	t.Cleanup(func() { runRequest = old })
	var out, errw bytes.Buffer
	code := run(t.Context(), append([]string{"fleetroll"}, args...), &out, &errw)
	return got, code, out.String() + errw.String()
}

// serveRequest runs a receiver of cfg with its runner replaced, asks it
// for a rollout of my-service and returns the request it built.
func serveRequest(t *testing.T, o *serveOptions, kapi client.KeysAPI, fleetURL string) rollout.Request {
	t.Helper()
	fleet, err := fleetroll.Connect(fleetURL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan rollout.Request, 1)
	opt := o.hook
	opt.Fleet, opt.Config, opt.Etcd = fleet, o.config, kapi
	opt.Secrets = hook.Secrets{API: token}
	opt.Run = func(_ context.Context, req rollout.Request) (*fleetroll.Report, error) {
		got <- req
		now := time.Now()
		return &fleetroll.Report{ID: req.ID, Service: req.Service, Status: fleetroll.StatusSucceeded, Started: now, Finished: now}, nil
	}
	srv, err := hook.New(opt)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); srv.Run(ctx, time.Second) }()
	defer func() { cancel(); <-done }()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	req, _ := http.NewRequest("POST", hs.URL+"/rollouts", strings.NewReader(`{"service":"my-service"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /rollouts: %s", resp.Status)
	}
	select {
	case r := <-got:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("the receiver ran no rollout")
		return rollout.Request{}
	}
}

// Every setting, by reflection over rollout.Settings: its config key sets
// it, for serve (POST /rollouts) and for restart or deploy --config; its
// flag and its env var set it, for the CLI and (as every service's
// default under --config) for serve; and in each case the value is in the
// request the runner is given.
func TestEverySettingReachesTheRunner(t *testing.T) {
	paths := leaves(reflect.TypeFor[rollout.Settings](), "")
	var missing []string
	for _, p := range paths {
		if _, ok := settingCases[p]; !ok {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("settings without a case (add them to settingCases): %s", strings.Join(missing, ", "))
	}
	for p := range settingCases {
		if !slices.Contains(paths, p) {
			t.Fatalf("case %s is no setting any more", p)
		}
	}
	etcdURL, _ := etcdtest.Start(t)
	ff := fakefleet.New("my-service@8901.service", "my-service@8902.service")
	fsrv := httptest.NewServer(ff)
	t.Cleanup(fsrv.Close)
	dir := t.TempDir()
	common := []string{"--endpoint", fsrv.URL, "--etcd-endpoints", etcdURL}
	for _, p := range paths {
		c := settingCases[p]
		t.Run(p, func(t *testing.T) {
			if reflect.DeepEqual(leaf(rollout.Defaults(), p), c.want) {
				t.Fatalf("the case's value %v is the default: it proves nothing", c.want)
			}
			check := func(how string, s rollout.Settings) {
				t.Helper()
				if got := leaf(s, p); !reflect.DeepEqual(got, c.want) {
					t.Errorf("%s: %s = %#v, want %#v", how, p, got, c.want)
				}
			}
			file := filepath.Join(dir, strings.ReplaceAll(p, ".", "-")+".yaml")
			yaml := fmt.Sprintf("services:\n  - name: my-service\n    %s\n", c.yaml)
			if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			// The command that has the setting's flag: restart, or
			// deploy for the release's own.
			cmd, extra := "restart", []string{}
			switch p {
			case "Image", "OnFailure", "PullTimeout", "PrePull":
				cmd = "deploy"
				if p != "Image" {
					extra = []string{"--image", "127.0.0.1:5000/demo/x:v1"}
				}
			}
			flags := slices.Clone(c.flags)
			if p == "Image" {
				flags = []string{"--image", "127.0.0.1:5000/demo/x:v1"} // deploy's --image names the tag
			}

			// Config key -> restart/deploy --config -> the request.
			req, code, out := capture(t, append(append([]string{cmd, "my-service", "--config", file}, common...), extra...)...)
			if req == nil {
				t.Fatalf("%s --config: exit %d: %s", cmd, code, out)
			}
			check(cmd+" --config", req.Settings)

			// Flag -> the request.
			req, code, out = capture(t, append(append(append([]string{cmd, "my-service"}, common...), extra...), flags...)...)
			if req == nil {
				t.Fatalf("%s %s: exit %d: %s", cmd, strings.Join(flags, " "), code, out)
			}
			check(cmd+" flags", req.Settings)

			// Env var -> the request.
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			if p == "Image" {
				t.Setenv("FLEETROLL_IMAGE", "127.0.0.1:5000/demo/x:v1")
			}
			req, code, out = capture(t, append(append([]string{cmd, "my-service"}, common...), extra...)...)
			if req == nil {
				t.Fatalf("%s with %v: exit %d: %s", cmd, c.env, code, out)
			}
			check(cmd+" env", req.Settings)
			for k := range c.env {
				os.Unsetenv(k)
			}
			os.Unsetenv("FLEETROLL_IMAGE")

			if p == "Lock" {
				// A queued trigger is never dropped: serve waits for a
				// lock that is held, where the CLI fails.
				c.want = rollout.LockWait
			}
			// Config key -> serve -> POST /rollouts -> the request.
			o, kapi := serveOf(t, "--config", file, "--endpoint", fsrv.URL, "--etcd-endpoints", etcdURL)
			check("serve --config", serveRequest(t, o, kapi, fsrv.URL).Settings)

			// Flag -> serve: under --config, every service's default
			// (the instances and the image are each service's own);
			// with --service, the service's.
			args := []string{"--service", "my-service"}
			switch p {
			case "Ports", "Image", "SparePorts", "Strategy", "Sidekick":
			default:
				args = []string{"--config", filepath.Join(dir, "plain.yaml")}
				if err := os.WriteFile(args[1], []byte("services: [{name: my-service}]\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			o, kapi = serveOf(t, append(append(args, "--endpoint", fsrv.URL, "--etcd-endpoints", etcdURL), c.flags...)...)
			check("serve "+args[0]+" flags", serveRequest(t, o, kapi, fsrv.URL).Settings)
		})
	}
}

// serveOf parses serve's flags as serve does, and connects its etcd.
func serveOf(t *testing.T, args ...string) (*serveOptions, client.KeysAPI) {
	t.Helper()
	t.Setenv("FLEETROLL_TOKEN", token)
	var o *serveOptions
	var kapi client.KeysAPI
	app := newApp(&bytes.Buffer{}, &bytes.Buffer{})
	for _, cmd := range app.Commands {
		if cmd.Name == "serve" {
			cmd.Action = func(c *cli.Context) error {
				var err error
				if o, err = serveOptionsFrom(c); err != nil {
					return err
				}
				kapi, err = etcdFrom(c)
				return err
			}
		}
	}
	if err := app.Run(append([]string{"fleetroll", "serve", "--quiet-period", "0s"}, args...)); err != nil {
		t.Fatalf("serve %s: %v", strings.Join(args, " "), err)
	}
	return o, kapi
}

// The settings of the drain and the health gate given without the drain or
// the gate are refused, not dropped; so are serve's per-instance flags
// under --config.
func TestSettingsFlagsRefusedNotDropped(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte("services: [{name: my-service}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLEETROLL_TOKEN", token)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"restart", "my-service", "--drain-delay", "1s"}, "--drain-delay needs the drain on"},
		{[]string{"restart", "my-service", "--health-successes", "2"}, "--health-successes needs the health gate on"},
		{[]string{"serve", "--config", file, "--ports", "8901"}, "go with --service"},
		{[]string{"serve", "--config", file, "--image", "127.0.0.1:5000/demo/x"}, "go with --service"},
		{[]string{"restart", "my-service", "--config", file + ".missing"}, "--config"},
		{[]string{"restart", "other", "--config", file}, `no service "other"`},
	} {
		req, code, out := capture(t, c.args...)
		if req != nil || code != exitUsage || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", c.args, code, out, c.want)
		}
	}
}

// Safe by default, and saying so when it is not: with etcd a restart
// takes the lock and writes its intent (an intent was seen at the stop);
// --lock off says once what it costs; without etcd (the default endpoint
// does not answer) one line says the rollout runs without it.
func TestRestartSaysWhenItIsNotSafe(t *testing.T) {
	etcd, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{etcd}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f, url := fakeCluster(t, "my-service@1.service")
	intents := 0
	f.SetHook(func(call string) {
		if strings.HasPrefix(call, "set my-service@1.service loaded") {
			if in, err := (coord.Intents{KAPI: kapi}).Get(context.Background(), "my-service"); err == nil && in != nil {
				intents++
			}
		}
	})
	common := []string{"restart", "my-service", "--endpoint", url, "--grace", "0s", "--min-healthy-time", "0s", "--poll-interval", "1ms"}
	code, _, errs := runCLI(t, append(common, "--etcd-endpoints", etcd)...)
	if code != 0 || intents != 1 || strings.Contains(errs, "warning") {
		t.Fatalf("with etcd: exit %d, %d intents at the stop\n%s", code, intents, errs)
	}
	code, _, errs = runCLI(t, append(common, "--etcd-endpoints", etcd, "--lock", "off")...)
	if code != 0 || intents != 1 || strings.Count(errs, "--lock off: no intent record is written") != 1 {
		t.Fatalf("--lock off: exit %d, %d intents\n%s", code, intents, errs)
	}
	t.Setenv("FLEETROLL_ETCD_ENDPOINTS", "")
	os.Unsetenv("FLEETROLL_ETCD_ENDPOINTS")
	code, _, errs = runCLI(t, append(common, "--etcd-timeout", "500ms")...)
	if code != 0 || strings.Count(errs, "running without the lock, intent records and history") != 1 {
		t.Fatalf("without etcd: exit %d\n%s", code, errs)
	}
	// A setting that needs etcd, with none: exit 1, saying why, untouched.
	before := len(f.Sets())
	code, _, errs = runCLI(t, append(common, "--etcd-timeout", "500ms", "--drain")...)
	if code != exitFailed || !strings.Contains(errs, "--drain needs etcd") || !strings.Contains(errs, "no etcd of this fleet cluster") || len(f.Sets()) != before {
		t.Fatalf("--drain without etcd: exit %d\n%s", code, errs)
	}
}

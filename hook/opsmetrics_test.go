package hook

import (
	"bytes"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestLiveGauges(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	since := func(at time.Time) time.Duration { return t0.Add(time.Hour).Sub(at) }
	rec := func(svc string, st fleetroll.Status, startedAgo time.Duration) fleetroll.Report {
		r := fleetroll.Report{Service: svc, Status: st}
		if startedAgo > 0 {
			r.Started = t0.Add(time.Hour - startedAgo)
		}
		return r
	}
	for _, tc := range []struct {
		name    string
		reports []fleetroll.Report
		paused  map[string]int
		age     map[string]float64
	}{
		{"none", nil, map[string]int{}, map[string]float64{}},
		{"finished and queued count for nothing", []fleetroll.Report{rec("a", fleetroll.StatusSucceeded, time.Minute), rec("a", fleetroll.StatusQueued, 0)},
			map[string]int{}, map[string]float64{}},
		{"running", []fleetroll.Report{rec("a", fleetroll.StatusRunning, 90*time.Second)}, map[string]int{}, map[string]float64{"a": 90}},
		{"paused: counted, and its age", []fleetroll.Report{rec("a", fleetroll.StatusPaused, 10*time.Minute), rec("b", fleetroll.StatusRunning, time.Second)},
			map[string]int{"a": 1}, map[string]float64{"a": 600, "b": 1}},
		{"the oldest", []fleetroll.Report{rec("a", fleetroll.StatusRunning, time.Minute), rec("a", fleetroll.StatusPaused, time.Hour)},
			map[string]int{"a": 1}, map[string]float64{"a": 3600}},
		{"running, not planned yet", []fleetroll.Report{rec("a", fleetroll.StatusRunning, 0)}, map[string]int{}, map[string]float64{}},
		{"a service not configured is left out", []fleetroll.Report{rec("gone", fleetroll.StatusPaused, time.Minute)}, map[string]int{}, map[string]float64{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paused, age := liveGauges([]string{"a", "b"}, tc.reports, since)
			if !equalMaps(paused, tc.paused) || !equalMaps(age, tc.age) {
				t.Fatalf("paused %v, age %v; want %v, %v", paused, age, tc.paused, tc.age)
			}
		})
	}
}

func equalMaps[V comparable](a, b map[string]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// metricValue reads one sample's value from an exposition.
func metricValue(t *testing.T, exposition, sample string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindStringSubmatch(exposition)
	if m == nil {
		t.Fatalf("no sample %s in:\n%s", sample, exposition)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// After a rollout, /metrics tells the build, the rollout's duration and
// the time of the last success, nothing paused or running, and no callback
// or notification failed; a callback that never succeeds is counted.
func TestOpsMetricsAfterARollout(t *testing.T) {
	cbs := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) }))
	env := newTestEnv(t, func(o *Options) {
		c, err := NewCallbacker([]string{cbs.URL}, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.backoff = time.Millisecond
		o.Callbacks = c
		o.Build = BuildInfo{Version: "v1.2.3", Revision: "0123456789ab", GoVersion: "go1.26.0"}
	})
	before := time.Now()
	body := bytes.Replace(fixture(t, "dockerhub-push.json"), []byte("https://registry.hub.docker.com"), []byte(cbs.URL), 1)
	resp, ans := env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, body, jsonHeaders())
	if resp.StatusCode != 202 {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
	ro := env.waitRollout(t, ans["id"].(string))
	if ro.Status != fleetroll.StatusSucceeded {
		t.Fatalf("rollout %s", ro.Status)
	}
	scrape := func() string {
		req, _ := http.NewRequest("GET", env.http.URL+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	m := scrape()
	if v := metricValue(t, m, `fleetroll_build_info{goversion="go1.26.0",revision="0123456789ab",version="v1.2.3"}`); v != 1 {
		t.Fatalf("build info %v", v)
	}
	if v := metricValue(t, m, `fleetroll_rollout_duration_seconds_count{service="my-service",status="succeeded"}`); v != 1 {
		t.Fatalf("duration count %v", v)
	}
	if v := metricValue(t, m, `fleetroll_rollout_duration_seconds_sum{service="my-service",status="succeeded"}`); v != ro.Finished.Sub(ro.Started).Seconds() {
		t.Fatalf("duration sum %v, the record's %s", v, ro.Finished.Sub(ro.Started))
	}
	if v := metricValue(t, m, `fleetroll_last_success_timestamp_seconds{service="my-service"}`); v < float64(before.Unix()) || v > float64(time.Now().Unix()+1) {
		t.Fatalf("last success %v, the test began at %d", v, before.Unix())
	}
	for _, svc := range []string{"my-service", "other"} {
		for _, name := range []string{"fleetroll_rollouts_paused", "fleetroll_rollout_running_seconds"} {
			if v := metricValue(t, m, name+`{service="`+svc+`"}`); v != 0 {
				t.Fatalf("%s{%s} = %v", name, svc, v)
			}
		}
	}
	for _, kind := range []string{"not_allowed", "dropped", "failed"} {
		metricValue(t, m, `fleetroll_callbacks_failed_total{kind="`+kind+`"}`)
	}
	if strings.Contains(m, "fleetroll_notifications_failed_total{") {
		t.Fatal("a notification series without a target configured")
	}
	// The callback (502 three times) is counted once it is given up:
	// the outbox is done once the server stops.
	env.stop()
	if v := counterValue(t, env.srv.om.callbacks.WithLabelValues(callbackFailed)); v != 1 {
		t.Fatalf("callbacks failed: %v\n%s", v, env.logs.String())
	}
}

// A notification that fails is counted by its target, and a dropped
// callback as dropped.
func TestFailedNotificationsAreCountedByTarget(t *testing.T) {
	om := newOpsMetrics(promRegistry(), BuildInfo{}, func() ([]string, []fleetroll.Report) { return nil, nil }, fleetroll.SystemClock{})
	om.setTargets([]string{"chat", "audit"})
	om.sendFailed(outgoing{what: "notification chat", notify: true})
	om.sendFailed(outgoing{what: "notification chat", notify: true, dropped: true})
	om.sendFailed(outgoing{what: "callback", dropped: true})
	for target, want := range map[string]float64{"chat": 2, "audit": 0} {
		if v := counterValue(t, om.notifications.WithLabelValues(target)); v != want {
			t.Errorf("notifications failed {%s} = %v, want %v", target, v, want)
		}
	}
	if v := counterValue(t, om.callbacks.WithLabelValues(callbackDropped)); v != 1 {
		t.Errorf("callbacks dropped %v", v)
	}
}

func promRegistry() *prometheus.Registry { return prometheus.NewRegistry() }

// counterValue reads a counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

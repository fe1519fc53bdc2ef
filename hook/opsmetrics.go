package hook

import (
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/prometheus/client_golang/prometheus"
)

// BuildInfo names the binary serving (fleetroll_build_info).
type BuildInfo struct {
	Version, Revision, GoVersion string
}

// orDefault fills what the caller left empty from the toolchain's record
// of the build: the module's version and VCS revision, and Go's version.
func (b BuildInfo) orDefault() BuildInfo {
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && b.Revision == "" {
				b.Revision = s.Value[:min(len(s.Value), 12)]
			}
		}
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	if b.Revision == "" {
		b.Revision = "unknown"
	}
	if b.GoVersion == "" {
		b.GoVersion = runtime.Version()
	}
	return b
}

// Kinds of callback failures (fleetroll_callbacks_failed_total{kind}): a
// callback URL off --callback-allow, one the outbox had no room for, one
// that was sent and never succeeded (its retries spent, a wait asked past
// the deadline, or the deadline itself).
const (
	callbackNotAllowed = "not_allowed"
	callbackDropped    = "dropped"
	callbackFailed     = "failed"
)

// opsMetrics are the metrics one alerts on: what is running, what is
// paused and for how long, how long rollouts take, when one last
// succeeded, and what the outside was not told.
type opsMetrics struct {
	duration      *prometheus.HistogramVec
	lastSuccess   *prometheus.GaugeVec
	callbacks     *prometheus.CounterVec
	notifications *prometheus.CounterVec

	mu      sync.Mutex
	targets map[string]bool // the notification targets whose series exist
}

func newOpsMetrics(reg prometheus.Registerer, build BuildInfo, live func() ([]string, []fleetroll.Report), clock fleetroll.Clock) *opsMetrics {
	om := &opsMetrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fleetroll_rollout_duration_seconds",
			Help:    "Time of each rollout this receiver ran, from its start to its end, by service and final status.",
			Buckets: []float64{5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600},
		}, []string{"service", "status"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fleetroll_last_success_timestamp_seconds",
			Help: "When the last rollout of the service this receiver ran succeeded (Unix time; 0: none since it started).",
		}, []string{"service"}),
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetroll_callbacks_failed_total",
			Help: "Docker Hub callbacks not delivered, by kind: not_allowed (off --callback-allow), dropped (the outbox full), failed (sent, never a success).",
		}, []string{"kind"}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetroll_notifications_failed_total",
			Help: "Notifications not delivered (the outbox full, or sent and never a success), by configured target.",
		}, []string{"target"}),
		targets: map[string]bool{},
	}
	for _, k := range []string{callbackNotAllowed, callbackDropped, callbackFailed} {
		om.callbacks.WithLabelValues(k)
	}
	build = build.orDefault()
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "fleetroll_build_info",
		Help:        "The fleetroll serving: its version, revision and Go version in the labels; always 1.",
		ConstLabels: prometheus.Labels{"version": build.Version, "revision": build.Revision, "goversion": build.GoVersion},
	})
	info.Set(1)
	reg.MustRegister(om.duration, om.lastSuccess, om.callbacks, om.notifications, info, &liveCollector{live: live, clock: clock})
	return om
}

// finished observes a rollout's end.
func (om *opsMetrics) finished(r fleetroll.Report) {
	if !r.Status.Final() {
		return
	}
	if !r.Started.IsZero() && !r.Finished.IsZero() {
		om.duration.WithLabelValues(r.Service, string(r.Status)).Observe(r.Finished.Sub(r.Started).Seconds())
	}
	if r.Status == fleetroll.StatusSucceeded && !r.Finished.IsZero() {
		om.lastSuccess.WithLabelValues(r.Service).Set(float64(r.Finished.UnixNano()) / 1e9)
	}
}

// setTargets makes the series of the configured notification targets
// exist (at 0), so that an alert sees them before their first failure.
func (om *opsMetrics) setTargets(names []string) {
	om.mu.Lock()
	defer om.mu.Unlock()
	for _, n := range names {
		if !om.targets[n] {
			om.targets[n] = true
			om.notifications.WithLabelValues(n)
		}
	}
}

// sendFailed counts a message the outbox could not deliver.
func (om *opsMetrics) sendFailed(m outgoing) {
	if m.notify {
		om.notifications.WithLabelValues(strings.TrimPrefix(m.what, "notification ")).Inc()
		return
	}
	if m.dropped {
		om.callbacks.WithLabelValues(callbackDropped).Inc()
		return
	}
	om.callbacks.WithLabelValues(callbackFailed).Inc()
}

// liveCollector reads, at each scrape, the rollouts this receiver runs:
// fleetroll_rollouts_paused{service} counts the ones paused after their
// canaries, fleetroll_rollout_running_seconds{service} is the age of the
// oldest running or paused one (0: none). Every configured service has
// both series.
type liveCollector struct {
	live  func() (services []string, running []fleetroll.Report)
	clock fleetroll.Clock
}

var (
	pausedDesc = prometheus.NewDesc("fleetroll_rollouts_paused",
		"Rollouts of the service this receiver runs that are paused after their canaries, waiting for promote or abort.", []string{"service"}, nil)
	runningDesc = prometheus.NewDesc("fleetroll_rollout_running_seconds",
		"Age of the oldest rollout of the service this receiver runs (running or paused; 0: none): alert when it passes the progress deadline.", []string{"service"}, nil)
)

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- pausedDesc
	ch <- runningDesc
}

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	services, reports := c.live()
	paused, age := liveGauges(services, reports, c.clock.Now().Sub)
	for _, svc := range services {
		ch <- prometheus.MustNewConstMetric(pausedDesc, prometheus.GaugeValue, float64(paused[svc]), svc)
		ch <- prometheus.MustNewConstMetric(runningDesc, prometheus.GaugeValue, age[svc], svc)
	}
}

// liveGauges judges the live gauges of the configured services from the
// records: paused counts the paused rollouts, age is the age in seconds of
// the oldest running or paused one that has started (since: the time
// elapsed since a start). A record of a service not configured is left
// out: the labels are the configuration's.
func liveGauges(services []string, reports []fleetroll.Report, since func(time.Time) time.Duration) (paused map[string]int, age map[string]float64) {
	paused, age = map[string]int{}, map[string]float64{}
	known := map[string]bool{}
	for _, s := range services {
		known[s] = true
	}
	for _, r := range reports {
		if !known[r.Service] || (r.Status != fleetroll.StatusRunning && r.Status != fleetroll.StatusPaused) {
			continue
		}
		if r.Status == fleetroll.StatusPaused {
			paused[r.Service]++
		}
		if !r.Started.IsZero() {
			age[r.Service] = max(age[r.Service], since(r.Started).Seconds())
		}
	}
	return paused, age
}

package hook

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	reg         *prometheus.Registry
	webhooks    *prometheus.CounterVec
	api         *prometheus.CounterVec
	rollouts    *prometheus.CounterVec
	unitRestart *prometheus.HistogramVec
	replays     *prometheus.CounterVec
	throttled   prometheus.Counter
	polls       *prometheus.CounterVec
}

func newMetrics(q interface{ Depth() (int, int) }) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetroll_webhooks_total",
			Help: "Requests to the trigger endpoints (the senders' and POST /rollouts, sender manual), by sender and HTTP status code.",
		}, []string{"sender", "code"}),
		api: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetroll_api_requests_total",
			Help: "Requests to the operator API (handler api) and the status page's data and actions (handler page), by HTTP status code.",
		}, []string{"handler", "code"}),
		rollouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetroll_rollouts_total",
			Help: "Rollouts that ran, by service and final status (succeeded, failed, interrupted).",
		}, []string{"service", "result"}),
		replays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetroll_replayed_deliveries_total",
			Help: "Deliveries received again within the replay window and ignored, by sender.",
		}, []string{"sender"}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetroll_registry_polls_total",
			Help: "HEADs of a polled tag's manifest, by service and result (unchanged, new_digest, error, rate_limited).",
		}, []string{"service", "result"}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetroll_auth_throttled_total",
			Help: "Requests answered 429: their client had spent its budget of failed authentications.",
		}),
		unitRestart: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fleetroll_unit_restart_duration_seconds",
			Help:    "Time of each restarted unit: drain, stop, start and health gate (the grace period after it is not counted).",
			Buckets: []float64{1, 2, 5, 10, 20, 30, 60, 120, 300},
		}, []string{"service"}),
	}
	depth := func(running bool) func() float64 {
		return func() float64 {
			qd, rn := q.Depth()
			if running {
				return float64(rn)
			}
			return float64(qd)
		}
	}
	m.reg.MustRegister(m.webhooks, m.api, m.rollouts, m.unitRestart, m.replays, m.throttled, m.polls,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fleetroll_queue_depth", Help: "Rollouts waiting to run."}, depth(false)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fleetroll_rollouts_running", Help: "Rollouts running now."}, depth(true)),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

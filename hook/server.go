// Package hook receives image events (Docker Hub, registry notifications,
// GitHub package events, a manual trigger) and turns them into rollouts of
// fleet services: it verifies the request, queues a rollout keyed by service
// and answers at once; a queue runs at most one rollout per service.
package hook

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/fleetroll/release"
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	client "go.etcd.io/etcd/client/v2"
)

// DefaultBodyLimit is the largest request body accepted.
const DefaultBodyLimit = 1 << 20

// Secrets authenticate the API and each sender. Each has one purpose: the
// Docker Hub URL token (kept in Docker Hub's and every proxy's logs) is not
// the API's bearer. A sender without its own secret is disabled.
type Secrets struct {
	API       string // Authorization: Bearer for POST/GET /rollouts
	DockerHub string // the {token} of /webhooks/dockerhub/{token}
	Registry  string // Authorization: Bearer for /webhooks/registry
	GitHub    string // HMAC key of X-Hub-Signature-256
}

// MinSecretLength is the shortest secret accepted.
const MinSecretLength = 16

// Validate checks the secrets: the API token is required, each secret set
// is at least MinSecretLength long, and no two are the same.
func (s Secrets) Validate() error {
	named := []struct{ name, v string }{{"API token", s.API}, {"Docker Hub token", s.DockerHub}, {"registry token", s.Registry}, {"GitHub secret", s.GitHub}}
	if s.API == "" {
		return errors.New("the API token is required")
	}
	for i, a := range named {
		if a.v == "" {
			continue
		}
		if len(a.v) < MinSecretLength {
			return fmt.Errorf("the %s must be at least %d characters", a.name, MinSecretLength)
		}
		for _, b := range named[i+1:] {
			if b.v != "" && tokenEqual(a.v, b.v) {
				return fmt.Errorf("the %s and the %s are the same: give each its own secret", a.name, b.name)
			}
		}
	}
	return nil
}

// Options configure a Server.
type Options struct {
	Fleet   fleetroll.Fleet
	Config  *Config
	Secrets Secrets
	Logger  *slog.Logger
	// BodyLimit defaults to DefaultBodyLimit.
	BodyLimit   int64
	MaxParallel int
	QuietPeriod time.Duration
	// MaxWait bounds how long the quiet period may postpone a rollout
	// (default DefaultMaxWait; negative: no bound).
	MaxWait time.Duration
	// ReplayWindow: a delivery seen again within it starts nothing
	// (default DefaultReplayWindow; negative: off).
	ReplayWindow time.Duration
	History      int
	// PublicURL ("https://hooks.example.com") makes status URLs absolute;
	// the status page answers to its host (and https makes its cookie
	// Secure).
	PublicURL string
	// ListenAddr is the main listener's address (--listen): the status
	// page answers to its IP too.
	ListenAddr string
	Callbacks  *Callbacker
	// NotifySecret reads a notification target's URL and key (files or
	// the environment); needed when the configuration has notifications.
	NotifySecret func(name string) (NotifySecret, error)
	// CallbackDeadline bounds all the callbacks of one rollout
	// (default DefaultCallbackDeadline).
	CallbackDeadline time.Duration
	// AllowFrom, when set, limits the client addresses (all but /healthz).
	AllowFrom []netip.Prefix
	// TrustedProxies may set X-Forwarded-For.
	TrustedProxies []netip.Prefix
	// SeparateOps moves /metrics, /healthz and /livez from Handler to
	// OpsHandler, to be served on another listener.
	SeparateOps bool
	// HealthInterval and HealthTimeout pace the readiness checks of fleet
	// and etcd (defaults DefaultHealthInterval, DefaultHealthTimeout);
	// HealthClock is their clock (default: the real one, not Clock, so
	// that the queue's timers are the only ones on Clock).
	HealthInterval, HealthTimeout time.Duration
	HealthClock                   fleetroll.Clock
	// Build names this binary in fleetroll_build_info (empty fields: the
	// toolchain's record of the build).
	Build BuildInfo
	// Etcd, when set, is where locks, drain keys and the history live.
	Etcd client.KeysAPI
	// LeaseTTL is the TTL of this receiver's claims on services in the
	// durable queue (default coord.DefaultLockTTL).
	LeaseTTL time.Duration
	// Run runs one rollout (default: rollout.Runner's Run over Fleet,
	// Etcd and Resolver); every queued trigger goes through it.
	Run func(ctx context.Context, req rollout.Request) (*fleetroll.Report, error)
	// Owner names this receiver in locks and history.
	Owner string
	// Resolver turns a pushed tag into its digest for services with an
	// image (Docker Hub sends no digest), and checks the digest a payload
	// names against its tag as it arrives; default: the registry API,
	// anonymous.
	Resolver fleetroll.Resolver
	// Registry asks the registries of the services that poll (poll:)
	// for their tags' digests; default: the Resolver when it is a
	// release.Registry (its credentials and timeout), else anonymous.
	Registry *release.Registry
	Clock    fleetroll.Clock
	// ViewFrom opens the status page, read-only, without a login to these
	// networks (none by default).
	ViewFrom []netip.Prefix
	// SessionIdle and SessionAbsolute end the status page's logins
	// (defaults DefaultSessionIdle, DefaultSessionAbsolute).
	SessionIdle, SessionAbsolute time.Duration
}

// DefaultMaxWait bounds the postponement of a rollout by the quiet period.
const DefaultMaxWait = time.Minute

// Server is the webhook receiver.
type Server struct {
	opt      Options
	cfg      atomic.Pointer[Config]
	targets  atomic.Pointer[map[string]notifyTarget] // the notifications of cfg, with their secrets
	sessions sessionStore
	secrets  atomic.Pointer[Secrets] // in force: opt.Secrets, then each SetSecrets
	uiCache  uiStateCache
	records  records // the read model: store, queue and history
	in       intake  // where triggers come in: the senders and POST /rollouts
	auth     *authThrottle
	streams  *streamSlots
	store    *Store
	queue    scheduler
	durable  *durable // the queue, when it is in etcd
	outbox   *Outbox
	replays  deliveryGuard
	pollers  *pollers // the registry pollers (poll:)
	health   *healthCheck
	om       *opsMetrics // the metrics one alerts on
	metrics  *metrics
	log      *slog.Logger
	handler  http.Handler
	ops      http.Handler
	// pageHosts are the hosts the status page answers to.
	pageHosts pageHosts
}

// New validates the options and returns a server; call Run to start its
// queue and Handler to serve.
func New(opt Options) (*Server, error) {
	if opt.Fleet == nil {
		return nil, errors.New("hook: no fleet")
	}
	if opt.Config == nil {
		return nil, errors.New("hook: no configuration")
	}
	if err := opt.Config.Validate(); err != nil {
		return nil, err
	}
	if err := opt.Secrets.Validate(); err != nil {
		return nil, fmt.Errorf("hook: %w", err)
	}
	if err := checkPolicies(opt.Config, opt); err != nil {
		return nil, err
	}
	if err := checkPolling(opt.Config, opt); err != nil {
		return nil, err
	}
	targets, err := resolveTargets(opt.Config, opt)
	if err != nil {
		return nil, err
	}
	if opt.BodyLimit <= 0 {
		opt.BodyLimit = DefaultBodyLimit
	}
	if opt.History <= 0 {
		opt.History = 200
	}
	if opt.MaxWait == 0 {
		opt.MaxWait = DefaultMaxWait
	}
	if opt.ReplayWindow == 0 {
		opt.ReplayWindow = DefaultReplayWindow
	}
	if opt.CallbackDeadline <= 0 {
		opt.CallbackDeadline = DefaultCallbackDeadline
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Clock == nil {
		opt.Clock = fleetroll.SystemClock{}
	}
	if opt.Owner == "" {
		opt.Owner = "fleetroll serve"
	}
	if opt.LeaseTTL <= 0 {
		opt.LeaseTTL = coord.DefaultLockTTL
	}
	if opt.Resolver == nil {
		opt.Resolver = release.Registry{}
	}
	if opt.Registry == nil {
		reg, _ := opt.Resolver.(release.Registry)
		opt.Registry = &reg
	}
	if opt.Registry.Clock == nil {
		reg := *opt.Registry
		reg.Clock = opt.Clock
		opt.Registry = &reg
	}
	if opt.Callbacks == nil {
		cb, err := defaultCallbacker()
		if err != nil {
			return nil, err
		}
		opt.Callbacks = cb
	}
	if opt.Run == nil {
		opt.Run = runnerOf(opt).Run
	}
	opt.PublicURL = strings.TrimSuffix(opt.PublicURL, "/")
	hosts, err := newPageHosts(opt.PublicURL, opt.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("hook: %w", err)
	}
	s := &Server{opt: opt, store: NewStore(opt.History), log: opt.Logger, pageHosts: hosts}
	s.targets.Store(&targets)
	s.cfg.Store(opt.Config)
	qopt := QueueOptions{MaxParallel: opt.MaxParallel, Quiet: opt.QuietPeriod, MaxWait: max(opt.MaxWait, 0), AfterRun: s.report, Clock: opt.Clock}
	if opt.Etcd != nil {
		// Several receivers share one queue and one replay window in etcd.
		s.durable = newDurable(opt.Etcd, s.store, qopt, opt.Owner, opt.LeaseTTL, opt.Logger)
		s.store.FeedFromEtcd()
		s.durable.exec, s.durable.recover, s.durable.services = s.execute, s.recoverOnly, s.serviceNames
		s.queue = s.durable
		s.replays = etcdReplays{d: coord.Deliveries{KAPI: opt.Etcd, Window: max(opt.ReplayWindow, 0)}, log: opt.Logger}
	} else {
		s.queue = NewQueue(s.store, func(ctx context.Context, j Job) { s.execute(ctx, j) }, qopt)
		s.replays = newReplays(opt.ReplayWindow, opt.Clock)
	}
	s.auth = newAuthThrottle(s.opt.Clock)
	s.streams = newStreamSlots(DefaultMaxStreams, DefaultMaxStreamsPerClient)
	idle, absolute := cmp.Or(opt.SessionIdle, DefaultSessionIdle), cmp.Or(opt.SessionAbsolute, DefaultSessionAbsolute)
	if opt.Etcd != nil {
		// A login valid on every receiver of the etcd, ended on all.
		s.sessions = newEtcdSessions(opt.Etcd, idle, absolute, opt.Clock, opt.Logger)
	} else {
		s.sessions = newSessions(idle, absolute, opt.Clock)
	}
	s.uiCache.sem = make(chan struct{}, 1)
	s.records = records{store: s.store, etcd: opt.Etcd, owner: opt.Owner, config: s.Config}
	if s.durable != nil {
		s.records.live = s.durable.live
	}
	s.metrics = newMetrics(s.queue)
	s.om = newOpsMetrics(s.metrics.reg, opt.Build, func() ([]string, []fleetroll.Report) { return s.serviceNames(), s.ownRecords() }, opt.Clock)
	s.om.setTargets(slices.Collect(maps.Keys(targets)))
	s.secrets.Store(&opt.Secrets)
	s.in = intake{secrets: s.secretsNow, config: s.Config, authorize: s.authorize, bodyLimit: opt.BodyLimit, clock: opt.Clock,
		callbacks: opt.Callbacks, resolver: opt.Resolver, queue: s.queue, replays: s.replays, metrics: s.metrics, statusURL: s.statusURL}
	s.in.gate = &releaseGate{etcd: opt.Etcd, config: s.Config, refused: s.refusedTrigger}
	s.pollers = newPollers(s)
	s.health = newHealthCheck(opt.Fleet, opt.Etcd, cmp.Or(opt.HealthInterval, DefaultHealthInterval), cmp.Or(opt.HealthTimeout, DefaultHealthTimeout),
		cmp.Or[fleetroll.Clock](opt.HealthClock, fleetroll.SystemClock{}), opt.Logger)
	// The first check before the first request: readiness is known from
	// the start (at most HealthTimeout).
	s.health.round(context.Background())
	s.handler, s.ops = s.routes()
	for _, d := range []struct{ sender, secret, flag string }{
		{"dockerhub", opt.Secrets.DockerHub, "--dockerhub-token-file"},
		{"registry", opt.Secrets.Registry, "--registry-token-file"},
		{"github", opt.Secrets.GitHub, "--github-secret-file"},
	} {
		if d.secret == "" {
			s.log.Warn("sender disabled: it has no secret of its own; its endpoint answers 404", "sender", d.sender, "flag", d.flag)
		}
	}
	return s, nil
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// OpsHandler serves /metrics, /healthz and /livez alone, for a listener
// of their own (Options.SeparateOps).
func (s *Server) OpsHandler() http.Handler { return s.ops }

// Run runs the rollout queue until ctx is done, then cancels the queued
// rollouts and returns once the running ones have stopped safely; then it
// sends the callbacks still queued, for at most outboxLimit. The readiness
// checks run as long.
func (s *Server) Run(ctx context.Context, outboxLimit time.Duration) {
	s.outbox = newOutbox(s.opt.Callbacks, DefaultOutboxSize, DefaultOutboxWorkers, s.opt.CallbackDeadline, s.log, s.om.sendFailed)
	polled, checked, watched := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(polled)
		s.pollers.Run(ctx)
	}()
	go func() {
		defer close(watched)
		s.sessions.run(ctx)
	}()
	go func() {
		defer close(checked)
		s.health.run(ctx)
	}()
	s.queue.Run(ctx)
	<-polled
	<-checked
	<-watched
	if !s.outbox.Close(outboxLimit) {
		s.log.Warn("shutdown: callbacks still unsent were abandoned", "limit", outboxLimit.String())
	}
}

// Config returns the configuration in force.
func (s *Server) Config() *Config { return s.cfg.Load() }

// secretsNow are the secrets in force.
func (s *Server) secretsNow() Secrets { return *s.secrets.Load() }

// SetSecrets replaces the secrets (a reload): they must be valid, and each
// sender keeps its state, on or off (its endpoint is routed as the server
// starts: a restart turns one on or off). A new API token ends the page's
// sessions, opened with the old one. On an error the secrets in force stay.
func (s *Server) SetSecrets(sec Secrets) error {
	if err := sec.Validate(); err != nil {
		return err
	}
	old := s.secretsNow()
	for _, d := range []struct{ sender, was, is string }{
		{"dockerhub", old.DockerHub, sec.DockerHub}, {"registry", old.Registry, sec.Registry}, {"github", old.GitHub, sec.GitHub},
	} {
		if (d.was == "") != (d.is == "") {
			return fmt.Errorf("the %s sender would be turned on or off: a reload replaces secrets, a restart turns a sender on or off", d.sender)
		}
	}
	s.secrets.Store(&sec)
	if !tokenEqual(old.API, sec.API) {
		s.sessions.endAll()
	}
	return nil
}

// checkPolicies makes sure every service's policy can work.
func checkPolicies(c *Config, opt Options) error {
	r := runnerOf(opt)
	for i, svc := range c.Services {
		if err := r.Check(rollout.Request{Service: svc.Name, Settings: svc.Settings}); err != nil {
			return fmt.Errorf("services[%d] (%s): %w", i, svc.Name, err)
		}
	}
	return nil
}

// SetConfig replaces the configuration atomically; it must be valid.
func (s *Server) SetConfig(c *Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := checkPolicies(c, s.opt); err != nil {
		return err
	}
	if err := checkPolling(c, s.opt); err != nil {
		return err
	}
	targets, err := resolveTargets(c, s.opt)
	if err != nil {
		return err
	}
	s.targets.Store(&targets)
	s.om.setTargets(slices.Collect(maps.Keys(targets)))
	s.cfg.Store(c)
	s.pollers.poke()
	return nil
}

// checkPolling makes sure the services that poll their registry can: one
// poller per service across receivers needs etcd (its lease).
func checkPolling(c *Config, opt Options) error {
	for i, svc := range c.Services {
		if svc.Poll != nil && opt.Etcd == nil {
			return fmt.Errorf("services[%d] (%s).poll: registry polling needs etcd (--etcd-endpoints): one receiver polls, the holder of its lease", i, svc.Name)
		}
	}
	return nil
}

// Store returns the rollout records.
func (s *Server) Store() *Store { return s.store }

func (s *Server) routes() (main, ops http.Handler) {
	mux := http.NewServeMux()
	notFound := func(*http.Request) (int, any) { return problem(http.StatusNotFound, "not found") }
	senders := []struct {
		pattern, sender, secret string
		fn                      func(*http.Request) (int, any)
	}{
		{"POST /webhooks/dockerhub/{token}", "dockerhub", s.opt.Secrets.DockerHub, s.in.dockerHub},
		{"POST /webhooks/dockerhub", "dockerhub", s.opt.Secrets.DockerHub, func(*http.Request) (int, any) {
			return problem(http.StatusUnauthorized, "missing token: register the URL /webhooks/dockerhub/TOKEN")
		}},
		{"POST /webhooks/registry", "registry", s.opt.Secrets.Registry, s.in.registry},
		{"POST /webhooks/github", "github", s.opt.Secrets.GitHub, s.in.github},
	}
	for _, r := range senders {
		fn := r.fn
		if r.secret == "" {
			fn = notFound // disabled: no secret of its own
		}
		mux.HandleFunc(r.pattern, s.hook(r.sender, fn))
	}
	mux.HandleFunc("POST /rollouts", s.hook("manual", s.in.manual))
	mux.HandleFunc("GET /rollouts", s.hook("api", s.listRollouts))
	mux.HandleFunc("GET /rollouts/{id}", s.hook("api", s.getRollout))
	mux.HandleFunc("GET /events", s.events)
	s.uiRoutes(mux)
	mux.HandleFunc("POST /rollouts/{id}/promote", s.hook("api", s.decide(fleetroll.DecisionPromote)))
	mux.HandleFunc("POST /rollouts/{id}/abort", s.hook("api", s.decide(fleetroll.DecisionAbort)))
	opsMux := http.NewServeMux()
	metrics := promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
	if s.opt.SeparateOps {
		opsMux.HandleFunc("GET /healthz", s.healthz)
		opsMux.HandleFunc("GET /livez", s.livez)
		opsMux.Handle("GET /metrics", metrics)
	} else {
		// The main listener is public, and the metrics name the services:
		// the API token reads them there.
		mux.HandleFunc("GET /healthz", s.healthz)
		mux.HandleFunc("GET /livez", s.livez)
		mux.Handle("GET /metrics", s.withAPIToken(metrics))
	}
	return s.middleware(mux), opsMux
}

// reqInfo travels in a request's context.
type reqInfo struct {
	id     string
	log    *slog.Logger
	client netip.Addr
}

type ctxKey struct{}

func info(r *http.Request) reqInfo {
	if ri, ok := r.Context().Value(ctxKey{}).(reqInfo); ok {
		return ri
	}
	return reqInfo{log: slog.New(slog.DiscardHandler)}
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (flushes and
// write deadlines of the event streams).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// middleware gives each request an ID (X-Request-ID) and a logger carrying
// it, enforces the source allow-list and logs one line per request. The
// logged route is the pattern, never the path: the Docker Hub token is part
// of the path.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := fleetroll.NewID()
		client, known := s.clientIP(r)
		log := s.log.With("request_id", id)
		w.Header().Set("X-Request-ID", id)
		sw := &statusWriter{ResponseWriter: w}
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, reqInfo{id: id, log: log, client: client}))
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				log.Error("handler panic", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				if sw.code == 0 {
					code, body := problem(http.StatusInternalServerError, "internal error")
					writeJSON(sw, code, withID(body, id))
				}
			}
		}()
		probe := r.URL.Path == "/healthz" || r.URL.Path == "/livez"
		switch {
		case len(s.opt.AllowFrom) > 0 && !probe && !known:
			code, body := problem(http.StatusForbidden, "client address unknown: a trusted proxy sent no valid X-Forwarded-For")
			writeJSON(sw, code, withID(body, id))
		case len(s.opt.AllowFrom) > 0 && !probe && !inAny(client, s.opt.AllowFrom):
			code, body := problem(http.StatusForbidden, "source address not allowed")
			writeJSON(sw, code, withID(body, id))
		default:
			next.ServeHTTP(sw, r)
		}
		route := r.Pattern
		if route == "" {
			route = r.Method + " (no route)"
		}
		log.Info("request", "route", route, "status", sw.code, "client", client.String(), "client_known", known,
			"duration", time.Since(start).Round(time.Microsecond).String())
	})
}

// clientIP is the connection's address or, when it comes from a trusted
// proxy, the rightmost X-Forwarded-For address that is not a trusted proxy.
// known is false when a trusted proxy sent no X-Forwarded-For, or one with
// an entry that is not an IP address: the client cannot be told then, and
// an allow-list denies it.
func (s *Server) clientIP(r *http.Request) (addr netip.Addr, known bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	addr = ap.Addr().Unmap()
	if !inAny(addr, s.opt.TrustedProxies) {
		return addr, true
	}
	values := r.Header.Values("X-Forwarded-For")
	if len(values) == 0 {
		return addr, false
	}
	hops := strings.Split(strings.Join(values, ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return addr, false
		}
		addr = a.Unmap()
		if !inAny(addr, s.opt.TrustedProxies) {
			return addr, true
		}
	}
	return addr, true // every hop is a trusted proxy: the leftmost made the request
}

func inAny(a netip.Addr, prefixes []netip.Prefix) bool {
	for _, p := range prefixes {
		if a.IsValid() && p.Contains(a) {
			return true
		}
	}
	return false
}

// hook adapts a handler that returns (status, body) and counts the answer.
func (s *Server) hook(sender string, fn func(*http.Request) (int, any)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, s.opt.BodyLimit)
		code, body := fn(r)
		if code >= 400 {
			info(r).log.Warn("request refused", "sender", sender, "status", code, "reason", body.(map[string]any)["error"])
		}
		// The senders and POST /rollouts are triggers; the API's reads and
		// decisions, and the page's polls and actions, are counted apart.
		switch sender {
		case "api":
			s.metrics.api.WithLabelValues("api", fmt.Sprint(code)).Inc()
		case "ui":
			s.metrics.api.WithLabelValues("page", fmt.Sprint(code)).Inc()
		default:
			s.metrics.webhooks.WithLabelValues(sender, fmt.Sprint(code)).Inc()
		}
		if code == http.StatusUnauthorized {
			v := `Bearer realm="fleetroll"`
			if m, ok := body.(map[string]any); ok && m["error"] == msgInvalidToken {
				v += `, error="invalid_token"`
			}
			w.Header().Set("WWW-Authenticate", v)
		}
		retryAfter(w, body)
		writeJSON(w, code, withID(body, info(r).id))
	}
}

func problem(code int, msg string) (int, any) {
	return code, map[string]any{"error": msg}
}

func withID(body any, id string) any {
	if m, ok := body.(map[string]any); ok {
		m["request_id"] = id
	}
	return body
}

func writeJSON(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	// Records and answers are for the one who asked: no cache keeps them.
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(body)
}

const msgInvalidToken = "wrong token"

// bearer checks "Authorization: Bearer TOKEN" (the scheme in any case, RFC
// 7235): 401 when absent or wrong, the latter with error="invalid_token"
// (RFC 6750).
func bearer(r *http.Request, secret string) (int, any, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, _ := strings.Cut(strings.TrimSpace(h), " ")
	if h == "" || !strings.EqualFold(scheme, "Bearer") {
		code, body := problem(http.StatusUnauthorized, "missing Authorization: Bearer token")
		return code, body, false
	}
	if !tokenEqual(secret, strings.TrimSpace(tok)) {
		code, body := problem(http.StatusUnauthorized, msgInvalidToken)
		return code, body, false
	}
	return 0, nil, true
}

// contentType checks the media type against the accepted ones (415).
func contentType(r *http.Request, accepted ...string) (int, any, bool) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err == nil {
		for _, a := range accepted {
			if mt == a {
				return 0, nil, true
			}
		}
	}
	code, body := problem(http.StatusUnsupportedMediaType, "Content-Type must be "+strings.Join(accepted, " or "))
	return code, body, false
}

// badPayload answers 400 for a payload that could not be taken. A JSON
// decoding error is told by the JSON field's path and JSON types alone,
// never Go's types (jsonDecodeMessage).
func badPayload(err error) (int, any) {
	var pe *PayloadError
	if errors.As(err, &pe) {
		return problem(http.StatusBadRequest, pe.Msg)
	}
	if msg, ok := jsonDecodeMessage(err); ok {
		return problem(http.StatusBadRequest, msg)
	}
	return problem(http.StatusBadRequest, err.Error())
}

// statusURL is a rollout's record in the API (the 202's status_url, a
// webhook notification's url): for programs, with the API token.
func (s *Server) statusURL(id string) string { return s.opt.PublicURL + "/rollouts/" + id }

// pageURL is a rollout on the status page (Slack's link, Docker Hub's
// target_url): for people, through the page's login.
func (s *Server) pageURL(id string) string { return s.opt.PublicURL + pageRolloutPath + id }

func ignored(reason string) (int, any) {
	return http.StatusOK, map[string]any{"status": "ignored", "reason": reason}
}

// decide answers POST /rollouts/{id}/promote and /abort: the operator's
// decision on a rollout paused after its canaries, written where the
// paused fleetroll watches (etcd), whichever receiver or CLI runs it.
func (s *Server) decide(kind fleetroll.DecisionKind) func(*http.Request) (int, any) {
	return func(r *http.Request) (int, any) {
		if code, body, ok := s.authorize(r, func() (int, any, bool) { return bearer(r, s.secretsNow().API) }); !ok {
			return code, body
		}
		return s.decideOn(r, r.PathValue("id"), kind, "api, request "+info(r).id)
	}
}

// decideOn records the decision kind on paused rollout id, made by by: the
// API's promote and abort, and the status page's buttons.
func (s *Server) decideOn(r *http.Request, id string, kind fleetroll.DecisionKind, by string) (int, any) {
	id = strings.ToLower(id) // ABCDEF012345 is abcdef012345
	if !fleetroll.ValidRolloutID(id) {
		return problem(http.StatusBadRequest, "rollout ID: want 12 hex digits")
	}
	if s.opt.Etcd == nil {
		return problem(http.StatusNotFound, "no rollout is paused: canary pauses need etcd (--etcd-endpoints)")
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	ps, err := coord.Pauses{KAPI: s.opt.Etcd}.Decide(ctx, id, fleetroll.Decision{Kind: kind, By: by})
	switch {
	case errors.Is(err, coord.ErrNotPaused):
		return problem(http.StatusNotFound, fmt.Sprintf("rollout %s is not paused", id))
	case errors.Is(err, coord.ErrDecided):
		return problem(http.StatusConflict, err.Error())
	case err != nil:
		info(r).log.Warn("decision not recorded", "rollout_id", id, "error", err.Error())
		return problem(http.StatusServiceUnavailable, "the decision could not be recorded; retry later")
	}
	info(r).log.Info("canary decision", "rollout_id", id, "service", ps.Service, "decision", string(kind), "by", by)
	return http.StatusOK, map[string]any{"id": id, "service": ps.Service, "decision": string(kind), "canaries": ps.Canaries}
}

// configured checks a service named in a request against the configuration
// before it can reach etcd.
func (s *Server) configured(service string) (int, any, bool) {
	if _, ok := s.Config().Service(service); !ok {
		code, body := problem(http.StatusNotFound, "no such service is configured")
		return code, body, false
	}
	return 0, nil, true
}

// listRollouts answers this receiver's rollouts ("rollouts") and, with
// etcd, the others recorded there ("history"), in the one record shape.
func (s *Server) listRollouts(r *http.Request) (int, any) {
	if code, body, ok := s.authorize(r, func() (int, any, bool) { return bearer(r, s.secretsNow().API) }); !ok {
		return code, body
	}
	service := r.URL.Query().Get("service")
	if service != "" {
		if code, body, ok := s.configured(service); !ok {
			return code, body
		}
	}
	l := s.records.List(r.Context(), service)
	ans := map[string]any{"rollouts": l.Rollouts}
	if s.opt.Etcd != nil {
		ans["history"] = l.History
	}
	if l.HistoryErr != nil {
		info(r).log.Warn("history unavailable", "error", l.HistoryErr.Error())
		ans["history_error"] = "the history in etcd could not be read"
	}
	if l.QueueErr != nil {
		info(r).log.Warn("queue unavailable", "error", l.QueueErr.Error())
		ans["queue_error"] = "the queue in etcd could not be read"
	}
	return http.StatusOK, ans
}

func (s *Server) getRollout(r *http.Request) (int, any) {
	if code, body, ok := s.authorize(r, func() (int, any, bool) { return bearer(r, s.secretsNow().API) }); !ok {
		return code, body
	}
	id := r.PathValue("id")
	if !fleetroll.ValidRolloutID(id) {
		return problem(http.StatusNotFound, "no such rollout")
	}
	ro, found, err := s.records.Get(r.Context(), id)
	switch {
	case err != nil:
		info(r).log.Warn("rollout records unavailable", "error", err.Error())
		return problem(http.StatusServiceUnavailable, unreadMessage(err))
	case !found:
		return problem(http.StatusNotFound, "no such rollout")
	}
	return http.StatusOK, ro
}

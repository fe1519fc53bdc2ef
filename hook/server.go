// Package hook receives image events (Docker Hub, registry notifications,
// GitHub package events, a manual trigger) and turns them into rollouts of
// fleet services: it verifies the request, queues a rollout keyed by service
// and answers at once; a queue runs at most one rollout per service.
package hook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultBodyLimit is the largest request body accepted.
const DefaultBodyLimit = 1 << 20

// Secrets authenticate the senders. API guards the manual trigger and the
// status API, and stands in for any sender secret left empty.
type Secrets struct {
	API       string
	DockerHub string // the {token} of /webhooks/dockerhub/{token}
	Registry  string // Authorization: Bearer for /webhooks/registry
	GitHub    string // HMAC key of X-Hub-Signature-256
}

func (s Secrets) withDefaults() Secrets {
	for _, p := range []*string{&s.DockerHub, &s.Registry, &s.GitHub} {
		if *p == "" {
			*p = s.API
		}
	}
	return s
}

// MinSecretLength is the shortest secret accepted.
const MinSecretLength = 16

// Options configure a Server.
type Options struct {
	Fleet   fleetroll.Fleet
	Config  *Config
	Secrets Secrets
	// Roll holds the defaults of every service's roll settings.
	Roll   fleetroll.Options
	Logger *slog.Logger
	// BodyLimit defaults to DefaultBodyLimit.
	BodyLimit   int64
	MaxParallel int
	QuietPeriod time.Duration
	History     int
	// PublicURL ("https://hooks.example.com") makes status URLs absolute.
	PublicURL string
	Callbacks *Callbacker
	// AllowFrom, when set, limits the client addresses (all but /healthz).
	AllowFrom []netip.Prefix
	// TrustedProxies may set X-Forwarded-For.
	TrustedProxies []netip.Prefix
	// Safety holds etcd, the lock mode and owner; each service adds its
	// health gate and drain settings.
	Safety coord.Safety
}

// Server is the webhook receiver.
type Server struct {
	opt     Options
	cfg     atomic.Pointer[Config]
	store   *Store
	queue   *Queue
	metrics *metrics
	log     *slog.Logger
	handler http.Handler
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
	if len(opt.Secrets.API) < MinSecretLength {
		return nil, fmt.Errorf("hook: the token must be at least %d characters", MinSecretLength)
	}
	opt.Secrets = opt.Secrets.withDefaults()
	for name, v := range map[string]string{"Docker Hub token": opt.Secrets.DockerHub, "registry token": opt.Secrets.Registry, "GitHub secret": opt.Secrets.GitHub} {
		if len(v) < MinSecretLength {
			return nil, fmt.Errorf("hook: the %s must be at least %d characters", name, MinSecretLength)
		}
	}
	if err := opt.Roll.Validate(); err != nil {
		return nil, err
	}
	if opt.Safety.Fleet == nil {
		opt.Safety.Fleet = opt.Fleet
	}
	if err := checkSafety(opt.Config, opt.Safety); err != nil {
		return nil, err
	}
	if opt.BodyLimit <= 0 {
		opt.BodyLimit = DefaultBodyLimit
	}
	if opt.History <= 0 {
		opt.History = 200
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Callbacks == nil {
		cb, err := NewCallbacker([]string{DefaultCallbackAllow}, 10*time.Second)
		if err != nil {
			return nil, err
		}
		opt.Callbacks = cb
	}
	opt.PublicURL = strings.TrimSuffix(opt.PublicURL, "/")
	s := &Server{opt: opt, store: NewStore(opt.History), log: opt.Logger}
	s.cfg.Store(opt.Config)
	s.queue = NewQueue(s.store, s.execute, opt.MaxParallel, opt.QuietPeriod)
	s.metrics = newMetrics(s.queue)
	s.handler = s.routes()
	return s, nil
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Run runs the rollout queue until ctx is done, then cancels the queued
// rollouts and returns once the running ones have stopped safely.
func (s *Server) Run(ctx context.Context) { s.queue.Run(ctx) }

// Config returns the configuration in force.
func (s *Server) Config() *Config { return s.cfg.Load() }

// checkSafety makes sure every service's drain and lock can work.
func checkSafety(c *Config, base coord.Safety) error {
	for i, svc := range c.Services {
		if err := svc.Safety(base).Validate(); err != nil {
			return fmt.Errorf("services[%d] (%s): %w (--etcd-endpoints)", i, svc.Name, err)
		}
	}
	return nil
}

// SetConfig replaces the configuration atomically; it must be valid.
func (s *Server) SetConfig(c *Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := checkSafety(c, s.opt.Safety); err != nil {
		return err
	}
	s.cfg.Store(c)
	return nil
}

// Store returns the rollout records.
func (s *Server) Store() *Store { return s.store }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /webhooks/dockerhub/{token}", s.hook("dockerhub", s.dockerHub))
	mux.HandleFunc("POST /webhooks/dockerhub", s.hook("dockerhub", func(*http.Request) (int, any) {
		return problem(http.StatusUnauthorized, "missing token: register the URL /webhooks/dockerhub/TOKEN")
	}))
	mux.HandleFunc("POST /webhooks/registry", s.hook("registry", s.registry))
	mux.HandleFunc("POST /webhooks/github", s.hook("github", s.github))
	mux.HandleFunc("POST /rollouts", s.hook("manual", s.manual))
	mux.HandleFunc("GET /rollouts", s.hook("api", s.listRollouts))
	mux.HandleFunc("GET /rollouts/{id}", s.hook("api", s.getRollout))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "services": len(s.Config().Services)})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	return s.middleware(mux)
}

// reqInfo travels in a request's context.
type reqInfo struct {
	id  string
	log *slog.Logger
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
		client := s.clientIP(r)
		log := s.log.With("request_id", id)
		w.Header().Set("X-Request-ID", id)
		sw := &statusWriter{ResponseWriter: w}
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, reqInfo{id: id, log: log}))
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
		if len(s.opt.AllowFrom) > 0 && r.URL.Path != "/healthz" && !inAny(client, s.opt.AllowFrom) {
			code, body := problem(http.StatusForbidden, "source address not allowed")
			writeJSON(sw, code, withID(body, id))
		} else {
			next.ServeHTTP(sw, r)
		}
		route := r.Pattern
		if route == "" {
			route = r.Method + " (no route)"
		}
		log.Info("request", "route", route, "status", sw.code, "client", client.String(),
			"duration", time.Since(start).Round(time.Microsecond).String())
	})
}

// clientIP is the connection's address or, when it comes from a trusted
// proxy, the rightmost X-Forwarded-For address that is not a trusted proxy.
func (s *Server) clientIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	addr := ap.Addr().Unmap()
	if !inAny(addr, s.opt.TrustedProxies) {
		return addr
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		addr = a.Unmap()
		if !inAny(addr, s.opt.TrustedProxies) {
			break
		}
	}
	return addr
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
		if sender != "api" {
			s.metrics.webhooks.WithLabelValues(sender, fmt.Sprint(code)).Inc()
		}
		if code == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fleetroll"`)
		}
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
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(body)
}

// bearer checks "Authorization: Bearer TOKEN": 401 when absent, 403 when wrong.
func bearer(r *http.Request, secret string) (int, any, bool) {
	h := r.Header.Get("Authorization")
	if h == "" {
		code, body := problem(http.StatusUnauthorized, "missing Authorization: Bearer token")
		return code, body, false
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || !tokenEqual(secret, strings.TrimSpace(tok)) {
		code, body := problem(http.StatusForbidden, "wrong token")
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

// readBody checks the content type against the accepted ones (415) and
// reads the body within the limit (413).
func (s *Server) readBody(r *http.Request, accepted ...string) ([]byte, int, any) {
	if code, body, ok := contentType(r, accepted...); !ok {
		return nil, code, body
	}
	if r.ContentLength > s.opt.BodyLimit {
		code, body := problem(http.StatusRequestEntityTooLarge, fmt.Sprintf("body over the limit of %d bytes", s.opt.BodyLimit))
		return nil, code, body
	}
	b, err := io.ReadAll(r.Body)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		code, body := problem(http.StatusRequestEntityTooLarge, fmt.Sprintf("body over the limit of %d bytes", s.opt.BodyLimit))
		return nil, code, body
	case err != nil:
		code, body := problem(http.StatusBadRequest, "cannot read body: "+err.Error())
		return nil, code, body
	}
	return b, 0, nil
}

func badPayload(err error) (int, any) {
	var pe *PayloadError
	if errors.As(err, &pe) {
		return problem(http.StatusBadRequest, pe.Msg)
	}
	return problem(http.StatusBadRequest, err.Error())
}

func (s *Server) statusURL(id string) string { return s.opt.PublicURL + "/rollouts/" + id }

// enqueue submits one trigger per matched service and builds the 202 answer.
func (s *Server) enqueue(r *http.Request, source Source, matches map[string]Event, order []string) (int, any) {
	ri := info(r)
	var out []map[string]any
	for _, service := range order {
		t := TriggerInfo{Source: source, Event: matches[service], RequestID: ri.id, Received: time.Now().UTC()}
		ro, merged, err := s.queue.Submit(service, t)
		if err != nil {
			return problem(http.StatusServiceUnavailable, err.Error())
		}
		ri.log.Info("rollout queued", "rollout_id", ro.ID, "service", service, "source", string(source),
			"repository", t.Event.Repository, "tag", t.Event.Tag, "merged", merged)
		out = append(out, map[string]any{"service": service, "id": ro.ID, "status_url": s.statusURL(ro.ID), "merged": merged})
	}
	return http.StatusAccepted, map[string]any{"id": out[0]["id"], "status_url": out[0]["status_url"], "rollouts": out}
}

func ignored(reason string) (int, any) {
	return http.StatusOK, map[string]any{"status": "ignored", "reason": reason}
}

func (s *Server) dockerHub(r *http.Request) (int, any) {
	if !tokenEqual(s.opt.Secrets.DockerHub, r.PathValue("token")) {
		return problem(http.StatusForbidden, "wrong token")
	}
	b, code, body := s.readBody(r, "application/json")
	if code != 0 {
		return code, body
	}
	ev, err := ParseDockerHub(b)
	if err != nil {
		return badPayload(err)
	}
	return s.enqueueMatching(r, SourceDockerHub, "Docker Hub", ev)
}

// enqueueMatching queues one event for every service whose triggers match.
func (s *Server) enqueueMatching(r *http.Request, source Source, sender string, ev Event) (int, any) {
	services := s.Config().Match(source, ev.Repository, ev.Tag)
	if len(services) == 0 {
		return ignored(fmt.Sprintf("no service is configured for %s %s:%s", sender, ev.Repository, ev.Tag))
	}
	matches := map[string]Event{}
	for _, svc := range services {
		matches[svc] = ev
	}
	return s.enqueue(r, source, matches, services)
}

func (s *Server) registry(r *http.Request) (int, any) {
	if code, body, ok := bearer(r, s.opt.Secrets.Registry); !ok {
		return code, body
	}
	b, code, body := s.readBody(r, "application/vnd.docker.distribution.events.v1+json", "application/json")
	if code != 0 {
		return code, body
	}
	events, err := ParseRegistry(b)
	if err != nil {
		return badPayload(err)
	}
	// One envelope gives at most one rollout per service: its last event.
	matches := map[string]Event{}
	var order []string
	for _, ev := range events {
		for _, svc := range s.Config().Match(SourceRegistry, ev.Repository, ev.Tag) {
			if _, seen := matches[svc]; !seen {
				order = append(order, svc)
			}
			matches[svc] = ev
		}
	}
	if len(order) == 0 {
		return ignored(fmt.Sprintf("no tagged manifest push in %d event(s) matches a configured service", len(events)))
	}
	return s.enqueue(r, SourceRegistry, matches, order)
}

func (s *Server) github(r *http.Request) (int, any) {
	sig := r.Header.Get("X-Hub-Signature-256")
	if sig == "" {
		return problem(http.StatusUnauthorized, "missing X-Hub-Signature-256")
	}
	b, code, body := s.readBody(r, "application/json")
	if code != 0 {
		return code, body
	}
	if !VerifyGitHubSignature(s.opt.Secrets.GitHub, sig, b) {
		return problem(http.StatusForbidden, "wrong signature")
	}
	switch ev := r.Header.Get("X-GitHub-Event"); ev {
	case "ping":
		return http.StatusOK, map[string]any{"status": "pong"}
	case "package", "registry_package":
	default:
		return ignored(fmt.Sprintf("event %q is not a package event", ev))
	}
	ev, ok, err := ParseGitHub(b)
	if err != nil {
		return badPayload(err)
	}
	if !ok {
		return ignored("not a tagged container publish")
	}
	return s.enqueueMatching(r, SourceGitHub, "GitHub package", ev)
}

func (s *Server) manual(r *http.Request) (int, any) {
	if code, body, ok := bearer(r, s.opt.Secrets.API); !ok {
		return code, body
	}
	b, code, body := s.readBody(r, "application/json")
	if code != 0 {
		return code, body
	}
	service, err := ParseManual(b)
	if err != nil {
		return badPayload(err)
	}
	if _, ok := s.Config().Service(service); !ok {
		return problem(http.StatusNotFound, fmt.Sprintf("no service %q is configured", service))
	}
	return s.enqueue(r, SourceManual, map[string]Event{service: {}}, []string{service})
}

func (s *Server) listRollouts(r *http.Request) (int, any) {
	if code, body, ok := bearer(r, s.opt.Secrets.API); !ok {
		return code, body
	}
	service := r.URL.Query().Get("service")
	local := s.store.List(service)
	ans := map[string]any{"rollouts": local}
	if s.opt.Safety.KAPI != nil {
		// Rollouts of other receivers (or of this one before a restart).
		recs, err := coord.History{KAPI: s.opt.Safety.KAPI}.List(r.Context(), service)
		if err != nil {
			ans["history_error"] = err.Error()
		}
		seen := map[string]bool{}
		for _, ro := range local {
			seen[ro.ID] = true
		}
		history := []coord.Record{}
		for _, rec := range recs {
			if !seen[rec.ID] {
				history = append(history, rec)
			}
		}
		ans["history"] = history
	}
	return http.StatusOK, ans
}

func (s *Server) getRollout(r *http.Request) (int, any) {
	if code, body, ok := bearer(r, s.opt.Secrets.API); !ok {
		return code, body
	}
	ro, ok := s.store.Get(r.PathValue("id"))
	if ok {
		return http.StatusOK, ro
	}
	if s.opt.Safety.KAPI != nil {
		if rec, found, err := (coord.History{KAPI: s.opt.Safety.KAPI}).Get(r.Context(), r.PathValue("id")); err == nil && found {
			return http.StatusOK, rec
		}
	}
	return problem(http.StatusNotFound, "no such rollout")
}

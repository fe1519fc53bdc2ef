package hook

import (
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	client "go.etcd.io/etcd/client/v2"
)

//go:embed ui
var uiFiles embed.FS

var uiTemplates = template.Must(template.ParseFS(uiFiles, "ui/*.html"))

// uiCSP is the status page's Content-Security-Policy: its own scripts,
// styles, data and event stream only; no inline script, no framing.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// uiRoutes adds the status page: the page (or its login), its assets, its
// data, the login and logout, and its actions.
func (s *Server) uiRoutes(mux *http.ServeMux) {
	assets, _ := fs.Sub(uiFiles, "ui")
	static := http.StripPrefix("/ui/assets/", http.FileServerFS(assets))
	// Every handler of the page checks Host (and an action's Origin), and
	// sends HSTS over TLS: pageGuard.
	page := func(h http.HandlerFunc) http.Handler { return uiHeaders(s.pageGuard(h)) }
	mux.Handle("GET /ui/assets/", page(func(w http.ResponseWriter, r *http.Request) {
		if ext := path.Ext(r.URL.Path); ext != ".js" && ext != ".css" {
			// The script and the style only: no listing, no templates.
			http.NotFound(w, r)
			return
		}
		static.ServeHTTP(w, r)
	}))
	mux.Handle("GET /{$}", page(s.page))
	mux.Handle("GET "+pageRolloutPath+"{id}", page(s.page))
	mux.Handle("POST /login", page(s.login))
	mux.Handle("POST /logout", page(s.logout))
	mux.Handle("GET /ui/state", s.pageGuard(s.hook("ui", s.uiState)))
	mux.Handle("POST /ui/roll", s.pageGuard(s.hook("ui", s.uiAction(s.rollNow))))
	mux.Handle("POST /ui/cancel", s.pageGuard(s.hook("ui", s.uiAction(s.cancelQueued))))
	mux.Handle("POST /ui/rollback", s.pageGuard(s.hook("ui", s.uiAction(s.rollBack))))
	mux.Handle("GET /ui/rollout", s.pageGuard(s.hook("ui", s.uiRollout)))
	mux.Handle("POST /ui/promote", s.pageGuard(s.hook("ui", s.uiAction(s.uiDecide(fleetroll.DecisionPromote)))))
	mux.Handle("POST /ui/abort", s.pageGuard(s.hook("ui", s.uiAction(s.uiDecide(fleetroll.DecisionAbort)))))
	mux.HandleFunc("POST /rollouts/{id}/cancel", s.hook("api", s.apiCancel))
}

// uiHeaders sets the page's security headers.
func uiHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", uiCSP)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		// same-origin: nothing leaks to other sites, and the page's own form
		// posts carry a real Origin (no-referrer makes browsers send "null").
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// viewing says how a request may see the page: with a session (and act),
// read-only from a network opened to viewing, or not at all.
func (s *Server) viewing(r *http.Request) (sess session, loggedIn, ok bool) {
	if sess, ok := s.sessions.of(r); ok {
		return sess, true, true
	}
	if len(s.opt.ViewFrom) > 0 {
		if ip, known := s.clientIP(r); known && inAny(ip, s.opt.ViewFrom) {
			return session{}, false, true
		}
	}
	return session{}, false, false
}

// canRead says whether a request may read rollouts: the API token, a
// session, or a network opened to viewing.
func (s *Server) canRead(r *http.Request) bool {
	if _, _, ok := bearer(r, s.secretsNow().API); ok {
		return true
	}
	_, _, ok := s.viewing(r)
	return ok
}

// pageRolloutPath and a rollout's ID is the page opened on that rollout
// (Server.pageURL).
const pageRolloutPath = "/ui/rollouts/"

// pagePath is where a login returns to: the page itself, or the page opened
// on a rollout (its ID in lower case); anything else is the page. Nothing a
// form or a link carries is ever redirected to but these two shapes, so a
// login can send no one to another site (no open redirect).
func pagePath(p string) string {
	if id, ok := strings.CutPrefix(p, pageRolloutPath); ok && fleetroll.ValidRolloutID(strings.ToLower(id)) {
		return pageRolloutPath + strings.ToLower(id)
	}
	return "/"
}

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	if id := r.PathValue("id"); id != "" && !fleetroll.ValidRolloutID(strings.ToLower(id)) {
		http.NotFound(w, r)
		return
	}
	sess, loggedIn, ok := s.viewing(r)
	if !ok {
		next := pagePath(r.URL.Path)
		if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
			// A link followed from another site (Slack, Docker Hub): the
			// browser left out the SameSite=Strict session cookie. The page
			// asks for itself again, same-site, which carries it; without
			// one, that request gets the login.
			_ = uiTemplates.ExecuteTemplate(w, "again.html", map[string]any{"Next": next})
			return
		}
		_ = uiTemplates.ExecuteTemplate(w, "login.html", map[string]any{"Next": next})
		return
	}
	data := map[string]any{"LoggedIn": loggedIn}
	if loggedIn {
		data["CSRF"] = sess.csrf
	}
	_ = uiTemplates.ExecuteTemplate(w, "index.html", data)
}

// login checks the API token (constant time) from the form and starts a
// session: the token goes no further.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	code, body, ok := s.authorize(r, func() (int, any, bool) {
		if !tokenEqual(s.secretsNow().API, r.PostForm.Get("token")) {
			return http.StatusUnauthorized, nil, false
		}
		return 0, nil, true
	})
	if !ok {
		msg := "Wrong token."
		if code == http.StatusTooManyRequests {
			retryAfter(w, body)
			msg = "Too many wrong tokens from your address: try again later."
		}
		info(r).log.Warn("login refused", "reason", strings.ToLower(strings.TrimSuffix(msg, ".")))
		w.WriteHeader(code)
		_ = uiTemplates.ExecuteTemplate(w, "login.html", map[string]any{"Error": msg, "Next": pagePath(r.PostForm.Get("next"))})
		return
	}
	sess, err := s.sessions.create(r.Context())
	if err != nil {
		// The sessions live in etcd, and it cannot be reached.
		info(r).log.Error("login failed: the session could not be stored", "err", err)
		w.Header().Set("Retry-After", "10")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = uiTemplates.ExecuteTemplate(w, "login.html", map[string]any{"Error": "The receiver cannot store sessions right now (etcd): try again in a moment.", "Next": pagePath(r.PostForm.Get("next"))})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: sess.id, Path: "/", HttpOnly: true, Secure: s.overTLS(r),
		SameSite: http.SameSiteStrictMode, MaxAge: int(s.sessions.maxAge() / time.Second)})
	info(r).log.Info("login")
	http.Redirect(w, r, pagePath(r.PostForm.Get("next")), http.StatusSeeOther)
}

// logout ends the session (CSRF-checked, from the page's form).
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	sess, ok := s.sessions.of(r)
	if !ok || r.ParseForm() != nil || !csrfEqual(sess.csrf, r.PostForm.Get("csrf")) {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	if err := s.sessions.end(r.Context(), sess.id); err != nil {
		// Kept: a session believed ended must be.
		info(r).log.Error("logout failed: the session could not be ended", "err", err)
		w.Header().Set("Retry-After", "10")
		http.Error(w, "the session could not be ended (etcd cannot be reached): try again in a moment", http.StatusServiceUnavailable)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", HttpOnly: true, Secure: s.overTLS(r),
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func csrfEqual(want, got string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(want), []byte(got)) == 1
}

// uiAction runs one of the page's actions for a session whose CSRF token
// the request carries (a cross-site form can send neither the header nor,
// SameSite=Strict, the cookie).
func (s *Server) uiAction(do func(r *http.Request, by string) (int, any)) func(*http.Request) (int, any) {
	return func(r *http.Request) (int, any) {
		sess, ok := s.sessions.of(r)
		if !ok {
			return problem(http.StatusUnauthorized, "log in first")
		}
		if !csrfEqual(sess.csrf, r.Header.Get("X-CSRF-Token")) {
			return problem(http.StatusForbidden, "missing or wrong CSRF token")
		}
		return do(r, "the status page (request "+info(r).id+")")
	}
}

// rollNow is a manual trigger of ?service=.
func (s *Server) rollNow(r *http.Request, _ string) (int, any) {
	service := r.URL.Query().Get("service")
	if code, body, ok := s.configured(service); !ok {
		return code, body
	}
	return s.in.enqueue(r, SourceManual, "", map[string]Event{service: {}}, []string{service})
}

// rollBack deploys ?service='s release before the current one again.
func (s *Server) rollBack(r *http.Request, _ string) (int, any) {
	service := r.URL.Query().Get("service")
	svc, ok := s.Config().Service(service)
	if !ok {
		return problem(http.StatusNotFound, "no such service is configured")
	}
	if svc.Settings.Image == "" || s.opt.Etcd == nil {
		return problem(http.StatusUnprocessableEntity, "only a service with an image (releases, with etcd) can be rolled back")
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	prev, err := coord.ReleaseStore{KAPI: s.opt.Etcd}.Previous(ctx, service)
	switch {
	case err != nil:
		info(r).log.Warn("releases unreadable", "service", service, "error", err.Error())
		return problem(http.StatusServiceUnavailable, "the releases could not be read; retry later")
	case prev == nil:
		return problem(http.StatusConflict, "there is no release before the current one")
	}
	return s.in.enqueue(r, SourceManual, "", map[string]Event{service: {Repository: svc.Settings.Image, Digest: prev.Digest()}}, []string{service})
}

// uiDecide promotes or aborts rollout ?id=, paused after its canaries: the
// API's decision (decideOn), made by the page's session.
func (s *Server) uiDecide(kind fleetroll.DecisionKind) func(r *http.Request, by string) (int, any) {
	return func(r *http.Request, by string) (int, any) {
		return s.decideOn(r, r.URL.Query().Get("id"), kind, by)
	}
}

// uiRollout answers rollout ?id='s record to the page (one opened on a
// rollout that is not among its services' recent ones).
func (s *Server) uiRollout(r *http.Request) (int, any) {
	if _, _, ok := s.viewing(r); !ok {
		return problem(http.StatusUnauthorized, "log in first")
	}
	id := strings.ToLower(r.URL.Query().Get("id"))
	if !fleetroll.ValidRolloutID(id) {
		return problem(http.StatusNotFound, "no such rollout")
	}
	// One reading for the page at a time, the state's included: viewers
	// cannot make the receiver read etcd in parallel.
	select {
	case s.uiCache.sem <- struct{}{}:
		defer func() { <-s.uiCache.sem }()
	case <-r.Context().Done():
		return problem(http.StatusServiceUnavailable, "the rollout could not be read in time")
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	ro, found, err := s.records.Get(ctx, id)
	switch {
	case err != nil:
		info(r).log.Warn("rollout records unavailable", "rollout_id", id, "error", err.Error())
		return problem(http.StatusServiceUnavailable, unreadMessage(err))
	case !found:
		return problem(http.StatusNotFound, "no such rollout")
	}
	return http.StatusOK, ro
}

// cancelQueued takes rollout ?id= out of the queue before it runs.
func (s *Server) cancelQueued(r *http.Request, by string) (int, any) {
	return s.cancel(r, r.URL.Query().Get("id"), by)
}

// apiCancel answers POST /rollouts/{id}/cancel.
func (s *Server) apiCancel(r *http.Request) (int, any) {
	if code, body, ok := s.authorize(r, func() (int, any, bool) { return bearer(r, s.secretsNow().API) }); !ok {
		return code, body
	}
	return s.cancel(r, r.PathValue("id"), "the API (request "+info(r).id+")")
}

func (s *Server) cancel(r *http.Request, id, by string) (int, any) {
	if !fleetroll.ValidRolloutID(id) {
		return problem(http.StatusBadRequest, "rollout ID: want 12 hex digits")
	}
	rec, err := s.queue.Cancel(r.Context(), id, by)
	switch {
	case errors.Is(err, ErrNotQueued):
		return problem(http.StatusConflict, "rollout "+id+" is not queued: only a rollout that has not begun can be cancelled")
	case err != nil:
		info(r).log.Warn("cancel failed", "rollout_id", id, "error", err.Error())
		return problem(http.StatusServiceUnavailable, "the queue could not be changed; retry later")
	}
	info(r).log.Info("rollout cancelled", "rollout_id", id, "service", rec.Service)
	return http.StatusOK, rec
}

// uiService is one service as the page shows it.
type uiService struct {
	Name      string             `json:"name"`
	Image     string             `json:"image,omitempty"`
	Release   string             `json:"release,omitempty"`
	Previous  string             `json:"previous,omitempty"`
	Drain     bool               `json:"drain"`
	Instances []uiInstance       `json:"instances"`
	Rollouts  []fleetroll.Report `json:"rollouts"`
	Error     string             `json:"error,omitempty"`

	// Quarantined are the digests a deploy of is refused, newest first
	// (at most coord.DefaultQuarantineKeep).
	Quarantined []coord.Quarantined `json:"quarantined"`
}

type uiInstance struct {
	Unit      string `json:"unit"`
	Machine   string `json:"machine,omitempty"`
	Fleet     string `json:"fleet"`
	Systemd   string `json:"systemd"`
	Announced *bool  `json:"announced,omitempty"`
	Healthy   *bool  `json:"healthy,omitempty"`
	// Disagrees: fleet's target and systemd's state disagree (disagree);
	// DisagreeingSince is the first reading of the page's state that saw
	// them disagree, and DisagreeingFor how long before this reading.
	Disagrees        bool              `json:"disagrees,omitempty"`
	DisagreeingSince time.Time         `json:"disagreeing_since,omitzero"`
	DisagreeingFor   fleetroll.Seconds `json:"disagreeing_seconds,omitempty"`
}

// disagree says whether fleet's target for a unit (launched, loaded or
// inactive) and systemd's state of it ("active/running", "no state", ...)
// disagree: a launched unit that is not active, or one fleet holds loaded
// or inactive that is active or becoming so. A unit on its way (a start or
// a stop not yet done) disagrees until it gets there; an unknown target
// never does.
func disagree(target, systemd string) bool {
	active, _, _ := strings.Cut(systemd, "/")
	switch target {
	case "launched":
		return active != "active"
	case "loaded", "inactive":
		return active == "active" || active == "activating" || active == "reloading" || active == "deactivating"
	}
	return false
}

// disagreements are the since-times of the instances whose target and
// state disagreed at the last reading, by unit: one entry per disagreeing
// instance of a configured service, no more.
type disagreements map[string]time.Time

// mark judges instance i at a reading at now: when it disagrees, it keeps
// the since-time of the last reading (prev), or starts one, and records it
// in next.
func (prev disagreements) mark(next disagreements, i *uiInstance, now time.Time) {
	if !disagree(i.Fleet, i.Systemd) {
		return
	}
	since, ok := prev[i.Unit]
	if !ok {
		since = now
	}
	next[i.Unit] = since
	i.Disagrees, i.DisagreeingSince, i.DisagreeingFor = true, since, fleetroll.Seconds(now.Sub(since))
}

// uiState answers the page's data: every configured service with its
// release, instances and last 50 rollouts.
func (s *Server) uiState(r *http.Request) (int, any) {
	if _, _, ok := s.viewing(r); !ok {
		return problem(http.StatusUnauthorized, "log in first")
	}
	// One reading of fleet, etcd and the health checks serves every viewer
	// for a second (or until a record changes): a viewer cannot make the
	// receiver read etcd or call the instances at its own pace.
	select {
	case s.uiCache.sem <- struct{}{}:
		defer func() { <-s.uiCache.sem }()
	case <-r.Context().Done():
		return problem(http.StatusServiceUnavailable, "the page's state could not be read in time")
	}
	c := &s.uiCache
	fresh := c.val != nil && s.opt.Clock.Now().Sub(c.at) < uiStateTTL
	if fresh {
		select {
		case <-c.changed:
			fresh = false
		default:
		}
	}
	if !fresh {
		c.changed = s.store.Changed()
		c.val, c.at = s.readUIState(context.WithoutCancel(r.Context())), s.opt.Clock.Now()
	}
	return http.StatusOK, map[string]any{"services": c.val}
}

// uiStateTTL is how long one reading of the page's state serves.
const uiStateTTL = time.Second

// uiStateCache is the last reading of the page's state: one at a time.
type uiStateCache struct {
	sem     chan struct{}
	at      time.Time
	val     []uiService
	changed <-chan struct{} // closed when a record changes after the reading
	// disagreeing are the since-times of the last reading that judged
	// the instances (one that read fleet's units and states).
	disagreeing disagreements
}

// readUIState reads fleet, etcd and each instance's health check; it runs
// under uiCache.sem, which guards uiCache.disagreeing.
func (s *Server) readUIState(ctx context.Context) []uiService {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	units, uerr := s.opt.Fleet.Units(ctx)
	states, serr := s.opt.Fleet.UnitStates(ctx)
	byState := map[string]string{}
	machine := map[string]string{}
	for _, st := range states {
		if st != nil {
			byState[st.Name] = st.SystemdActiveState + "/" + st.SystemdSubState
			machine[st.Name] = st.MachineID
		}
	}
	// The instances' targets and states are judged only when both were
	// read; otherwise the last judgement's since-times are kept.
	judged, now, next := uerr == nil && serr == nil, s.opt.Clock.Now(), disagreements{}
	out := []uiService{}
	for _, svc := range s.Config().Services {
		u := uiService{Name: svc.Name, Image: svc.Settings.Image, Drain: svc.Settings.Drain != nil, Instances: []uiInstance{}, Quarantined: []coord.Quarantined{}}
		if err := errors.Join(uerr, serr); err != nil {
			u.Error = "fleet could not be read"
		}
		policy := svc.Settings.Complete(svc.Name)
		if s.opt.Etcd != nil && svc.Settings.Image != "" {
			store := coord.ReleaseStore{KAPI: s.opt.Etcd}
			if cur, err := store.Current(ctx, svc.Name); err == nil && cur != nil {
				u.Release = cur.Image
			}
			if prev, err := store.Previous(ctx, svc.Name); err == nil && prev != nil {
				u.Previous = prev.Image
			}
			if q, err := (coord.Quarantine{KAPI: s.opt.Etcd}).List(ctx, svc.Name); err == nil {
				u.Quarantined = q
			}
		}
		for _, unit := range units {
			name, in, ok := strings.Cut(strings.TrimSuffix(unit.Name, ".service"), "@")
			if !ok || name != svc.Name || in == "" {
				continue
			}
			i := uiInstance{Unit: unit.Name, Machine: shortMachine(machine[unit.Name]), Fleet: unit.DesiredState, Systemd: byState[unit.Name]}
			if i.Systemd == "" {
				i.Systemd = "no state"
			}
			if judged {
				s.uiCache.disagreeing.mark(next, &i, now)
			}
			if policy.Drain != nil && s.opt.Etcd != nil {
				_, err := s.opt.Etcd.Get(ctx, policy.Drain.Prefix+"/"+in, nil)
				announced := err == nil
				if err == nil || isKeyNotFound(err) {
					i.Announced = &announced
				}
			}
			u.Instances = append(u.Instances, i)
		}
		if policy.Health != nil {
			s.checkHealth(ctx, policy.Health.Gate(), u.Instances, machine)
		}
		l := s.records.List(ctx, svc.Name)
		u.Rollouts = append(l.Rollouts, l.History...)
		if len(u.Rollouts) > 50 {
			u.Rollouts = u.Rollouts[:50]
		}
		out = append(out, u)
	}
	if judged {
		s.uiCache.disagreeing = next
	}
	return out
}

func shortMachine(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func isKeyNotFound(err error) bool {
	var e client.Error
	return errors.As(err, &e) && e.Code == client.ErrorCodeKeyNotFound
}

// checkHealth asks each instance's health check once, at once (1 s each).
func (s *Server) checkHealth(ctx context.Context, g *fleetroll.HealthGate, instances []uiInstance, machine map[string]string) {
	ips, err := s.opt.Fleet.MachineIPs(ctx)
	if err != nil {
		return
	}
	g.RequestTimeout = time.Second
	var wg sync.WaitGroup
	for i := range instances {
		ip := ips[machine[instances[i].Unit]]
		_, port, _ := strings.Cut(strings.TrimSuffix(instances[i].Unit, ".service"), "@")
		if ip == "" {
			continue
		}
		wg.Go(func() {
			healthy := g.Check(ctx, g.URL(ip, port)) == nil
			instances[i].Healthy = &healthy
		})
	}
	wg.Wait()
}

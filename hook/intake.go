package hook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// intake is where triggers come in: the senders' endpoints (Docker Hub, a
// registry, GitHub) and the operator's POST /rollouts check a request and
// its payload, and enqueue turns what matched into queued rollouts (with
// the replay window and the digest check). It holds no state of its own:
// the queue, the replay window and the throttle are the server's.
type intake struct {
	secrets   func() Secrets // those in force (a reload replaces them)
	config    func() *Config
	authorize func(r *http.Request, check func() (int, any, bool)) (int, any, bool)
	bodyLimit int64
	clock     fleetroll.Clock
	callbacks *Callbacker
	resolver  fleetroll.Resolver
	queue     scheduler
	replays   deliveryGuard
	metrics   *metrics
	statusURL func(id string) string
	// gate refuses quarantined digests and tags outside the tag policy.
	gate *releaseGate
}

// readBody checks the content type against the accepted ones (415) and
// reads the body within the limit (413).
func (in *intake) readBody(r *http.Request, accepted ...string) ([]byte, int, any) {
	if code, body, ok := contentType(r, accepted...); !ok {
		return nil, code, body
	}
	if r.ContentLength > in.bodyLimit {
		code, body := problem(http.StatusRequestEntityTooLarge, fmt.Sprintf("body over the limit of %d bytes", in.bodyLimit))
		return nil, code, body
	}
	b, err := io.ReadAll(r.Body)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		code, body := problem(http.StatusRequestEntityTooLarge, fmt.Sprintf("body over the limit of %d bytes", in.bodyLimit))
		return nil, code, body
	case err != nil:
		// Never the error itself: it names socket addresses.
		code, body := problem(http.StatusBadRequest, "cannot read the request body")
		return nil, code, body
	}
	return b, 0, nil
}

// enqueue submits one trigger per matched service and builds the 202
// answer. A delivery key seen within the replay window answers 200
// "duplicate" and starts nothing.
func (in *intake) enqueue(r *http.Request, source Source, delivery string, matches map[string]Event, order []string) (int, any) {
	ri := info(r)
	return in.submit(r.Context(), ri.log, ri.id, source, delivery, matches, order)
}

// submit is enqueue for any trigger source, a request's or not (the
// registry poller): log and requestID are its own.
func (in *intake) submit(ctx context.Context, log *slog.Logger, requestID string, source Source, delivery string, matches map[string]Event, order []string) (int, any) {
	ri := reqInfo{id: requestID, log: log}
	ids, dup, err := in.replays.claim(ctx, delivery)
	if err != nil {
		ri.log.Warn("delivery not recorded", "error", err.Error())
		return problem(http.StatusServiceUnavailable, "the trigger could not be recorded; retry later")
	}
	if dup {
		ri.log.Info("delivery replayed: ignored", "source", string(source), "rollouts", strings.Join(ids, ","))
		in.metrics.replays.WithLabelValues(string(source)).Inc()
		return http.StatusOK, map[string]any{"status": "duplicate", "reason": "this delivery was received before", "rollouts": ids}
	}
	// Each service's digest checked on its own: a stale event refuses its
	// service only. Every one refused (409), the delivery stays claimed: a
	// registry retries a notification until it gets a 2xx, and would hold
	// every later one back behind it; its retry is a duplicate that starts
	// nothing. A registry that could not be asked (5xx): the retry is
	// checked anew.
	order, refused, code, body := in.verifyDigests(ctx, ri.log, matches, order)
	if code != 0 {
		in.replays.forget(ctx, delivery)
		return code, body
	}
	// A quarantined digest, or a sender's tag outside the tag policy:
	// refused (409), recorded, its callback told; the others go on.
	order, gated := in.gate.check(ctx, ri.log, ri.id, source, in.clock.Now().UTC(), matches, order)
	refused = append(refused, gated...)
	if len(order) == 0 {
		ans := refused[0]
		if len(refused) > 1 {
			ans["refused"] = refused
		}
		return http.StatusConflict, ans
	}
	var out []map[string]any
	ids = nil
	received := in.clock.Now().UTC()
	for _, service := range order {
		ev := matches[service]
		callback := ev.CallbackURL
		if callback != "" && !in.callbacks.Allowed(callback) {
			// Dropped as it arrives: never stored, never called.
			ri.log.Warn("callback dropped: origin not on the allow-list", "source", string(source), "callback_origin", originOf(callback))
			callback = ""
		}
		ro, merged, err := in.queue.Submit(ctx, service, ev.Trigger(source, ri.id, received), callback)
		if errors.Is(err, ErrShuttingDown) {
			in.replays.forget(ctx, delivery)
			return problem(http.StatusServiceUnavailable, err.Error())
		}
		if err != nil {
			// Never answered 202 unless it is in etcd.
			ri.log.Warn("trigger not recorded", "service", service, "error", err.Error())
			in.replays.forget(ctx, delivery)
			return problem(http.StatusServiceUnavailable, "the trigger could not be recorded; retry later")
		}
		ri.log.Info("rollout queued", "rollout_id", ro.ID, "service", service, "source", string(source),
			"repository", ev.Repository, "tag", ev.Tag, "merged", merged)
		ids = append(ids, ro.ID)
		out = append(out, map[string]any{"service": service, "id": ro.ID, "status_url": in.statusURL(ro.ID), "merged": merged})
	}
	in.replays.started(ctx, delivery, ids)
	ans := map[string]any{"id": out[0]["id"], "status_url": out[0]["status_url"], "rollouts": out}
	if len(refused) > 0 {
		ans["refused"] = refused
	}
	return http.StatusAccepted, ans
}

func (in *intake) dockerHub(r *http.Request) (int, any) {
	if code, body, ok := in.authorize(r, func() (int, any, bool) {
		if !tokenEqual(in.secrets().DockerHub, r.PathValue("token")) {
			code, body := problem(http.StatusForbidden, "wrong token")
			return code, body, false
		}
		return 0, nil, true
	}); !ok {
		return code, body
	}
	b, code, body := in.readBody(r, "application/json")
	if code != 0 {
		return code, body
	}
	ev, err := ParseDockerHub(b)
	if err != nil {
		return badPayload(err)
	}
	// Docker Hub sends no delivery ID: one push is its repository, tag and
	// push time; a body without a push time is known by its hash.
	delivery := bodyDelivery("dockerhub", b)
	if ev.PushedAt != "" {
		delivery = "dockerhub|" + ev.Repository + "|" + ev.Tag + "|" + ev.PushedAt
	}
	return in.enqueueMatching(r, SourceDockerHub, "Docker Hub", delivery, ev)
}

// enqueueMatching queues one event for every service whose triggers match.
func (in *intake) enqueueMatching(r *http.Request, source Source, sender, delivery string, ev Event) (int, any) {
	services := in.config().Match(source, ev.Repository, ev.Tag)
	if len(services) == 0 {
		return ignored(fmt.Sprintf("no service is configured for %s %s:%s", sender, ev.Repository, ev.Tag))
	}
	matches := map[string]Event{}
	for _, svc := range services {
		matches[svc] = ev
	}
	return in.enqueue(r, source, delivery, matches, services)
}

func (in *intake) registry(r *http.Request) (int, any) {
	if code, body, ok := in.authorize(r, func() (int, any, bool) { return bearer(r, in.secrets().Registry) }); !ok {
		return code, body
	}
	b, code, body := in.readBody(r, "application/vnd.docker.distribution.events.v1+json", "application/json")
	if code != 0 {
		return code, body
	}
	events, err := ParseRegistry(b)
	if err != nil {
		return badPayload(err)
	}
	// One envelope gives at most one rollout per service: its last event.
	matches := map[string]Event{}
	var order, eventIDs []string
	for _, ev := range events {
		svcs := in.config().Match(SourceRegistry, ev.Repository, ev.Tag)
		if len(svcs) > 0 {
			eventIDs = append(eventIDs, ev.EventID)
		}
		for _, svc := range svcs {
			if _, seen := matches[svc]; !seen {
				order = append(order, svc)
			}
			matches[svc] = ev
		}
	}
	if len(order) == 0 {
		return ignored(fmt.Sprintf("no tagged manifest push in %d event(s) matches a configured service", len(events)))
	}
	// The registry retries an envelope with the same event IDs; an envelope
	// with an event that has none is known by its body's hash.
	delivery := bodyDelivery("registry", b)
	if !slices.Contains(eventIDs, "") {
		slices.Sort(eventIDs)
		delivery = "registry|" + strings.Join(eventIDs, ",")
	}
	return in.enqueue(r, SourceRegistry, delivery, matches, order)
}

func (in *intake) github(r *http.Request) (int, any) {
	sig := r.Header.Get("X-Hub-Signature-256")
	if sig == "" {
		return problem(http.StatusUnauthorized, "missing X-Hub-Signature-256")
	}
	b, code, body := in.readBody(r, "application/json")
	if code != 0 {
		return code, body
	}
	if code, body, ok := in.authorize(r, func() (int, any, bool) {
		if !VerifyGitHubSignature(in.secrets().GitHub, sig, b) {
			code, body := problem(http.StatusForbidden, "wrong signature")
			return code, body, false
		}
		return 0, nil, true
	}); !ok {
		return code, body
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
	// The replay key is the signed body's hash, never X-GitHub-Delivery: that
	// header is not signed, and a delivery without it is checked too.
	return in.enqueueMatching(r, SourceGitHub, "GitHub package", bodyDelivery("github", b), ev)
}

func (in *intake) manual(r *http.Request) (int, any) {
	if code, body, ok := in.authorize(r, func() (int, any, bool) { return bearer(r, in.secrets().API) }); !ok {
		return code, body
	}
	b, code, body := in.readBody(r, "application/json")
	if code != 0 {
		return code, body
	}
	service, ref, err := ParseManual(b)
	if err != nil {
		return badPayload(err)
	}
	svc, ok := in.config().Service(service)
	if !ok {
		return problem(http.StatusNotFound, fmt.Sprintf("no service %q is configured", service))
	}
	var ev Event
	if ref != "" {
		// Only the service's own image: what reaches etcd and the units is
		// the configuration's repository with a checked tag or digest.
		if svc.Settings.Image == "" {
			return problem(http.StatusUnprocessableEntity, fmt.Sprintf("service %q has no image configured: it restarts, it does not deploy", service))
		}
		image, tagOrDigest, err := fleetroll.SplitImageRef(ref)
		if err != nil {
			return badPayload(payloadErr("image: %v", err))
		}
		if image != svc.Settings.Image {
			return problem(http.StatusUnprocessableEntity, fmt.Sprintf("image %s is not service %q's image (%s)", image, service, svc.Settings.Image))
		}
		ev.Repository = image
		if fleetroll.ValidDigest(tagOrDigest) {
			ev.Digest = tagOrDigest
		} else {
			ev.Tag = tagOrDigest
		}
	}
	return in.enqueue(r, SourceManual, "", map[string]Event{service: ev}, []string{service})
}

package hook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/fleetroll/release"
)

// SourcePoll is the source of a trigger the registry poller queued.
const SourcePoll Source = "poll"

// MaxPollBackoff bounds the wait after failed polls (unless the registry
// asks for longer).
const MaxPollBackoff = 30 * time.Minute

// MaxPollWait bounds the wait a registry may ask for (Retry-After, a rate
// limit's reset): Docker Hub's anonymous window is 6 h; a longer or absurd
// answer must not stop the poller for days.
const MaxPollWait = 6 * time.Hour

// askedWait is the wait a registry asked for, bounded by MaxPollWait.
func askedWait(d time.Duration) time.Duration { return min(d, MaxPollWait) }

// pollers runs one registry poller per service with poll: in the
// configuration, each polling only while it holds the service's poller
// lease in etcd; a configuration reload starts, stops or restarts them.
type pollers struct {
	s       *Server
	changed chan struct{}
	running map[string]*pollerRun // by service; only Run's goroutine touches it
}

type pollerRun struct {
	poll   Poll
	image  string
	cancel context.CancelFunc
	done   chan struct{}
}

func newPollers(s *Server) *pollers {
	return &pollers{s: s, changed: make(chan struct{}, 1), running: map[string]*pollerRun{}}
}

// poke asks Run to look at the configuration again.
func (p *pollers) poke() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// Run runs the pollers until ctx ends, then returns once they have stopped
// (and released their leases).
func (p *pollers) Run(ctx context.Context) {
	for {
		p.reconcile(ctx)
		select {
		case <-ctx.Done():
			for service, r := range p.running {
				r.cancel()
				<-r.done
				delete(p.running, service)
			}
			return
		case <-p.changed:
		}
	}
}

// reconcile starts the pollers the configuration asks for and stops those
// it no longer does (or asks for differently).
func (p *pollers) reconcile(ctx context.Context) {
	want := map[string]Service{}
	for _, svc := range p.s.Config().Services {
		if svc.Poll != nil {
			want[svc.Name] = svc
		}
	}
	for service, r := range p.running {
		if svc, ok := want[service]; ok && *svc.Poll == r.poll && svc.Settings.Image == r.image {
			delete(want, service)
			continue
		}
		r.cancel()
		<-r.done
		delete(p.running, service)
	}
	for service, svc := range want {
		pl, err := p.s.newPoller(svc)
		if err != nil {
			p.s.log.Error("registry poller not started", "service", service, "error", err.Error())
			continue
		}
		pctx, cancel := context.WithCancel(ctx)
		r := &pollerRun{poll: *svc.Poll, image: svc.Settings.Image, cancel: cancel, done: make(chan struct{})}
		p.running[service] = r
		go func() {
			defer close(r.done)
			pl.run(pctx)
		}()
	}
}

// poller asks the registry for one service's tag, every interval, while
// its receiver holds the service's poller lease.
type poller struct {
	service, image, tag string
	interval            time.Duration
	watch               interface {
		Head(ctx context.Context, etag string) (release.Manifest, error)
	}
	lease   coord.Lock
	s       *Server
	log     *slog.Logger
	jitter  func(time.Duration) time.Duration
	handled string // the digest last found deployed, queued or queued now
}

func (s *Server) newPoller(svc Service) (*poller, error) {
	w, err := s.opt.Registry.Watch(svc.Settings.Image, svc.Poll.Tag, "fleetroll")
	if err != nil {
		return nil, err
	}
	lease, err := coord.PollerLease(s.opt.Etcd, svc.Name, s.opt.Owner, s.opt.LeaseTTL, s.opt.Clock)
	if err != nil {
		return nil, err
	}
	return &poller{service: svc.Name, image: svc.Settings.Image, tag: svc.Poll.Tag, interval: svc.Poll.Interval, watch: w,
		lease: lease, s: s, log: s.log.With("service", svc.Name, "image", svc.Settings.Image, "tag", svc.Poll.Tag),
		jitter: func(d time.Duration) time.Duration { return d + rand.N(d/5+1) }}, nil
}

// run waits for the lease, polls while it holds it, and waits again when
// it loses it, until ctx ends.
func (p *poller) run(ctx context.Context) {
	fails := 0
	for ctx.Err() == nil {
		held, err := p.lease.Acquire(ctx, true)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fails++
			wait := p.backoff(fails)
			p.log.Warn("registry poller: its lease could not be taken; retrying", "error", err.Error(), "retry_in", wait.String())
			if !p.sleep(ctx, nil, wait) {
				return
			}
			continue
		}
		fails = 0
		p.log.Info("registry poller took the lease: this receiver polls", "interval", p.interval.String())
		why := p.pollHeld(ctx, held)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if err := held.Release(rctx); err != nil {
			p.log.Warn("registry poller: lease not released; it expires", "error", err.Error())
		}
		cancel()
		p.log.Info("registry poller left the lease", "reason", why)
	}
}

// sleep waits d on the server's clock; false when ctx ended or lost was
// closed first.
func (p *poller) sleep(ctx context.Context, lost <-chan struct{}, d time.Duration) bool {
	t := p.s.opt.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-lost:
		return false
	case <-t.C():
		return true
	}
}

// backoff is the wait after fails failed polls in a row: the interval,
// doubled each time, up to MaxPollBackoff (never under the interval),
// jittered up by a fifth so that receivers restarted together spread out.
func (p *poller) backoff(fails int) time.Duration {
	return p.jitter(pollBackoff(p.interval, fails))
}

func pollBackoff(interval time.Duration, fails int) time.Duration {
	d := interval
	for i := 1; i < fails && d < MaxPollBackoff; i++ {
		d *= 2
	}
	return max(min(d, MaxPollBackoff), interval)
}

// pollHeld polls every interval until ctx ends or the lease is lost; the
// first poll is at once (with no ETag: the digest is checked afresh).
func (p *poller) pollHeld(ctx context.Context, held *coord.Held) string {
	etag, fails := "", 0
	p.handled = ""
	var wait time.Duration
	for {
		if !p.sleep(ctx, held.Lost(), wait) {
			if err := held.Err(); err != nil {
				return "lost: " + err.Error()
			}
			return "shutdown"
		}
		m, err := p.watch.Head(ctx, etag)
		switch {
		case errors.Is(err, release.ErrRateLimited):
			fails++
			wait = max(p.backoff(fails), askedWait(m.Wait))
			p.count("rate_limited")
			p.log.Warn("registry poll: the registry asks to wait (429)", "retry_in", wait.String(), "asked", m.Wait.String())
			continue
		case err != nil:
			if ctx.Err() != nil {
				continue // the sleep above returns
			}
			fails++
			wait = max(p.backoff(fails), askedWait(m.Wait))
			p.count("error")
			p.log.Warn("registry poll failed", "error", err.Error(), "retry_in", wait.String())
			continue
		}
		fails = 0
		wait = max(p.interval, askedWait(m.Wait))
		if m.Wait > 0 {
			p.log.Warn("registry poll: the registry's rate limit is spent; waiting", "retry_in", wait.String())
		}
		if m.ETag != "" {
			etag = m.ETag
		}
		if m.NotModified || m.Digest == p.handled {
			p.count("unchanged")
			continue
		}
		p.count("new_digest")
		if err := p.consider(ctx, m.Digest); err != nil {
			etag = "" // the next poll answers with the digest
			p.log.Warn("registry poll: the new digest could not be queued; asking again next interval", "digest", m.Digest, "error", err.Error())
		}
	}
}

func (p *poller) count(result string) {
	p.s.metrics.polls.WithLabelValues(p.service, result).Inc()
}

// consider queues a rollout to digest unless it is the service's current
// release or a queued or running trigger carries it (a webhook came): it
// goes through the intake, as a webhook's push does (the replay window,
// the digest check, the queue).
func (p *poller) consider(ctx context.Context, digest string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*DigestCheckTimeout)
	defer cancel()
	cur, err := coord.ReleaseStore{KAPI: p.s.opt.Etcd}.Current(ctx, p.service)
	if err != nil {
		return err
	}
	prev := ""
	if cur != nil {
		prev = cur.Digest()
	}
	if prev == digest {
		p.handled = digest
		p.log.Debug("registry poll: the tag's digest is the current release", "digest", digest)
		return nil
	}
	all, err := coord.Triggers{KAPI: p.s.opt.Etcd}.List(ctx)
	if err != nil {
		return err
	}
	for _, e := range all[p.service] {
		if covers(e.Record.Trigger, p.tag, digest) {
			p.handled = digest
			p.log.Info("registry poll: a queued trigger deploys the tag's new digest already", "digest", digest, "rollout_id", e.Record.ID,
				"source", e.Record.Trigger.Source)
			return nil
		}
	}
	p.log.Info("registry poll: the tag moved and no trigger deploys it; queueing", "digest", digest, "current", prev)
	ev := Event{Repository: p.image, Tag: p.tag, Digest: digest}
	delivery := "poll|" + p.service + "|" + p.tag + "|" + prev + ">" + digest
	code, body := p.s.in.submit(ctx, p.s.log, "", SourcePoll, delivery, map[string]Event{p.service: ev}, []string{p.service})
	switch code {
	case http.StatusAccepted, http.StatusOK: // queued, or this very change was queued before
		p.handled = digest
		return nil
	case http.StatusConflict:
		return errors.New("the tag moved again meanwhile")
	}
	msg, _ := body.(map[string]any)["error"].(string)
	return fmt.Errorf("%d: %s", code, msg)
}

// covers tells whether a queued trigger deploys digest of tag: it names
// the digest, or only the tag (Docker Hub's push, resolved as it runs).
func covers(t fleetroll.Trigger, tag, digest string) bool {
	return t.Digest == digest || (t.Digest == "" && t.Tag == tag)
}

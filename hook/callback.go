package hook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/release"
)

// DefaultCallbackAllow is the only callback origin allowed by default.
const DefaultCallbackAllow = "https://registry.hub.docker.com"

// DefaultNotifyAllow is the only notification origin allowed by default
// (Slack's incoming webhooks). The notifications' allow-list is apart from
// the callbacks': allowing a chat never takes Docker Hub off the other.
const DefaultNotifyAllow = "https://hooks.slack.com"

// ErrCallbackNotAllowed is returned for a callback URL whose scheme and host
// are not on the allow-list.
var ErrCallbackNotAllowed = errors.New("callback URL not on the allow-list")

// errRedirectRefused stops a redirect to another origin, or a long chain.
var errRedirectRefused = errors.New("redirect not followed")

// Callbacker reports a rollout's result to the callback_url of a Docker Hub
// webhook, but only to origins on its allow-list: the URL comes from an
// unauthenticated body, and posting to it blindly would let anyone make
// fleetroll call any address.
type Callbacker struct {
	allow   map[string]bool // "scheme://host[:port]": Docker Hub callbacks
	notify  map[string]bool // the same, for notifications (AllowNotify)
	client  *http.Client
	retries int
	backoff time.Duration
	// maxAsked is the longest Retry-After honoured (DefaultMaxRetryAfter):
	// a target that asks for more is given up on at once.
	maxAsked time.Duration
	clock    fleetroll.Clock // paces the retries
}

// DefaultMaxRetryAfter is the longest wait a callback or notification
// target may ask for with Retry-After; the rollout's callback deadline
// (--callback-deadline) bounds it too.
const DefaultMaxRetryAfter = 10 * time.Minute

// defaultCallbacker is the callbacks' and notifications' poster of a
// receiver given none: the default allow-lists, a 10 s timeout.
func defaultCallbacker() (*Callbacker, error) {
	cb, err := NewCallbacker([]string{DefaultCallbackAllow}, 10*time.Second)
	if err != nil {
		return nil, err
	}
	if err := cb.AllowNotify(DefaultNotifyAllow); err != nil {
		return nil, err
	}
	return cb, nil
}

// NewCallbacker accepts origins such as "https://registry.hub.docker.com" or
// "http://127.0.0.1:9000".
func NewCallbacker(origins []string, timeout time.Duration) (*Callbacker, error) {
	c := &Callbacker{allow: map[string]bool{}, notify: map[string]bool{}, retries: 3, backoff: time.Second,
		maxAsked: DefaultMaxRetryAfter, clock: fleetroll.SystemClock{}}
	if err := addOrigins(c.allow, "callback", origins); err != nil {
		return nil, err
	}
	c.client = &http.Client{
		Timeout: timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 3 {
				return fmt.Errorf("%w: too many redirects", errRedirectRefused)
			}
			if origin(req.URL) != origin(via[0].URL) {
				return fmt.Errorf("%w: %s is another origin", errRedirectRefused, origin(req.URL))
			}
			return nil
		},
	}
	return c, nil
}

// AllowNotify adds origins to the notifications' allow-list, which is
// apart from the callbacks': a notification's URL must be on it.
func (c *Callbacker) AllowNotify(origins ...string) error {
	return addOrigins(c.notify, "notification", origins)
}

func addOrigins(to map[string]bool, what string, origins []string) error {
	for _, o := range origins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return fmt.Errorf("%s origin %q: want scheme://host[:port]", what, o)
		}
		to[origin(u)] = true
	}
	return nil
}

func origin(u *url.URL) string {
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host)
}

// Allowed reports whether a callback URL may be posted to.
func (c *Callbacker) Allowed(raw string) bool { return allowedBy(c.allow, raw) }

// NotifyAllowed reports whether a notification's URL may be posted to.
func (c *Callbacker) NotifyAllowed(raw string) bool { return allowedBy(c.notify, raw) }

func allowedBy(allow map[string]bool, raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && u.IsAbs() && u.User == nil && allow[origin(u)]
}

// CallbackResult is the body Docker Hub expects.
type CallbackResult struct {
	State       string `json:"state"` // success, failure or error
	Description string `json:"description"`
	Context     string `json:"context"`
	TargetURL   string `json:"target_url,omitempty"`
}

// Send posts the result, retrying failures (network errors, 5xx) a few times
// with backoff. It refuses URLs off the allow-list.
func (c *Callbacker) Send(ctx context.Context, callbackURL string, res CallbackResult) error {
	body, err := callbackBody(res)
	if err != nil {
		return err
	}
	return c.deliver(ctx, callbackURL, false, body, map[string]string{"Content-Type": "application/json"})
}

// callbackBody is the JSON of a result, within Docker Hub's limits.
func callbackBody(res CallbackResult) ([]byte, error) {
	res.Context = truncate(res.Context, 100)
	res.Description = truncate(res.Description, 255)
	return json.Marshal(res)
}

// deliver posts a body to a URL on its allow-list (the notifications' for
// a notification, else the callbacks'), retrying failures (network errors,
// 5xx, 429) a few times with a jittered exponential backoff. A target that
// answers with Retry-After (seconds or an HTTP date) is asked again no
// sooner than it said; one that asks for more than maxAsked, or past ctx's
// deadline, is given up on at once.
func (c *Callbacker) deliver(ctx context.Context, to string, notification bool, body []byte, headers map[string]string) error {
	if (notification && !c.NotifyAllowed(to)) || (!notification && !c.Allowed(to)) {
		return ErrCallbackNotAllowed
	}
	wait := c.backoff
	var last error
	for attempt := 1; attempt <= c.retries; attempt++ {
		last = c.post(ctx, to, body, headers)
		var perm *permanentError
		if last == nil || errors.As(last, &perm) {
			return last
		}
		if attempt == c.retries {
			break
		}
		d := jittered(wait)
		var busy *busyError
		if errors.As(last, &busy) && busy.asked > 0 {
			if busy.asked > c.maxAsked {
				return fmt.Errorf("%w: it asks to be retried in %s, more than %s: given up", last, busy.asked, c.maxAsked)
			}
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < busy.asked {
				return fmt.Errorf("%w: it asks to be retried in %s, past the callbacks' deadline (--callback-deadline): given up", last, busy.asked)
			}
			d = max(d, busy.asked)
		}
		t := c.clock.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-t.C():
		}
		wait *= 2
	}
	return fmt.Errorf("failed after %d attempts: %w", c.retries, last)
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }

// busyError is an answer to retry (5xx, 429), with the wait its
// Retry-After asked (zero: none).
type busyError struct {
	status string
	asked  time.Duration
}

func (e *busyError) Error() string { return "answered " + e.status }

// jittered is a wait of d on average, between d/2 and 3d/2: receivers that
// failed together do not retry together.
func jittered(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d)
}

func (c *Callbacker) post(ctx context.Context, u string, body []byte, headers map[string]string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return &permanentError{err}
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		if errors.Is(err, errRedirectRefused) {
			return &permanentError{err}
		}
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return &busyError{status: resp.Status, asked: release.WaitAsked(resp.StatusCode, resp.Header, c.clock.Now())}
	default:
		return &permanentError{fmt.Errorf("answered %s", resp.Status)}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary.
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// originOf returns the scheme and host of a URL for logs; the rest of a
// callback URL (Docker Hub puts a secret-like path there) is never logged.
func originOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	return origin(u)
}

package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// HealthGate waits until an instance answers HTTP 2xx a number of times in a
// row: GET http://<machine's public IP>:<port><path>.
type HealthGate struct {
	Path      string
	Successes int
	// Successes in a row required, Interval between checks, Timeout for
	// the whole gate: zero takes the policy's defaults (policy.go).
	// RequestTimeout bounds each check (default 2s).
	Interval, Timeout, RequestTimeout time.Duration
	Client                            *http.Client
	Clock                             Clock
}

// ErrUnhealthy is returned when the gate's timeout passes.
var ErrUnhealthy = errors.New("instance not healthy")

func (g HealthGate) withDefaults() HealthGate {
	if g.Successes <= 0 {
		g.Successes = DefaultHealthSuccesses
	}
	if g.Interval <= 0 {
		g.Interval = DefaultHealthInterval
	}
	if g.Timeout <= 0 {
		g.Timeout = DefaultHealthTimeout
	}
	if g.RequestTimeout <= 0 {
		g.RequestTimeout = 2 * time.Second
	}
	if g.Client == nil {
		g.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if g.Clock == nil {
		g.Clock = SystemClock{}
	}
	return g
}

// URL returns the URL checked for an instance on a machine.
func (g HealthGate) URL(ip, port string) string {
	p := g.Path
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return "http://" + net.JoinHostPort(ip, port) + p
}

// Wait checks url until it answers 2xx Successes times in a row, or the
// timeout passes (ErrUnhealthy, with the last answer), or ctx ends.
func (g HealthGate) Wait(ctx context.Context, url string) error {
	g = g.withDefaults()
	deadline := g.Clock.Now().Add(g.Timeout)
	ok, last := 0, "no answer yet"
	for {
		err := g.check(ctx, url)
		if err == nil {
			ok++
			if ok >= g.Successes {
				return nil
			}
		} else {
			ok, last = 0, err.Error()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !g.Clock.Now().Before(deadline) {
			return fmt.Errorf("%w: %s did not answer 2xx %d times in a row within %s; last: %s", ErrUnhealthy, url, g.Successes, g.Timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-g.Clock.After(g.Interval):
		}
	}
}

// Check asks url once: nil when it answers 2xx.
func (g HealthGate) Check(ctx context.Context, url string) error {
	return g.withDefaults().check(ctx, url)
}

func (g HealthGate) check(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, g.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := g.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("answered %s", resp.Status)
	}
	return nil
}

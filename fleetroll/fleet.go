package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coreos/fleet/client"
	"github.com/coreos/fleet/schema"
	"google.golang.org/api/googleapi"
)

// ErrNotFound is returned when fleet does not know a unit, or publishes no
// state for it.
var ErrNotFound = errors.New("not found")

// Fleet is the narrow slice of the fleet API the roller uses. Every call takes
// a context that bounds it. Implementations return an error wrapping
// ErrNotFound, never a nil result, when fleet has no such unit or no state.
type Fleet interface {
	// Units lists every unit fleet knows, following pagination.
	Units(ctx context.Context) ([]*schema.Unit, error)
	// UnitState returns the state fleet publishes for a unit, or ErrNotFound
	// when it publishes none (the unit is not loaded on any machine).
	UnitState(ctx context.Context, name string) (*schema.UnitState, error)
	// SetUnitTargetState sets a unit's desired state: "inactive", "loaded"
	// or "launched".
	SetUnitTargetState(ctx context.Context, name, target string) error
}

// API is the subset of fleet's client.API that WrapAPI needs; client.API
// satisfies it.
type API interface {
	Units() ([]*schema.Unit, error)
	UnitState(string) (*schema.UnitState, error)
	SetUnitTargetState(name, target string) error
}

// WrapAPI adapts a context-free fleet client (such as client.API) to Fleet.
// The context is checked before each call; the call itself is bounded only by
// the client's own HTTP timeout. Prefer Connect, whose calls honour the context.
func WrapAPI(api API) Fleet { return apiFleet{func(context.Context) API { return api }} }

// apiFleet turns a per-call client.API into a Fleet.
type apiFleet struct {
	api func(ctx context.Context) API
}

func (f apiFleet) Units(ctx context.Context) ([]*schema.Unit, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return f.api(ctx).Units()
}

func (f apiFleet) UnitState(ctx context.Context, name string) (*schema.UnitState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// fleet's HTTP client answers (nil, nil) on 404.
	st, err := f.api(ctx).UnitState(name)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, fmt.Errorf("state of %s: %w", name, ErrNotFound)
	}
	return st, nil
}

func (f apiFleet) SetUnitTargetState(ctx context.Context, name, target string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := f.api(ctx).SetUnitTargetState(name, target)
	if isMissingUnit(err) {
		return fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	return err
}

// isMissingUnit recognises fleet's answers to a target state set on a unit it
// does not know: 404, or 409 "unit does not exist and options field empty".
func isMissingUnit(err error) bool {
	var gerr *googleapi.Error
	if !errors.As(err, &gerr) {
		return false
	}
	return gerr.Code == http.StatusNotFound ||
		(gerr.Code == http.StatusConflict && strings.Contains(gerr.Message, "does not exist"))
}

// DefaultEndpoint is fleetctl's default endpoint.
const DefaultEndpoint = "unix:///var/run/fleet.sock"

// Connect returns a Fleet that talks to the fleet HTTP API at endpoint
// (unix://PATH, http://HOST:PORT or https://HOST:PORT, as fleetctl accepts).
// Every request is bound to the caller's context and to requestTimeout.
func Connect(endpoint string, requestTimeout time.Duration) (Fleet, error) {
	ep, base, err := transportFor(endpoint)
	if err != nil {
		return nil, err
	}
	if requestTimeout <= 0 {
		return nil, fmt.Errorf("request timeout must be positive, got %s", requestTimeout)
	}
	return apiFleet{api: func(ctx context.Context) API {
		hc := &http.Client{
			Timeout:   requestTimeout,
			Transport: ctxTransport{ctx: ctx, base: base},
		}
		// NewHTTPClient only fails when given a nil *http.Client.
		api, _ := client.NewHTTPClient(hc, ep)
		return api
	}}, nil
}

// transportFor parses a fleetctl-style endpoint into the URL the fleet client
// addresses and a transport that reaches it.
func transportFor(endpoint string) (url.URL, http.RoundTripper, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return url.URL{}, nil, fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return url.URL{}, nil, fmt.Errorf("endpoint %q: missing host", endpoint)
		}
		return *u, tr, nil
	case "unix", "file":
		// "unix:///var/run/fleet.sock" has an empty host and the socket as
		// path; "unix://var/run/fleet.sock" puts "var" in the host.
		sock := u.Host + u.Path
		if sock == "" {
			return url.URL{}, nil, fmt.Errorf("endpoint %q: missing socket path", endpoint)
		}
		tr.Proxy = nil
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
		return url.URL{Scheme: "http", Host: "fleet.sock"}, tr, nil
	default:
		return url.URL{}, nil, fmt.Errorf("endpoint %q: unsupported scheme %q (want unix, http or https)", endpoint, u.Scheme)
	}
}

// ctxTransport binds every request it carries to one context.
type ctxTransport struct {
	ctx  context.Context
	base http.RoundTripper
}

func (t ctxTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return t.base.RoundTrip(r.WithContext(t.ctx))
}


package fleetroll

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/coreos/fleet/client"
	"github.com/coreos/fleet/machine"
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
	// UnitStates lists the states fleet publishes for all units, following
	// pagination (one request serves the polls of a batch).
	UnitStates(ctx context.Context) ([]*schema.UnitState, error)
	// SetUnitTargetState sets a unit's desired state: "inactive", "loaded"
	// or "launched".
	SetUnitTargetState(ctx context.Context, name, target string) error
	// MachineIPs maps the IDs of the machines fleet lists to their public
	// IPs (GET /machines only: fleet's metadata calls panic in its client).
	MachineIPs(ctx context.Context) (map[string]string, error)
	// TargetState returns the desired state fleet holds for a unit and the
	// state fleet's agent has brought it to (GET /units/NAME: desiredState,
	// currentState), or ErrNotFound.
	TargetState(ctx context.Context, name string) (desired, current string, err error)
	// CreateUnit submits a unit with its options and desired state
	// (fleetroll's own one-shot units: the pre-pull).
	CreateUnit(ctx context.Context, u *schema.Unit) error
	// DestroyUnit removes a unit from fleet; ErrNotFound when it is gone.
	DestroyUnit(ctx context.Context, name string) error
}

// API is the subset of fleet's client.API that WrapAPI needs; client.API
// satisfies it.
type API interface {
	Units() ([]*schema.Unit, error)
	UnitStates() ([]*schema.UnitState, error)
	SetUnitTargetState(name, target string) error
	Machines() ([]machine.MachineState, error)
	Unit(name string) (*schema.Unit, error)
	CreateUnit(u *schema.Unit) error
	DestroyUnit(name string) error
}

// WrapAPI adapts a context-free fleet client (such as client.API) to Fleet.
// The context is checked before each call; the call itself is bounded only by
// the client's own HTTP timeout. A unit's state is found in the full state
// list. Prefer Connect, whose calls honour the context.
func WrapAPI(api API) Fleet { return apiFleet{api} }

type apiFleet struct{ api API }

func (f apiFleet) Units(ctx context.Context) ([]*schema.Unit, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return f.api.Units()
}

func (f apiFleet) UnitState(ctx context.Context, name string) (*schema.UnitState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	states, err := f.api.UnitStates()
	if err != nil {
		return nil, err
	}
	return findState(states, name)
}

func (f apiFleet) UnitStates(ctx context.Context) ([]*schema.UnitState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return f.api.UnitStates()
}

func (f apiFleet) SetUnitTargetState(ctx context.Context, name, target string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return setTargetState(f.api, name, target)
}

func (f apiFleet) MachineIPs(ctx context.Context) (map[string]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return machineIPs(f.api)
}

func (f apiFleet) TargetState(ctx context.Context, name string) (string, string, error) {
	if err := ctx.Err(); err != nil {
		return "", "", err
	}
	return targetState(f.api, name)
}

func (f apiFleet) CreateUnit(ctx context.Context, u *schema.Unit) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return f.api.CreateUnit(u)
}

func (f apiFleet) DestroyUnit(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return destroyUnit(f.api, name)
}

func destroyUnit(api API, name string) error {
	if err := api.DestroyUnit(name); err != nil {
		if isMissingUnit(err) {
			return fmt.Errorf("%s: %w", name, ErrNotFound)
		}
		return fmt.Errorf("destroy %s: %w", name, err)
	}
	return nil
}

// targetState reads a unit's desired and current state; fleet's client
// answers (nil, nil) for a unit it does not know.
func targetState(api API, name string) (string, string, error) {
	u, err := api.Unit(name)
	if err != nil {
		return "", "", err
	}
	if u == nil {
		return "", "", fmt.Errorf("unit %s: %w", name, ErrNotFound)
	}
	return u.DesiredState, u.CurrentState, nil
}

func machineIPs(api API) (map[string]string, error) {
	ms, err := api.Machines()
	if err != nil {
		return nil, err
	}
	ips := make(map[string]string, len(ms))
	for _, m := range ms {
		ips[m.ID] = m.PublicIP
	}
	return ips, nil
}

func findState(states []*schema.UnitState, name string) (*schema.UnitState, error) {
	for _, st := range states {
		if st != nil && st.Name == name {
			return st, nil
		}
	}
	return nil, fmt.Errorf("state of %s: %w", name, ErrNotFound)
}

func setTargetState(api API, name, target string) error {
	err := api.SetUnitTargetState(name, target)
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
	return ConnectTLS(endpoint, requestTimeout, TLSFiles{})
}

// ConnectTLS is Connect with the certificate files of an https:// endpoint
// (fleetctl's --ca-file, --cert-file and --key-file). Files named for
// another scheme are refused rather than ignored.
func ConnectTLS(endpoint string, requestTimeout time.Duration, files TLSFiles) (Fleet, error) {
	ep, base, err := transportFor(endpoint)
	if err != nil {
		return nil, err
	}
	if !files.IsZero() {
		if ep.Scheme != "https" {
			return nil, fmt.Errorf("endpoint %q: TLS files are for an https:// endpoint", endpoint)
		}
		tc, err := files.Config()
		if err != nil {
			return nil, fmt.Errorf("endpoint %s: %w", endpoint, err)
		}
		base.TLSClientConfig = tc
	}
	if requestTimeout <= 0 {
		return nil, fmt.Errorf("request timeout must be positive, got %s", requestTimeout)
	}
	return &httpFleet{ep: ep, base: base, timeout: requestTimeout}, nil
}

// httpFleet talks to the fleet HTTP API. Each call gets an http.Client whose
// transport binds the request to the call's context.
type httpFleet struct {
	ep      url.URL
	base    http.RoundTripper
	timeout time.Duration
}

func (h *httpFleet) httpClient(ctx context.Context) *http.Client {
	return &http.Client{Timeout: h.timeout, Transport: ctxTransport{ctx: ctx, base: h.base}}
}

func (h *httpFleet) api(ctx context.Context) client.API {
	// NewHTTPClient fails only when schema.New is given a nil client.
	api, _ := client.NewHTTPClient(h.httpClient(ctx), h.ep)
	return api
}

func (h *httpFleet) Units(ctx context.Context) ([]*schema.Unit, error) {
	return h.api(ctx).Units()
}

// UnitState asks for the one unit's state through the state list filtered by
// unit name. fleet v1.0.0's GET /state/NAME panics in the server (and drops
// the connection) when the unit has no state; the list answers empty.
func (h *httpFleet) UnitState(ctx context.Context, name string) (*schema.UnitState, error) {
	svc, err := schema.New(h.httpClient(ctx))
	if err != nil {
		return nil, err
	}
	ep := h.ep
	ep.Path = path.Join(ep.Path, "fleet", "v1") + "/"
	svc.BasePath = ep.String()
	page, err := svc.UnitState.List().UnitName(name).Do()
	if err != nil {
		return nil, err
	}
	return findState(page.States, name)
}

func (h *httpFleet) UnitStates(ctx context.Context) ([]*schema.UnitState, error) {
	return h.api(ctx).UnitStates()
}

func (h *httpFleet) MachineIPs(ctx context.Context) (map[string]string, error) {
	return machineIPs(h.api(ctx))
}

func (h *httpFleet) TargetState(ctx context.Context, name string) (string, string, error) {
	return targetState(h.api(ctx), name)
}

func (h *httpFleet) CreateUnit(ctx context.Context, u *schema.Unit) error {
	if err := h.api(ctx).CreateUnit(u); err != nil {
		return fmt.Errorf("create %s: %w", u.Name, err)
	}
	return nil
}

func (h *httpFleet) DestroyUnit(ctx context.Context, name string) error {
	return destroyUnit(h.api(ctx), name)
}

func (h *httpFleet) SetUnitTargetState(ctx context.Context, name, target string) error {
	return setTargetState(h.api(ctx), name, target)
}

// transportFor parses a fleetctl-style endpoint into the URL the fleet client
// addresses and a transport that reaches it.
func transportFor(endpoint string) (url.URL, *http.Transport, error) {
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

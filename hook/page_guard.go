package hook

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// hstsValue is what a page served over TLS sends in
// Strict-Transport-Security: a year, the page's host alone.
const hstsValue = "max-age=31536000"

// pageHosts are the hosts the status page answers to (docs/serve.md,
// "Status page"): a request naming another one in Host is refused, which
// defeats DNS rebinding (a page of evil.example that resolves evil.example
// to this receiver, then reads it from the victim's browser).
type pageHosts struct {
	public string     // the host of the public URL, lower case; "" without one
	https  bool       // the public URL is https
	listen netip.Addr // the main listener's IP, when it names one
}

// newPageHosts reads the public URL (http or https, with a host) and the
// listen address (host:port; its host counts only as an IP address).
func newPageHosts(publicURL, listen string) (pageHosts, error) {
	var h pageHosts
	if publicURL != "" {
		u, err := url.Parse(publicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil ||
			u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(publicURL, "#") {
			return h, fmt.Errorf("public URL %q: want http:// or https://, a host and at most a port and a path", publicURL)
		}
		h.public, h.https = normalHost(u.Hostname()), u.Scheme == "https"
	}
	if host, _, err := net.SplitHostPort(listen); err == nil {
		if a, err := netip.ParseAddr(host); err == nil && !a.IsUnspecified() {
			h.listen = a.Unmap()
		}
	}
	return h, nil
}

// normalHost is a host as compared: lower case, without a trailing dot.
func normalHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// hostOf is the host of a Host header (or an Origin's host[:port]),
// without its port and, for an IPv6 address, its brackets.
func hostOf(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return normalHost(h)
	}
	return normalHost(strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"))
}

// allows says whether the page answers to host (as hostOf gives it):
// loopback names and addresses, the listener's IP, the public URL's host;
// without a public URL, any IP address too (rebinding needs a DNS name).
func (p pageHosts) allows(host string) bool {
	switch {
	case host == "":
		return false
	case host == "localhost" || host == p.public:
		return true
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false // a DNS name that is not the public URL's
	}
	a = a.Unmap()
	return a.IsLoopback() || p.public == "" || a.WithZone("") == p.listen
}

// pageRefusal says why a request of the page (its HTML, its assets, its
// data, its stream and its actions) is refused, or 0: its Host must be one
// the page answers to (421), and an action's Origin, when the browser sends
// one, the page's own: the host of the request, or of the public URL (403).
func (s *Server) pageRefusal(r *http.Request) (int, string) {
	host := hostOf(r.Host)
	if !s.pageHosts.allows(host) {
		where := "by an IP address or localhost, or set --public-url"
		if s.pageHosts.public != "" {
			where = "at " + s.opt.PublicURL
		}
		return http.StatusMisdirectedRequest, fmt.Sprintf("the status page does not answer to host %q (a defense against DNS rebinding): open it %s", clip(host, 100), where)
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return 0, ""
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return 0, "" // not sent: the CSRF token and SameSite=Strict stand
	}
	if u, err := url.Parse(origin); err == nil && u.Host != "" {
		if oh := hostOf(u.Host); oh == host || (s.pageHosts.public != "" && oh == s.pageHosts.public) {
			return 0, ""
		}
	}
	return http.StatusForbidden, fmt.Sprintf("cross-origin request refused: Origin %q is not this page's", clip(origin, 100))
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// overTLS says whether the page reaches its client over TLS: this
// listener's, or, from a trusted proxy that sends X-Forwarded-Proto, what
// the proxy says (its first value: the hop next to the client); without
// that header, whether the public URL is https. The session cookie is
// Secure, and HSTS is sent, in those cases alone.
func (s *Server) overTLS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil && inAny(ap.Addr().Unmap(), s.opt.TrustedProxies) {
		if v := r.Header.Values("X-Forwarded-Proto"); len(v) > 0 {
			first, _, _ := strings.Cut(v[0], ",")
			return strings.EqualFold(strings.TrimSpace(first), "https")
		}
	}
	return s.pageHosts.https
}

// pageGuard wraps each handler of the page: HSTS over TLS, and the Host
// and Origin checks of pageRefusal.
func (s *Server) pageGuard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.overTLS(r) {
			w.Header().Set("Strict-Transport-Security", hstsValue)
		}
		if code, msg := s.pageRefusal(r); code != 0 {
			info(r).log.Warn("request refused", "sender", "ui", "status", code, "reason", msg)
			c, body := problem(code, msg)
			writeJSON(w, c, withID(body, info(r).id))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// withAPIToken serves next only to a request with the API token (the
// failures throttled as every other secret's): /metrics on the main
// listener, which is public.
func (s *Server) withAPIToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, body, ok := s.authorize(r, func() (int, any, bool) { return bearer(r, s.secretsNow().API) })
		if !ok {
			s.hook("api", func(*http.Request) (int, any) { return code, body })(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

package hook

import (
	"net"
	"net/netip"
	"sync"
)

// Bounds of the connections the main listener holds open.
const (
	DefaultMaxConns          = 1024
	DefaultMaxConnsPerClient = 32
)

// LimitListener bounds the connections l holds open: at most perClient
// from one client address (a trusted proxy, which carries many clients, is
// held to total alone) and total in all. A connection past a bound is
// closed as it is accepted, before anything is read from it: a sender
// cannot make the receiver hold more connections (each a goroutine and its
// buffers) than these, however many it opens.
func LimitListener(l net.Listener, total, perClient int, proxies []netip.Prefix) net.Listener {
	return &limitListener{Listener: l, total: max(total, 1), perClient: max(perClient, 1), proxies: proxies, byAddr: map[netip.Addr]int{}}
}

type limitListener struct {
	net.Listener
	total, perClient int
	proxies          []netip.Prefix

	mu     sync.Mutex
	open   int
	byAddr map[netip.Addr]int // at most total entries: one per open connection's address
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		var addr netip.Addr
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			addr = ap.Addr().Unmap()
		}
		if l.take(addr) {
			lc := &limitConn{Conn: c}
			lc.release = sync.OnceFunc(func() { l.give(addr) })
			return lc, nil
		}
		_ = c.Close()
	}
}

func (l *limitListener) take(addr netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open >= l.total || (!inAny(addr, l.proxies) && l.byAddr[addr] >= l.perClient) {
		return false
	}
	l.open++
	l.byAddr[addr]++
	return true
}

func (l *limitListener) give(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byAddr[addr]--; l.byAddr[addr] <= 0 {
		delete(l.byAddr, addr)
	}
}

// limitConn gives its slot back when it is closed (once).
type limitConn struct {
	net.Conn
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

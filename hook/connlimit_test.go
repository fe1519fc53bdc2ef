package hook

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// The listener holds at most perClient connections from one address (a
// trusted proxy: total alone) and total in all; past a bound a connection
// is closed at once, and a slot is given back when a connection closes.
func TestListenerBoundsConnections(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := LimitListener(raw, 3, 2, []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")})
	defer ln.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closed reports whether the receiver closed c (read: EOF or reset).
	closed := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		return err != nil && !(errors.As(err, &ne) && ne.Timeout()) || errors.Is(err, io.EOF)
	}
	a1, _ := dial("127.0.0.2"), dial("127.0.0.2")
	server1, server2 := <-accepted, <-accepted
	if over := dial("127.0.0.2"); !closed(over) {
		t.Fatal("a third connection from one client was held")
	}
	// Another client has room until the total is reached.
	dial("127.0.0.3")
	<-accepted
	if over := dial("127.0.0.4"); !closed(over) {
		t.Fatal("a connection past the total was held")
	}
	// A closed connection gives its slot back.
	server1.Close()
	a1.Close()
	dial("127.0.0.2")
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the slot of a closed connection was not given back")
	}
	server2.Close()
	// A trusted proxy is held to the total alone.
	raw2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln2 := LimitListener(raw2, 10, 1, []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")})
	defer ln2.Close()
	for range 3 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}}
		c, err := d.Dial("tcp", raw2.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got, err := ln2.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer got.Close()
	}
}

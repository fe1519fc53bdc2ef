package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/hook"
)

// Issue 22, item 11: both of serve's listeners, --metrics-listen's too,
// close an idle keep-alive connection and a client that never finishes its
// headers; the defaults set every timeout.
func TestServeListenersCloseIdleAndSlowConnections(t *testing.T) {
	for name, d := range map[string]time.Duration{"read header": defaultHTTPTimeouts.readHeader, "read": defaultHTTPTimeouts.read,
		"write": defaultHTTPTimeouts.write, "idle": defaultHTTPTimeouts.idle} {
		if d <= 0 {
			t.Errorf("default %s timeout: %s", name, d)
		}
	}
	fleet, _ := fleetroll.Connect("http://127.0.0.1:1", time.Second)
	cfg, _ := hook.ParseConfig([]byte("services: [{name: a}]"), testBase())
	srv, err := hook.New(hook.Options{Fleet: fleet, Config: cfg, Secrets: hook.Secrets{API: token}, SeparateOps: true})
	if err != nil {
		t.Fatal(err)
	}
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	ln, ops := listen(), listen()
	o := &serveOptions{shutdownTimeout: time.Minute,
		timeouts: httpTimeouts{readHeader: 300 * time.Millisecond, read: time.Second, write: time.Second, idle: 300 * time.Millisecond}}
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan error, 1)
	go func() { returned <- runServer(ctx, o, srv, ln, ops, slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		if err := <-returned; err != nil {
			t.Error(err)
		}
	}()

	// closedWithin says whether the server closes conn within d.
	closedWithin := func(conn net.Conn, r *bufio.Reader, d time.Duration) bool {
		_ = conn.SetReadDeadline(time.Now().Add(d))
		_, err := r.ReadByte()
		var ne net.Error
		return errors.Is(err, io.EOF) || (err != nil && !(errors.As(err, &ne) && ne.Timeout()))
	}
	for what, addr := range map[string]string{"--listen": ln.Addr().String(), "--metrics-listen": ops.Addr().String()} {
		path := "/livez" // on --metrics-listen (fleet is not there: /healthz is 503); the status page on --listen
		if what == "--listen" {
			path = "/"
		}
		// Idle after an answer, keep-alive.
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(conn)
		if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Close {
			t.Fatalf("%s: %s %d (close %v)", what, path, resp.StatusCode, resp.Close)
		}
		if !closedWithin(conn, r, 5*time.Second) {
			t.Errorf("%s: an idle keep-alive connection was not closed", what)
		}
		conn.Close()
		// Headers never finished.
		conn, err = net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
		r = bufio.NewReader(conn)
		if !closedWithin(conn, r, 5*time.Second) {
			t.Errorf("%s: a client that never finished its headers was not cut off", what)
		}
		conn.Close()
	}
}

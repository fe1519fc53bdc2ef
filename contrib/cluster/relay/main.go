// Command relay forwards stream connections between a TCP address and a
// unix socket. The multi-machine local cluster uses it to join network
// namespaces without addresses outside them: etcd on the host's loopback is
// offered as a unix socket, and inside each machine's namespace that socket
// is offered again on 127.0.0.1, where fleetd and the units expect etcd.
//
//	relay -listen unix:/tmp/c/etcd.sock -to tcp:127.0.0.1:2379
//	relay -listen tcp:127.0.0.1:2379 -to unix:/tmp/c/etcd.sock
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}

// addr splits "tcp:HOST:PORT" or "unix:PATH".
func addr(s string) (network, address string, err error) {
	network, address, ok := strings.Cut(s, ":")
	if !ok || (network != "tcp" && network != "unix") || address == "" {
		return "", "", fmt.Errorf("%q: want tcp:HOST:PORT or unix:PATH", s)
	}
	return network, address, nil
}

func run() error {
	listen := flag.String("listen", "", "where to accept: tcp:HOST:PORT or unix:PATH")
	to := flag.String("to", "", "where to connect: tcp:HOST:PORT or unix:PATH")
	dialTimeout := flag.Duration("dial-timeout", 5*time.Second, "timeout of each connection to -to")
	flag.Parse()
	ln, la, err := addr(*listen)
	if err != nil {
		return fmt.Errorf("-listen %w", err)
	}
	tn, ta, err := addr(*to)
	if err != nil {
		return fmt.Errorf("-to %w", err)
	}
	if ln == "unix" {
		_ = os.Remove(la) // a stale socket of an earlier run
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	l, err := (&net.ListenConfig{}).Listen(ctx, ln, la)
	if err != nil {
		return err
	}
	if ln == "unix" {
		if err := os.Chmod(la, 0o666); err != nil {
			return err
		}
	}
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pipe(ctx, c, tn, ta, *dialTimeout)
		}()
	}
}

// pipe copies both ways until both sides have finished, or ctx ends.
func pipe(ctx context.Context, c net.Conn, network, address string, timeout time.Duration) {
	defer c.Close()
	dctx, cancel := context.WithTimeout(ctx, timeout)
	u, err := (&net.Dialer{}).DialContext(dctx, network, address)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "relay: dial %s:%s: %v\n", network, address, err)
		return
	}
	defer u.Close()
	stop := context.AfterFunc(ctx, func() { c.Close(); u.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	half := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}
	go half(u, c)
	go half(c, u)
	<-done
	<-done
}

// Command fleetd runs fleet v1.0.0's own server (agent, engine and HTTP API)
// for the local development cluster. fleet's upstream fleetd main imports a
// configuration package that the module proxy no longer serves, so this small
// main fills config.Config from flags and calls server.New directly.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/fleet/config"
	"github.com/coreos/fleet/log"
	"github.com/coreos/fleet/server"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "fleetd:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		etcd      = flag.String("etcd-servers", "http://127.0.0.1:2379", "comma-separated etcd v2 endpoints")
		prefix    = flag.String("etcd-key-prefix", "/_coreos.com/fleet/", "etcd key prefix")
		listen    = flag.String("listen", "127.0.0.1:49153", "TCP address of the fleet HTTP API (empty: none)")
		sock      = flag.String("socket", "", "unix socket path of the fleet HTTP API (empty: none)")
		unitsDir  = flag.String("units-dir", "", "directory where the agent writes unit files (required)")
		publicIP  = flag.String("public-ip", "127.0.0.1", "the machine's public IP as reported to fleet")
		metadata  = flag.String("metadata", "", "machine metadata, key=value,...")
		agentTTL  = flag.String("agent-ttl", "30s", "agent TTL")
		reconcile = flag.Float64("engine-reconcile-interval", 2.0, "engine reconcile interval in seconds")
		verbosity = flag.Int("v", 0, "log verbosity")
		debug     = flag.Bool("debug", false, "fleet's debug log, every line stamped to the microsecond (to study fleet's latency)")
	)
	flag.Parse()
	if *unitsDir == "" {
		return fmt.Errorf("-units-dir is required")
	}
	var listeners []net.Listener
	if *listen != "" {
		l, err := net.Listen("tcp", *listen)
		if err != nil {
			return fmt.Errorf("listen %s: %w", *listen, err)
		}
		listeners = append(listeners, l)
	}
	if *sock != "" {
		_ = os.Remove(*sock)
		l, err := net.Listen("unix", *sock)
		if err != nil {
			return fmt.Errorf("listen unix %s: %w", *sock, err)
		}
		// As fleet.socket on CoreOS (systemd's default SocketMode=0666), so
		// that a non-root container (fleetroll's image) can connect.
		if err := os.Chmod(*sock, 0o666); err != nil {
			return fmt.Errorf("chmod %s: %w", *sock, err)
		}
		listeners = append(listeners, l)
	}
	if *debug {
		if err := stampStderr(); err != nil {
			return err
		}
		log.EnableDebug()
	}
	cfg := config.Config{
		EtcdServers:             strings.Split(*etcd, ","),
		EtcdKeyPrefix:           *prefix,
		EtcdRequestTimeout:      1.0,
		EngineReconcileInterval: *reconcile,
		PublicIP:                *publicIP,
		RawMetadata:             *metadata,
		AgentTTL:                *agentTTL,
		TokenLimit:              100,
		UnitsDirectory:          *unitsDir,
		SystemdUser:             true,
		Verbosity:               *verbosity,
	}
	srv, err := server.New(cfg, listeners)
	if err != nil {
		return fmt.Errorf("create fleet server: %w", err)
	}
	srv.Run()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	srv.Kill()
	return nil
}

// stampStderr sends fd 2 (where fleet's logger writes, second-resolution at
// best) through a pipe that prefixes every line with the time to the
// microsecond, then on to the original stderr.
func stampStderr() error {
	orig, err := syscall.Dup(2)
	if err != nil {
		return fmt.Errorf("dup stderr: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	if err := syscall.Dup2(int(w.Fd()), 2); err != nil {
		return fmt.Errorf("redirect stderr: %w", err)
	}
	out := os.NewFile(uintptr(orig), "stderr")
	go func() {
		// Lines of any length: a line is stamped where it begins and
		// copied in pieces. (A bufio.Scanner stops at a line over 64 KiB,
		// fleet's debug log of the tasks of many units, and the pipe's
		// end closed with it would kill fleetd with SIGPIPE at its next
		// line.) The write end is never closed: the copy runs as long as
		// fleetd.
		br := bufio.NewReaderSize(r, 64<<10)
		begins := true
		for {
			piece, err := br.ReadSlice('\n')
			if len(piece) > 0 {
				if begins {
					fmt.Fprintf(out, "%s ", time.Now().UTC().Format("15:04:05.000000"))
				}
				_, _ = out.Write(piece)
				begins = piece[len(piece)-1] == '\n'
			}
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				return
			}
		}
	}()
	return nil
}

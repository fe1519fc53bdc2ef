// Command my-service is the demo service of the local cluster: it listens on
// the port it is given and answers / with its version, PID and start time.
// On SIGTERM it stops accepting, finishes requests in flight and exits 0.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// defaultVersion is stamped into demo images with -ldflags.
var defaultVersion = "dev"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "my-service:", err)
		os.Exit(1)
	}
}

func run() error {
	port := flag.Int("port", 0, "port to listen on (required)")
	addr := flag.String("addr", "", "address to listen on (default: all)")
	version := flag.String("version", "", "version to report (default: the one stamped at build)")
	versionFile := flag.String("version-file", "", "read the version from this file at start (stands in for pulling the newest image)")
	drain := flag.Duration("shutdown-timeout", 10*time.Second, "how long requests in flight may take after SIGTERM; 0: exit at once, cutting them (as many services do)")
	warmup := flag.Duration("warmup", 0, "answer 503 for this long after the start, as a service that is up but not ready")
	failHealth := flag.Bool("fail-health", false, "answer 500 on /healthz: a release that runs but is broken (tests of the health gate and rollback)")
	failHealthAfter := flag.Duration("fail-health-after", 0, "answer 500 on /healthz from this long after the start: a release that falls ill once running (tests of the canary wait)")
	failHealthFile := flag.String("fail-health-file", "", "answer 500 on /healthz while this file exists: an instance that falls ill after its start (tests of the canary wait)")
	exitAfter := flag.Duration("exit-after", 0, "exit with status 1 this long after the start: a release that crashes once running (tests and benchmarks of the watch after the start)")
	flag.Parse()
	if *port <= 0 || *port > 65535 {
		return fmt.Errorf("-port: want 1-65535, got %d", *port)
	}
	v := *version
	if *versionFile != "" {
		b, err := os.ReadFile(*versionFile)
		if err != nil {
			return fmt.Errorf("read version: %w", err)
		}
		v = strings.TrimSpace(string(b))
	}
	if v == "" {
		v = defaultVersion
	}
	started := time.Now().UTC()
	host, _ := os.Hostname()
	info := map[string]any{"version": v, "pid": os.Getpid(), "host": host, "started": started.Format(time.RFC3339Nano), "port": *port}

	mux := http.NewServeMux()
	ready := func(w http.ResponseWriter) bool {
		if time.Since(started) < *warmup {
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return false
		}
		return true
	}
	// GET or POST (a load test's requests that no proxy may replay).
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			w.Header().Set("Allow", "GET, POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if !ready(w) {
			return
		}
		// /?sleep=500ms makes a slow request, for load tests.
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil && d > 0 && d <= time.Minute {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(info)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !ready(w) {
			return
		}
		if *failHealth {
			http.Error(w, "broken on purpose (-fail-health)", http.StatusInternalServerError)
			return
		}
		if *failHealthAfter > 0 && time.Since(started) >= *failHealthAfter {
			http.Error(w, "ill on purpose (-fail-health-after)", http.StatusInternalServerError)
			return
		}
		if *failHealthFile != "" {
			if _, err := os.Stat(*failHealthFile); err == nil {
				http.Error(w, "ill on purpose ("+*failHealthFile+" exists)", http.StatusInternalServerError)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})

	l, err := net.Listen("tcp", net.JoinHostPort(*addr, strconv.Itoa(*port)))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	slog.Info("serving", "port", *port, "version", v, "pid", os.Getpid())

	var crash <-chan time.Time
	if *exitAfter > 0 {
		crash = time.After(*exitAfter)
	}
	select {
	case err := <-errc:
		return err
	case <-crash:
		// The time of the crash, for the benchmark that judges how soon
		// it is seen.
		return fmt.Errorf("crashing on purpose (-exit-after %s) at %s", *exitAfter, time.Now().UTC().Format(time.RFC3339Nano))
	case <-ctx.Done():
	}
	if *drain == 0 {
		slog.Info("SIGTERM: exiting at once, cutting requests in flight", "port", *port)
		return srv.Close()
	}
	slog.Info("SIGTERM: finishing requests in flight", "port", *port)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), *drain)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Command hook measures fleetroll serve under a burst of webhooks: it starts
// the real binary against an in-memory fleet API, sends N Docker Hub pushes
// (each a different push) with C in flight, and prints the answer latency
// percentiles, the status codes, how many rollouts ran, and the server's
// peak RSS (VmHWM).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/internal/cluster"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	repo := flag.String("repo", ".", "repository root")
	n := flag.Int("n", 2000, "requests")
	conc := flag.Int("c", 50, "requests in flight")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	tmp, err := os.MkdirTemp("", "fleetroll-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "fleetroll")
	if err := cluster.BuildFleetroll(ctx, *repo, bin); err != nil {
		return err
	}
	fixture, err := os.ReadFile(filepath.Join(*repo, "hook", "testdata", "dockerhub-push.json"))
	if err != nil {
		return err
	}
	var payload map[string]any
	if err := json.Unmarshal(fixture, &payload); err != nil {
		return err
	}
	delete(payload, "callback_url") // no callbacks leave this machine

	ff := fakefleet.New("my-service@8901.service", "my-service@8902.service", "my-service@8903.service")
	fleetSrv := httptest.NewServer(ff)
	defer fleetSrv.Close()
	// The API token and the Docker Hub URL token: one secret each.
	const token, hubToken = "bench-token-0123456789abcdef", "bench-dockerhub-token-0123456789"
	tokenFile, hubFile := filepath.Join(tmp, "token"), filepath.Join(tmp, "dockerhub-token")
	for f, v := range map[string]string{tokenFile: token, hubFile: hubToken} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, bin, "serve", "--listen", "127.0.0.1:0", "--endpoint", fleetSrv.URL,
		"--service", "my-service", "--ports", "8901-8903", "--repository", "demo/my-service",
		"--token-file", tokenFile, "--dockerhub-token-file", hubFile, "--grace", "0s", "--poll-interval", "5ms", "--quiet-period", "0s",
		"--callback-allow", "http://127.0.0.1:1", "--log-format", "json")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
	// The first log line says where it listens; the rest is drained.
	sc := bufio.NewScanner(stderr)
	var addr string
	for addr == "" && sc.Scan() {
		var l struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "listening" {
			addr = l.Addr
		}
	}
	if addr == "" {
		return errors.New("the server never listened")
	}
	go func() {
		for sc.Scan() {
			if os.Getenv("BENCH_DEBUG") != "" && !bytes.Contains(sc.Bytes(), []byte(`"level":"INFO"`)) {
				fmt.Fprintln(os.Stderr, sc.Text())
			}
		}
	}()
	url := "http://" + addr + "/webhooks/dockerhub/" + hubToken
	idle, _ := vmKB(cmd.Process.Pid, "VmRSS")

	bodies := make([][]byte, *n)
	for i := range bodies {
		payload["push_data"].(map[string]any)["pushed_at"] = 1795835368 + i
		bodies[i], _ = json.Marshal(payload)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: *conc}}
	lat := make([]time.Duration, *n)
	codes := map[int]int{}
	errSamples := map[string]int{}
	var mu sync.Mutex
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				t0 := time.Now()
				req, _ := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(bodies[i]))
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				code := -1
				if err != nil {
					mu.Lock()
					errSamples[err.Error()]++
					if os.Getenv("BENCH_DEBUG") != "" {
						fmt.Fprintf(os.Stderr, "fail #%d at %s after %s\n", i, time.Since(start).Round(time.Millisecond), time.Since(t0).Round(time.Microsecond))
					}
					mu.Unlock()
				} else {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				}
				lat[i] = time.Since(t0)
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}
		}()
	}
	for i := range *n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	wall := time.Since(start)
	peak, err := vmKB(cmd.Process.Pid, "VmHWM")
	if err != nil {
		return err
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[int(float64(len(lat)-1)*p)].Round(time.Microsecond) }
	restarts := 0
	for _, u := range []string{"my-service@8901.service", "my-service@8902.service", "my-service@8903.service"} {
		unit, _ := ff.Unit(u)
		restarts = max(restarts, unit.Restarts)
	}
	fmt.Printf("webhook burst: %d Docker Hub pushes, %d in flight, against fleetroll serve (in-memory fleet API)\n", *n, *conc)
	fmt.Printf("answers: %v in %s (%.0f req/s)\n", codes, wall.Round(time.Millisecond), float64(*n)/wall.Seconds())
	fmt.Printf("latency: p50 %s  p90 %s  p99 %s  max %s\n", pct(0.50), pct(0.90), pct(0.99), lat[len(lat)-1].Round(time.Microsecond))
	fmt.Printf("server RSS: idle %.1f MiB, peak %.1f MiB\n", float64(idle)/1024, float64(peak)/1024)
	fmt.Printf("rollouts that restarted units so far: %d (the burst coalesces)\n", restarts)
	if codes[202] != *n {
		return fmt.Errorf("not every request was accepted: %v", errSamples)
	}
	return nil
}

func vmKB(pid int, field string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			var kb int
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

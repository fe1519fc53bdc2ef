// Command hostile attacks fleetroll serve, with its queue in etcd, on a
// one-machine cluster of its own, and prints what each attack got and what
// it cost: the receiver alive or not, its peak RSS and goroutines, etcd's
// keys and largest value before and after, and how long an honest push sent
// at the flood's end took to start its rollout.
//
// Each attack comes from its own loopback address, all at once:
//
//	127.0.0.2  a flood of distinct Docker Hub pushes (the URL token is known:
//	           it sits in Docker Hub's and every proxy's logs), 8 connections
//	127.0.0.3  pushes with 900 KB fields (pusher, tag, callback_url)
//	127.0.0.4  event streams, from a --view-from network (no login needed)
//	127.0.0.5  wrong login tokens
//	127.0.0.6  the honest push, sent when the flood ends
//	127.0.0.8  idle connections, opened and held (slowloris)
//
// It exits 1 when a goal is missed (each goal is printed with its figure).
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
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fleetroll/fleetroll/internal/cluster"
)

const (
	service  = "hostile"
	port     = "18801"
	token    = "bench-api-token-0123456789abcdef"
	hubToken = "bench-dockerhub-token-0123456789"
	quiet    = 2 * time.Second
)

// serveLog is where the receiver's whole log is written.
var serveLog string

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	repo := flag.String("repo", ".", "repository root")
	dir := flag.String("dir", "/tmp/fleetroll-bench-hostile", "the benchmark cluster's state directory")
	pushes := flag.Int("pushes", 20000, "distinct pushes in the flood")
	big := flag.Int("big", 100, "pushes with 900 KB fields")
	streams := flag.Int("streams", 4000, "event streams opened")
	logins := flag.Int("logins", 20000, "wrong login tokens")
	idle := flag.Int("idle", 2000, "idle connections opened and held")
	keep := flag.Bool("keep", false, "leave the cluster running")
	flag.StringVar(&serveLog, "log", "/tmp/fleetroll-bench-hostile-serve.log", "where serve's log goes")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	fmt.Fprintf(os.Stderr, "bench: starting a one-machine cluster in %s\n", *dir)
	cl, err := cluster.Up(ctx, cluster.Config{Repo: *repo, Dir: *dir, EtcdPort: 24579, FleetPort: 49293, Fresh: true})
	if err != nil {
		return err
	}
	if !*keep {
		defer func() {
			dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer dcancel()
			if err := cl.Down(dctx); err != nil {
				fmt.Fprintln(os.Stderr, "bench: cluster down:", err)
			}
		}()
	}
	if _, err := cl.LaunchDemo(ctx, service, port); err != nil {
		return err
	}

	tmp, err := os.MkdirTemp("", "fleetroll-hostile")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "fleetroll")
	if err := cluster.BuildFleetroll(ctx, *repo, bin); err != nil {
		return err
	}
	tokenFile, hubFile := filepath.Join(tmp, "token"), filepath.Join(tmp, "dockerhub-token")
	for f, v := range map[string]string{tokenFile: token, hubFile: hubToken} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			return err
		}
	}
	fixture, err := os.ReadFile(filepath.Join(*repo, "hook", "testdata", "dockerhub-push.json"))
	if err != nil {
		return err
	}

	before, err := etcdKeys(ctx, cl.EtcdURL)
	if err != nil {
		return err
	}
	srv, err := startServe(ctx, bin, cl, tokenFile, hubFile)
	if err != nil {
		return err
	}
	defer srv.stop()

	// What the receiver costs, sampled until the end.
	var peakGoroutines atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	var sampling sync.WaitGroup
	sampling.Add(1)
	go func() {
		defer sampling.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if g, err := srv.goroutines(sampleCtx); err == nil && int64(g) > peakGoroutines.Load() {
				peakGoroutines.Store(int64(g))
			}
			select {
			case <-sampleCtx.Done():
				return
			case <-tick.C:
			}
		}
	}()

	hook := srv.base + "/webhooks/dockerhub/" + hubToken
	var (
		wg                      sync.WaitGroup
		flood, fat, open, login codes
		floodEnd                time.Time
		streamsHeld             []io.Closer
	)
	var idleHeld, idleClosed atomic.Int64
	var idleConns []net.Conn
	wg.Add(5)
	go func() { // idle connections: how many does the receiver hold?
		defer wg.Done()
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.8")}, Timeout: 5 * time.Second}
		var mu sync.Mutex
		parallel(32, *idle, func(int) {
			c, err := d.DialContext(ctx, "tcp", strings.TrimPrefix(srv.base, "http://"))
			if err != nil {
				idleClosed.Add(1)
				return
			}
			mu.Lock()
			idleConns = append(idleConns, c)
			mu.Unlock()
		})
		parallel(64, len(idleConns), func(i int) {
			c := idleConns[i]
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			_, err := c.Read(make([]byte, 1))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				idleHeld.Add(1)
			} else {
				idleClosed.Add(1)
			}
		})
	}()
	go func() { // the flood
		defer wg.Done()
		c := from("127.0.0.2", 8)
		t0 := time.Now()
		parallel(8, *pushes, func(i int) {
			flood.add(postJSON(ctx, c, hook, push(fixture, 1_000_000+i, nil)))
		})
		floodEnd = time.Now()
		fmt.Fprintf(os.Stderr, "bench: flood of %d pushes sent in %s: %s\n", *pushes, floodEnd.Sub(t0).Round(time.Millisecond), &flood)
	}()
	go func() { // fat fields
		defer wg.Done()
		c := from("127.0.0.3", 4)
		fields := []string{"pusher", "tag", "callback_url"}
		parallel(4, *big, func(i int) {
			huge := strings.Repeat("x", 900<<10)
			if fields[i%3] == "callback_url" {
				huge = "https://registry.hub.docker.com/u/" + huge
			}
			fat.add(postJSON(ctx, c, hook, push(fixture, 2_000_000+i, map[string]string{fields[i%3]: huge})))
		})
	}()
	go func() { // event streams, held open
		defer wg.Done()
		c := from("127.0.0.4", 0)
		var mu sync.Mutex
		parallel(64, *streams, func(int) {
			req, _ := http.NewRequestWithContext(ctx, "GET", srv.base+"/events", nil)
			resp, err := c.Do(req)
			if err != nil {
				open.add(-1, err)
				return
			}
			open.add(resp.StatusCode, nil)
			if resp.StatusCode == http.StatusOK {
				mu.Lock()
				streamsHeld = append(streamsHeld, resp.Body)
				mu.Unlock()
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}()
	var loginStart, loginEnd time.Time
	go func() { // wrong logins
		defer wg.Done()
		c := from("127.0.0.5", 8)
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		loginStart = time.Now()
		parallel(8, *logins, func(i int) {
			form := url.Values{"token": {fmt.Sprintf("wrong-token-%d", i)}}
			req, _ := http.NewRequestWithContext(ctx, "POST", srv.base+"/login", strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			login.add(do(c, req))
		})
		loginEnd = time.Now()
	}()

	// The honest push, from another address, as soon as the flood ends.
	honestCode, honestID, honestSent, honestAnswer := 0, "", time.Time{}, time.Duration(0)
	for floodDone := false; !floodDone; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
			floodDone = flood.total() == *pushes
		}
	}
	atFloodEnd, err := etcdKeys(ctx, cl.EtcdURL)
	if err != nil {
		return err
	}
	{
		c := from("127.0.0.6", 1)
		honestSent = time.Now()
		req, _ := http.NewRequestWithContext(ctx, "POST", hook, bytes.NewReader(push(fixture, 3_000_000, nil)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			return fmt.Errorf("the honest push: %w", err)
		}
		var a struct {
			ID string `json:"id"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&a)
		resp.Body.Close()
		honestCode, honestID, honestAnswer = resp.StatusCode, a.ID, time.Since(honestSent)
	}
	wg.Wait()
	started, status, err := srv.startedAt(ctx, honestID)
	if err != nil {
		return fmt.Errorf("the honest push (answered %d) rollout %q: %w", honestCode, honestID, err)
	}
	final, err := srv.finished(ctx, honestID)
	if err != nil {
		return fmt.Errorf("the honest push's rollout %s: %w", honestID, err)
	}
	alive := srv.alive()
	listCode := srv.list(ctx)
	stopSampling()
	sampling.Wait()
	peakRSS, _ := vmKB(srv.cmd.Process.Pid, "VmHWM")
	for _, b := range streamsHeld {
		b.Close()
	}
	for _, c := range idleConns {
		c.Close()
	}
	after, err := etcdKeys(ctx, cl.EtcdURL)
	if err != nil {
		return err
	}

	// The report.
	startDelay := started.Sub(floodEnd)
	loginSecs := loginEnd.Sub(loginStart).Seconds()
	loginPassed := login.total() - login.of(http.StatusTooManyRequests)
	fmt.Printf("hostile load against fleetroll serve (queue in etcd, --lock wait), one-machine cluster, quiet period %s\n", quiet)
	fmt.Printf("  flood    127.0.0.2  %6d distinct pushes, 8 connections: %s\n", *pushes, &flood)
	fmt.Printf("  fat      127.0.0.3  %6d pushes with a 900 KB field:     %s\n", *big, &fat)
	fmt.Printf("  streams  127.0.0.4  %6d event streams (view-from):      %s\n", *streams, &open)
	fmt.Printf("  logins   127.0.0.5  %6d wrong tokens in %.1f s:           %s\n", *logins, loginSecs, &login)
	fmt.Printf("  idle     127.0.0.8  %6d idle connections: %d held by the receiver, %d closed at once\n", *idle, idleHeld.Load(), idleClosed.Load())
	fmt.Printf("  honest   127.0.0.6  one push at the flood's end: %d in %s, rollout %s started %.1f s after the flood's end (%s then), %s at the end\n",
		honestCode, honestAnswer.Round(time.Millisecond), honestID, startDelay.Seconds(), status, final)
	fmt.Printf("receiver: alive %v, GET /rollouts %d, peak RSS %.1f MiB, peak goroutines %d\n",
		alive, listCode, float64(peakRSS)/1024, peakGoroutines.Load())
	fmt.Printf("etcd before: %s\n", before)
	fmt.Printf("etcd at the flood's end: %s\n", atFloodEnd)
	fmt.Printf("etcd after:  %s\n", after)

	queueCap, deliveryCap := 2, 10000
	goals := []struct {
		name string
		ok   bool
		got  string
	}{
		{"the receiver alive throughout and serving GET /rollouts", alive && listCode == 200, fmt.Sprintf("alive %v, %d", alive, listCode)},
		{"peak RSS <= 100 MiB", peakRSS <= 100<<10, fmt.Sprintf("%.1f MiB", float64(peakRSS)/1024)},
		{"no etcd value over 64 KiB", after.largest <= 64<<10, fmt.Sprintf("%d bytes (%s)", after.largest, after.largestKey)},
		{fmt.Sprintf("queue entries of the service <= %d at the flood's end and after", queueCap), max(atFloodEnd.queue(), after.queue()) <= queueCap,
			fmt.Sprintf("%d, then %d", atFloodEnd.queue(), after.queue())},
		{fmt.Sprintf("delivery keys <= %d (the flood sent %d)", deliveryCap, *pushes), max(atFloodEnd.under("/fleetroll/deliveries/"), after.under("/fleetroll/deliveries/")) <= deliveryCap,
			fmt.Sprintf("%d, then %d", atFloodEnd.under("/fleetroll/deliveries/"), after.under("/fleetroll/deliveries/"))},
		{"history records <= 50 per service", after.under("/fleetroll/history/") <= 50, strconv.Itoa(after.under("/fleetroll/history/"))},
		{"wrong logins past the first 10 answered 429 (<= 10/s others)", float64(loginPassed-10)/loginSecs <= 10, fmt.Sprintf("%d not 429 in %.1f s", loginPassed, loginSecs)},
		{"the honest rollout succeeded", final == "succeeded", final},
		{"idle connections held <= 32 per client", idleHeld.Load() <= 32, fmt.Sprintf("%d held", idleHeld.Load())},
		{"the fat pushes refused, nothing stored", fat.of(http.StatusAccepted) == 0, fat.String()},
		{fmt.Sprintf("the honest rollout starts within the quiet period + 5 s (%s)", quiet+5*time.Second), honestCode == 202 && startDelay <= quiet+5*time.Second, fmt.Sprintf("%.1f s", startDelay.Seconds())},
	}
	failed := 0
	for _, g := range goals {
		mark := "ok  "
		if !g.ok {
			mark, failed = "MISS", failed+1
		}
		fmt.Printf("  %s %s: %s\n", mark, g.name, g.got)
	}
	if failed > 0 {
		return fmt.Errorf("%d goal(s) missed", failed)
	}
	return nil
}

// push is the Docker Hub fixture with its own pushed_at, and fields set.
func push(fixture []byte, pushedAt int, set map[string]string) []byte {
	var p map[string]any
	_ = json.Unmarshal(fixture, &p)
	delete(p, "callback_url") // no callback leaves this machine
	pd := p["push_data"].(map[string]any)
	pd["pushed_at"] = pushedAt
	for k, v := range set {
		if k == "callback_url" {
			p[k] = v
		} else {
			pd[k] = v
		}
	}
	b, _ := json.Marshal(p)
	return b
}

// from is a client whose connections leave from a loopback address of its
// own (a client, as the receiver sees it), at most conns at once (0: no
// limit, no reuse).
func from(addr string, conns int) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(addr)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext, MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns, DisableKeepAlives: conns == 0}
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

func parallel(workers, n int, fn func(i int)) {
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				fn(i)
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
}

func postJSON(ctx context.Context, c *http.Client, url string, body []byte) (int, error) {
	req, _ := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	return do(c, req)
}

func do(c *http.Client, req *http.Request) (int, error) {
	resp, err := c.Do(req)
	if err != nil {
		return -1, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// codes counts answers by status code (-1: no answer), with a sample error.
type codes struct {
	mu  sync.Mutex
	n   map[int]int
	err string
}

func (c *codes) add(code int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[int]int{}
	}
	c.n[code]++
	if err != nil && c.err == "" {
		c.err = err.Error()
	}
}

func (c *codes) of(code int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[code]
}

func (c *codes) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := 0
	for _, v := range c.n {
		t += v
	}
	return t
}

func (c *codes) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(c.n)) {
		name := strconv.Itoa(k)
		if k == -1 {
			name = "no answer"
		}
		parts = append(parts, fmt.Sprintf("%s×%d", name, c.n[k]))
	}
	s := strings.Join(parts, " ")
	if c.err != "" {
		s += " (e.g. " + c.err + ")"
	}
	return s
}

// serve is the receiver under attack.
type serve struct {
	cmd       *exec.Cmd
	base, ops string
	exited    chan struct{}
	operator  *http.Client // the operator's API calls, from 127.0.0.7
}

func startServe(ctx context.Context, bin string, cl *cluster.Cluster, tokenFile, hubFile string) (*serve, error) {
	cmd := exec.CommandContext(ctx, bin, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--endpoint", cl.Endpoint, "--etcd-endpoints", cl.EtcdURL,
		"--service", service, "--repository", "demo/my-service", "--ports", port, "--grace", "0s", "--quiet-period", quiet.String(),
		"--token-file", tokenFile, "--dockerhub-token-file", hubFile,
		"--view-from", "127.0.0.4/32", "--log-format", "json")
	cmd.Env = append(os.Environ(), cl.Env()...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &serve{cmd: cmd, exited: make(chan struct{}), operator: from("127.0.0.7", 1)}
	logFile, err := os.Create(serveLog)
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(io.TeeReader(stderr, logFile))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for (s.base == "" || s.ops == "") && sc.Scan() {
		var l struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		switch l.Msg {
		case "listening":
			s.base = "http://" + l.Addr
		case "metrics and health listening":
			s.ops = "http://" + l.Addr
		}
	}
	if s.base == "" || s.ops == "" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, errors.New("fleetroll serve never listened")
	}
	go func() { // the rest of its log: errors shown, all in serve.log
		defer logFile.Close()
		for sc.Scan() {
			if bytes.Contains(sc.Bytes(), []byte(`"level":"ERROR"`)) {
				fmt.Fprintln(os.Stderr, "serve:", sc.Text())
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	return s, nil
}

func (s *serve) alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return s.cmd.Process.Signal(syscall.Signal(0)) == nil
	}
}

func (s *serve) stop() {
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.exited:
	case <-time.After(time.Minute):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// goroutines reads go_goroutines off /metrics.
func (s *serve) goroutines(ctx context.Context) (int, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", s.ops+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, errors.New("no go_goroutines in /metrics")
}

func (s *serve) get(ctx context.Context, path string, into any) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", s.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := s.operator.Do(req)
	if err != nil {
		return -1, err
	}
	defer resp.Body.Close()
	if into != nil {
		return resp.StatusCode, json.NewDecoder(resp.Body).Decode(into)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func (s *serve) list(ctx context.Context) int {
	code, _ := s.get(ctx, "/rollouts", nil)
	return code
}

// startedAt waits until the rollout has started and returns when it did.
func (s *serve) startedAt(ctx context.Context, id string) (time.Time, string, error) {
	if id == "" {
		return time.Time{}, "", errors.New("no rollout ID in the answer")
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		var r struct {
			Status  string    `json:"status"`
			Started time.Time `json:"started"`
		}
		if code, err := s.get(ctx, "/rollouts/"+id, &r); err == nil && code == 200 && !r.Started.IsZero() {
			return r.Started, r.Status, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, "", fmt.Errorf("not started: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// finished waits until the rollout has ended and returns its status.
func (s *serve) finished(ctx context.Context, id string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		var r struct {
			Status string `json:"status"`
		}
		if code, err := s.get(ctx, "/rollouts/"+id, &r); err == nil && code == 200 {
			switch r.Status {
			case "queued", "running", "paused":
			default:
				return r.Status, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("not ended: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// keys is what etcd holds: every key, counted by fleetroll's prefixes, and
// the largest value.
type keys struct {
	total, fleetroll int
	entries          int // under /fleetroll/queue/entries
	byPrefix         map[string]int
	largest          int
	largestKey       string
}

func (k keys) under(prefix string) int {
	n := 0
	for p, c := range k.byPrefix {
		if strings.HasPrefix(p+"/", prefix) {
			n += c
		}
	}
	return n
}

// queue counts the queue's entries (its claims are leases, not entries).
func (k keys) queue() int { return k.entries }

func (k keys) String() string {
	var parts []string
	for _, p := range slices.Sorted(maps.Keys(k.byPrefix)) {
		parts = append(parts, fmt.Sprintf("%s %d", strings.TrimPrefix(p, "/fleetroll/"), k.byPrefix[p]))
	}
	return fmt.Sprintf("%d keys, %d of fleetroll's (%s), largest value %d bytes (%s)",
		k.total, k.fleetroll, strings.Join(parts, ", "), k.largest, k.largestKey)
}

func etcdKeys(ctx context.Context, etcdURL string) (keys, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", etcdURL+"/v2/keys/?recursive=true", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return keys{}, fmt.Errorf("read etcd: %w", err)
	}
	defer resp.Body.Close()
	type node struct {
		Key   string  `json:"key"`
		Dir   bool    `json:"dir"`
		Value string  `json:"value"`
		Nodes []*node `json:"nodes"`
	}
	var body struct{ Node node }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return keys{}, fmt.Errorf("read etcd: %w", err)
	}
	k := keys{byPrefix: map[string]int{}}
	var walk func(n *node)
	walk = func(n *node) {
		if !n.Dir {
			k.total++
			if len(n.Value) > k.largest {
				k.largest, k.largestKey = len(n.Value), n.Key
			}
			if rest, ok := strings.CutPrefix(n.Key, "/fleetroll/"); ok {
				k.fleetroll++
				kind, _, _ := strings.Cut(rest, "/")
				k.byPrefix["/fleetroll/"+kind]++
				if strings.HasPrefix(rest, "queue/entries/") {
					k.entries++
				}
			}
		}
		for _, c := range n.Nodes {
			walk(c)
		}
	}
	walk(&body.Node)
	return k, nil
}

func vmKB(pid int, field string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

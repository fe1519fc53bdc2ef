package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// chromium finds Debian's chromium; under CI=true its absence fails the
// test.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is required under CI=true (contrib/cluster/deps.sh installs it)")
	}
	t.Skip("no chromium")
	return ""
}

// browserContext starts a headless Chromium that connects to nothing but
// loopback: no background networking, no component updates, every host
// but 127.0.0.1 and 127.0.0.2 (another site, whose links a test follows)
// resolving to nothing.
func browserContext(t *testing.T) (context.Context, *consoleErrors) {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // as root in CI
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("disable-client-side-phishing-detection", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("disable-features", "OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater"),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE 127.0.0.2"),
		chromedp.WindowSize(1280, 1000),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	errs := &consoleErrors{}
	err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				var parts []string
				for _, a := range ev.Args {
					parts = append(parts, fmt.Sprint(a.Value), a.Description)
				}
				errs.add("console.error: " + strings.Join(parts, " "))
			}
		case *runtime.EventExceptionThrown:
			msg := "exception: " + ev.ExceptionDetails.Text
			if ex := ev.ExceptionDetails.Exception; ex != nil {
				msg += " " + ex.Description
			}
			errs.add(msg)
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError {
				errs.add("log: " + ev.Entry.Text + " " + ev.Entry.URL)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return ctx, errs
}

type consoleErrors struct {
	mu   sync.Mutex
	msgs []string
}

func (c *consoleErrors) add(m string) { c.mu.Lock(); c.msgs = append(c.msgs, m); c.mu.Unlock() }
func (c *consoleErrors) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.msgs...)
}

// The status page in a real headless Chromium, against serve on the real
// cluster: log in, a Docker Hub push, each unit seen through its stop and
// start live (a pending one without a bar), the result and the history
// row, the durations chart with its seconds axis and each bar's result, a
// timeline with one lane per unit and no two down at once, its time axis
// and legend, "roll now", and no console error.
func TestStatusPageInABrowser(t *testing.T) {
	c := needCluster(t)
	ports := []string{"19181", "19182", "19183"}
	units := launchDemo(t, "e2e-ui", ports...)
	base := startServe(t, append(secretArgs(t), "--service", "e2e-ui", "--ports", strings.Join(ports, ","), "--repository", "demo/my-service",
		"--tag", "latest", "--grace", "0s", "--min-healthy-time", "0s", "--etcd-endpoints", c.EtcdURL,
		// A health gate, brief: the timeline has a phase to mark.
		"--health-path", "/healthz", "--health-interval", "200ms", "--health-successes", "1")...)
	ctx, console := browserContext(t)
	ctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()

	// Without a session: the login page; 401s from the stream and the
	// actions; a cross-site POST without the CSRF token is refused.
	anon := &http.Client{Timeout: 10 * time.Second}
	for _, p := range []struct{ method, path string }{{"GET", "/events"}, {"GET", "/ui/state"}, {"POST", "/ui/roll?service=e2e-ui"}} {
		req, _ := http.NewRequest(p.method, base+p.path, nil)
		resp, err := anon.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("%s %s without a session: %d", p.method, p.path, resp.StatusCode)
		}
	}
	jar, _ := cookiejar.New(nil)
	other := &http.Client{Timeout: 10 * time.Second, Jar: jar}
	if resp, err := other.PostForm(base+"/login", url.Values{"token": {serveToken}}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("login from Go: %v %v", resp, err)
	}
	req, _ := http.NewRequest("POST", base+"/ui/roll?service=e2e-ui", strings.NewReader("service=e2e-ui"))
	req.Header.Set("Origin", "https://evil.example")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err := other.Do(req); err != nil || resp.StatusCode != 403 {
		t.Fatalf("a POST without the CSRF token: %v %v", resp, err)
	}

	lctx, lcancel := context.WithTimeout(ctx, 90*time.Second)
	defer lcancel()
	if err := chromedp.Do(lctx,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("form#login input[name=token]")),
		chromedp.SendKeys(chromedp.ID("token"), serveToken),
		chromedp.Submit(chromedp.ID("token")),
		chromedp.WaitVisible(chromedp.ID("svc-e2e-ui")),
	); err != nil {
		t.Fatalf("login: %v; the browser's console: %q", err, console.all())
	}
	origin, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`performance.timeOrigin`))
	if err != nil {
		t.Fatal(err)
	}

	// Every rendering of the rollout in progress is looked at as it
	// happens: a unit not reached yet (pending) has no bar.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => {
		window.pendingRows = { seen: 0, barred: 0 };
		new MutationObserver(() => {
			for (const tr of document.querySelectorAll('#svc-e2e-ui .current tr[data-outcome="pending"]')) {
				window.pendingRows.seen++;
				if (tr.querySelector('.bar')) window.pendingRows.barred++;
			}
		}).observe(document.getElementById('services'), { childList: true, subtree: true });
		return true;
	})()`)); err != nil {
		t.Fatal(err)
	}

	// A Docker Hub push.
	var payload map[string]any
	if err := json.Unmarshal(fixture(t, "dockerhub-push.json"), &payload); err != nil {
		t.Fatal(err)
	}
	delete(payload, "callback_url")
	// A push of its own: the receivers of the other tests share the
	// cluster's etcd, where deliveries seen are kept.
	payload["push_data"].(map[string]any)["pushed_at"] = time.Now().UnixNano()
	hub, _ := json.Marshal(payload)
	code, ans := post(t, base+"/webhooks/dockerhub/"+serveHubToken, hub, map[string]string{"Content-Type": "application/json"})
	if code != 202 {
		t.Fatalf("push: %d %v", code, ans)
	}
	id := ans["id"].(string)
	row := fmt.Sprintf(`#svc-e2e-ui .history tr[data-id="%s"][data-status="succeeded"]`, id)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(row))); err != nil {
		t.Fatalf("the history row of %s: %v", id, err)
	}
	seen, err := chromedp.Run(ctx, chromedp.Evaluate[[][]string](fmt.Sprintf(
		`[...document.querySelectorAll('#activity li[data-rollout="%s"]')].map(li => [li.dataset.unit, li.dataset.kind])`, id)))
	if err != nil {
		t.Fatal(err)
	}
	if originAfter, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`performance.timeOrigin`)); err != nil || originAfter != origin {
		t.Fatalf("the page was reloaded (%v)", err)
	}
	kinds := map[string]string{}
	for i := len(seen) - 1; i >= 0; i-- { // the activity list is newest first
		kinds[seen[i][0]] += seen[i][1] + " "
	}
	for _, u := range units {
		for _, k := range []string{"stopping", "stopped", "starting", "running"} {
			if !strings.Contains(kinds[u], k+" ") {
				t.Errorf("the page did not show %s %s live: %q", u, k, kinds[u])
			}
		}
	}
	if !strings.Contains(kinds[""], "succeeded") {
		t.Errorf("the page did not show the result live: %q", kinds[""])
	}
	pending, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]int](`window.pendingRows`))
	if err != nil {
		t.Fatal(err)
	}
	if pending["seen"] == 0 || pending["barred"] != 0 {
		t.Errorf("pending rows of the rollout in progress: %v, want some seen and none with a bar", pending)
	}

	// The durations chart: a seconds axis from 0, and the result under
	// the rollout's bar.
	type chartParts struct {
		Ticks  []string `json:"ticks"`
		Result string   `json:"result"`
	}
	chart, err := chromedp.Run(ctx, chromedp.Evaluate[chartParts](fmt.Sprintf(`(() => {
		const c = document.querySelector('#svc-e2e-ui svg.chart');
		return { ticks: [...c.querySelectorAll('g.axis text.tick')].map(e => e.textContent),
			result: c.querySelector('text.result[data-id="%s"]')?.textContent || "" };
	})()`, id)))
	if err != nil {
		t.Fatal(err)
	}
	if len(chart.Ticks) < 2 || strings.TrimSuffix(strings.TrimSuffix(chart.Ticks[0], " s"), ".0") != "0" || chart.Result != "succeeded" {
		t.Errorf("the chart: ticks %q, the result under %s's bar %q", chart.Ticks, id, chart.Result)
	}
	for _, tick := range chart.Ticks {
		if !strings.HasSuffix(tick, " s") && !strings.HasSuffix(tick, " m") {
			t.Errorf("the chart's tick %q has no unit", tick)
		}
	}

	// The timeline: one lane per unit, no two down (stop to running) at once.
	if err := clickLive(ctx, row); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#timeline svg"))); err != nil {
		t.Fatal(err)
	}
	lanes, err := chromedp.Run(ctx, chromedp.Evaluate[[][]any](
		`[...document.querySelectorAll('#timeline g.lane')].map(g => [g.dataset.unit, Number(g.dataset.downStart), Number(g.dataset.downEnd)])`))
	if err != nil {
		t.Fatal(err)
	}
	if len(lanes) != len(units) {
		t.Fatalf("%d lanes, want %d: %v", len(lanes), len(units), lanes)
	}
	sort.Slice(lanes, func(i, j int) bool { return lanes[i][1].(float64) < lanes[j][1].(float64) })
	for i, l := range lanes {
		if l[0] != units[i] && !strings.HasPrefix(l[0].(string), "e2e-ui@") || !(l[1].(float64) < l[2].(float64)) {
			t.Fatalf("lane %v", l)
		}
		if i > 0 && l[1].(float64) < lanes[i-1][2].(float64) {
			t.Fatalf("two units down at once: %v and %v", lanes[i-1], l)
		}
	}
	// Its time axis, its legend of every phase, and a mark where each
	// drain, health, watch or grace begins.
	type timelineParts struct {
		Ticks  []string `json:"ticks"`
		Legend []string `json:"legend"`
		Marked []string `json:"marked"`
		Marks  []string `json:"marks"`
	}
	parts, err := chromedp.Run(ctx, chromedp.Evaluate[timelineParts](`(() => {
		const s = document.querySelector('#timeline svg'), text = q => [...s.querySelectorAll(q)].map(e => e.textContent);
		return { ticks: text('g.axis text.tick'), legend: text('g.legend text[data-phase]'),
			marked: [...s.querySelectorAll('g.lane rect[data-phase]')].map(r => r.dataset.phase).filter(p => ["drain", "health", "watch", "grace"].includes(p)),
			marks: [...s.querySelectorAll('g.lane path[data-mark]')].map(m => m.dataset.mark) };
	})()`))
	if err != nil {
		t.Fatal(err)
	}
	if len(parts.Ticks) < 2 || strings.TrimSuffix(strings.TrimSuffix(parts.Ticks[0], " s"), ".0") != "0" {
		t.Errorf("the timeline's axis: %q", parts.Ticks)
	}
	if got := strings.Join(parts.Legend, " "); got != "drain stop start health watch grace" {
		t.Errorf("the timeline's legend: %q", got)
	}
	if len(parts.Marks) < len(units) || strings.Join(parts.Marks, " ") != strings.Join(parts.Marked, " ") {
		t.Errorf("the timeline marks %q, its phases to mark are %q", parts.Marks, parts.Marked)
	}
	t.Logf("the timeline: ticks %q, marks %q", parts.Ticks, parts.Marks)
	if shot := os.Getenv("FLEETROLL_SCREENSHOT"); shot != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(shot, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Roll now: a second rollout starts, live.
	var second string
	if err := clickLive(ctx, "#svc-e2e-ui button.roll"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for second == "" {
		ids, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](fmt.Sprintf(
			`[...document.querySelectorAll('#activity li[data-kind="stopping"]')].map(li => li.dataset.rollout).filter(r => r !== "%s")`, id)))
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) > 0 {
			second = ids[0]
		} else if time.Now().After(deadline) {
			t.Fatal("roll now started no rollout")
		} else {
			time.Sleep(200 * time.Millisecond) // polling the page, as a person looking at it would
		}
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#svc-e2e-ui .history tr[data-id="%s"][data-status="succeeded"]`, second)))); err != nil {
		t.Fatalf("the second rollout %s: %v", second, err)
	}
	if errs := console.all(); len(errs) > 0 {
		t.Fatalf("the page logged errors:\n%s", strings.Join(errs, "\n"))
	}
}

// clickLive clicks the element that sel selects in one evaluation in the
// page. The page redraws its rows and buttons on every live update, and
// chromedp.Click acts on a node it looked up a moment before: one redrawn
// meanwhile is gone ("Could not find node with given id"). Unlike
// chromedp.Click it does not wait for the element: callers wait for it
// first.
func clickLive(ctx context.Context, sel string) error {
	q, _ := json.Marshal(sel)
	found, err := chromedp.Run(ctx, chromedp.Evaluate[bool](fmt.Sprintf(
		`(() => { const e = document.querySelector(%s); if (!e) return false; e.click(); return true; })()`, q)))
	if err != nil {
		return fmt.Errorf("click %s: %w", sel, err)
	}
	if !found {
		return fmt.Errorf("click %s: not on the page", sel)
	}
	return nil
}

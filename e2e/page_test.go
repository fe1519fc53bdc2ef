package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// slackLink is the link fleetroll adds to a Slack message: <URL|rollout ID>.
var slackLink = regexp.MustCompile(`<(https?://[^|>]+)\|rollout ([0-9a-f]{12})>`)

// A Slack message's link opens the status page on its rollout, in headless
// Chromium, followed from another site as a person would from Slack: the
// login returns to the rollout, a second click goes straight to it (the
// session kept), and the page's Promote button finishes the paused canary
// (issue 25).
func TestSlackLinkOpensThePageAndPromotes(t *testing.T) {
	c := needCluster(t)
	ports := []string{"19501", "19502", "19503"}
	units := launchDemo(t, "e2e-page", ports...)
	const listen = "127.0.0.1:19509"
	claim(t, "port 19509")

	// A Slack-compatible incoming webhook, and, on another site (127.0.0.2
	// is not 127.0.0.1's site), the message as Slack would show it: a link.
	texts := make(chan string, 16)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m map[string]string
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&m); err == nil {
			select {
			case texts <- m["text"]:
			default:
			}
		}
	}))
	t.Cleanup(hook.Close)
	var mu sync.Mutex
	var link string
	chat := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, `<!doctype html><html><head><link rel="icon" href="data:,"><title>chat</title></head><body><a id="link" href="%s">rollout</a></body></html>`,
			html.EscapeString(link))
	}))
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	chat.Listener = ln
	chat.Start()
	t.Cleanup(chat.Close)

	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(`notifications:
  - name: team
    kind: slack
    events: [started]
services:
  - name: e2e-page
    ports: 19501-19503
    grace: 0s
    min_healthy_time: 0s
    canary: 1
    notify: [team]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "team.url"), []byte(hook.URL+"/services/T000/B000/XXXX\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := startServe(t, append(secretArgs(t), "--listen", listen, "--config", cfg, "--etcd-endpoints", c.EtcdURL,
		"--public-url", "http://"+listen, "--notify-allow", hook.URL, "--notify-secrets-dir", dir)...)

	auth := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + serveToken}
	code, ans := post(t, base+"/rollouts", []byte(`{"service":"e2e-page"}`), auth)
	if code != 202 {
		t.Fatalf("trigger: %d %v", code, ans)
	}
	id := ans["id"].(string)
	if ans["status_url"] != "http://"+listen+"/rollouts/"+id {
		t.Errorf("status_url %v: want the API's", ans["status_url"])
	}
	select {
	case text := <-texts:
		m := slackLink.FindStringSubmatch(text)
		if m == nil || m[2] != id {
			t.Fatalf("the Slack message has no link to rollout %s: %q", id, text)
		}
		mu.Lock()
		link = m[1]
		mu.Unlock()
	case <-time.After(time.Minute):
		t.Fatal("no Slack message within 1m")
	}
	if link != "http://"+listen+"/ui/rollouts/"+id {
		t.Fatalf("the Slack message links to %s, want the status page on the rollout", link)
	}
	eventually(t, 2*time.Minute, "the rollout paused", func() error {
		var ro map[string]any
		if err := getJSON(base+"/rollouts/"+id, map[string]string{"Authorization": "Bearer " + serveToken}, &ro); err != nil {
			return err
		}
		if ro["status"] != "paused" {
			return fmt.Errorf("status %v", ro["status"])
		}
		return nil
	})
	before := systemd(t, units...)

	ctx, console := browserContext(t)
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	detail := fmt.Sprintf(`#detail[data-rollout="%s"]`, id)
	// The link followed from the chat: the login, which returns to it.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(chat.URL),
		chromedp.Click(chromedp.ID("link")),
		chromedp.WaitVisible(chromedp.CSS("form#login input[name=token]")),
		chromedp.SendKeys(chromedp.ID("token"), serveToken),
		chromedp.Submit(chromedp.ID("token")),
		chromedp.WaitVisible(chromedp.CSS(detail+`[data-status="paused"] #detail-actions button.promote`)),
	); err != nil {
		t.Fatalf("the link after a login: %v; the browser's console: %q", err, console.all())
	}
	if at, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href`)); err != nil || at != link {
		t.Fatalf("after the login the page is at %q (%v), want %s", at, err, link)
	}
	// Followed again, with the session: the rollout at once, no login.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(chat.URL),
		chromedp.Click(chromedp.ID("link")),
		chromedp.WaitVisible(chromedp.CSS(detail+`[data-status="paused"] #detail-actions button.promote`)),
	); err != nil {
		t.Fatalf("the link with a session: %v; the browser's console: %q", err, console.all())
	}
	// It came through the page's own request for itself (the browser left
	// the SameSite=Strict cookie out of the cross-site one), which names
	// the link as its referrer; the chat's link alone would name the chat.
	if ref, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.referrer`)); err != nil || ref != link {
		t.Fatalf("the page's referrer %q (%v), want %s (the page asking for itself again)", ref, err, link)
	}
	summary, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("detail-summary").textContent`))
	if err != nil || !strings.Contains(summary, "paused after its canaries ("+units[0]+")") {
		t.Fatalf("the page on the rollout says %q (%v)", summary, err)
	}

	if err := clickLive(ctx, detail+" #detail-actions button.promote"); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(detail+`[data-status="succeeded"]`))); err != nil {
		t.Fatalf("promote from the page: %v; the browser's console: %q", err, console.all())
	}
	ro := waitStatus(t, base, id)
	canary, _ := ro["canary"].(map[string]any)
	if ro["status"] != "succeeded" || canary == nil || canary["decision"] != "promote" || !strings.HasPrefix(fmt.Sprint(canary["by"]), "the status page (request ") {
		t.Fatalf("rollout: %v", ro)
	}
	after := systemd(t, units...)
	for i, u := range units[1:] {
		if !after[i+1].Up() || after[i+1].MainPID == before[i+1].MainPID {
			t.Errorf("%s not restarted by the promotion: %+v -> %+v", u, before[i+1], after[i+1])
		}
	}
	if errs := console.all(); len(errs) > 0 {
		t.Fatalf("the page logged errors:\n%s", strings.Join(errs, "\n"))
	}
}

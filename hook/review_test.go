package hook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	client "go.etcd.io/etcd/client/v2"
)

// Review tests: the durable queue's in-place replacement, driven directly
// (no HTTP, no fleet), each receiver a durable of its own over one etcd.

func reviewEtcd(t *testing.T) client.KeysAPI {
	t.Helper()
	url, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{url}, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return kapi
}

func reviewDurable(kapi client.KeysAPI, owner string, opt QueueOptions) *durable {
	return newDurable(kapi, NewStore(100), opt, owner, 3*time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func reviewPush(i int) fleetroll.Trigger {
	return fleetroll.Trigger{Source: string(SourceDockerHub), Repository: "demo/my-service", Tag: "latest",
		PushedAt: fmt.Sprint(1700000000 + i), Received: time.Now().UTC()}
}

func queueOf(t *testing.T, kapi client.KeysAPI) []coord.QueuedTrigger {
	t.Helper()
	all, err := coord.Triggers{KAPI: kapi}.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return all["my-service"]
}

// getHook is a KeysAPI that runs hook once, just before the first Get of a
// queue entry (not of the queue's directories).
type getHook struct {
	client.KeysAPI
	once sync.Once
	hook func()
}

func (g *getHook) Get(ctx context.Context, key string, opts *client.GetOptions) (*client.Response, error) {
	if strings.HasPrefix(key, coord.QueuePrefix+"/entries/my-service/") {
		g.once.Do(g.hook)
	}
	return g.KeysAPI.Get(ctx, key, opts)
}

// Cancelling rollout p1 while another receiver's push p2 takes p1's entry in
// place (between Cancel's List and its compare-and-swap delete) cancels p2:
// the check reads the entry by key and asks only that it waits, not that it
// is still p1. p2 was answered 202; it never runs, and its callbacks (and
// p1's, which it carried) are never called.
func TestReviewCancelDoesNotCancelTheRolloutThatReplacedIt(t *testing.T) {
	kapi := reviewEtcd(t)
	ctx := t.Context()
	other := reviewDurable(kapi, "receiver B", QueueOptions{})
	var p2 fleetroll.Report
	hooked := &getHook{KeysAPI: kapi}
	hooked.hook = func() {
		var err error
		if p2, _, err = other.Submit(ctx, "my-service", reviewPush(2), "https://cb/2"); err != nil {
			t.Error(err)
		}
	}
	a := reviewDurable(hooked, "receiver A", QueueOptions{})
	p1, _, err := a.Submit(ctx, "my-service", reviewPush(1), "https://cb/1")
	if err != nil {
		t.Fatal(err)
	}
	rec, err := a.Cancel(ctx, p1.ID, "test")
	if err == nil && rec.ID != p1.ID {
		t.Errorf("cancelling %s cancelled %s (%s)", p1.ID, rec.ID, rec.Status)
	}
	if !errors.Is(err, ErrNotQueued) && err != nil {
		t.Errorf("cancel: %v", err)
	}
	es := queueOf(t, kapi)
	if len(es) != 1 || es[0].Record.ID != p2.ID {
		t.Fatalf("p2 (%s), answered 202, is gone from the queue: %+v", p2.ID, es)
	}
}

// A receiver whose claim lapsed (a stall longer than the lease) stops its
// rollout and puts the entry back (Runner "") without looking: by then the
// receiver that took the claim over has set itself as the Runner and
// resumes. The entry now looks idle while it runs, so the next push takes
// its place in place; when the rollout ends, its receiver removes the entry
// by key, which removes the new push, and reports the new push's callbacks
// with the old rollout's result. The new push never runs.
func TestReviewPutBackDoesNotReleaseAnEntryAnotherReceiverRuns(t *testing.T) {
	kapi := reviewEtcd(t)
	ctx := t.Context()
	lease := func() error { return nil }

	var reported []Job
	var mu sync.Mutex
	afterRun := func(j Job) { mu.Lock(); reported = append(reported, j); mu.Unlock() }
	a := reviewDurable(kapi, "receiver A", QueueOptions{})
	b := reviewDurable(kapi, "receiver B", QueueOptions{AfterRun: afterRun})
	c := reviewDurable(kapi, "receiver C", QueueOptions{})

	p1, _, err := a.Submit(ctx, "my-service", reviewPush(1), "https://cb/1")
	if err != nil {
		t.Fatal(err)
	}
	aStarted, aRelease, aDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	a.exec = func(ctx context.Context, j Job) bool { close(aStarted); <-aRelease; return false } // lease lost: stopped
	go func() { defer close(aDone); a.runOne(ctx, "my-service", lease) }()
	<-aStarted

	var ran []string
	bStarted, bRelease, bDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	b.exec = func(ctx context.Context, j Job) bool {
		ran = append(ran, j.ID)
		close(bStarted)
		<-bRelease
		return true
	}
	go func() { defer close(bDone); b.runOne(ctx, "my-service", lease) }() // B took the lapsed claim
	<-bStarted
	if es := queueOf(t, kapi); len(es) != 1 || es[0].Runner != "receiver B" {
		t.Fatalf("B should run the entry: %+v", es)
	}
	close(aRelease) // A's rollout stops; A puts its entry back
	<-aDone
	if es := queueOf(t, kapi); len(es) != 1 || es[0].Runner != "receiver B" {
		t.Errorf("A's put-back released the entry B runs: runner %q", es[0].Runner)
	}
	p2, merged, err := c.Submit(ctx, "my-service", reviewPush(2), "https://cb/2")
	if err != nil || merged {
		t.Fatal(merged, err)
	}
	close(bRelease)
	<-bDone
	es := queueOf(t, kapi)
	if !slices.Contains(ran, p2.ID) && !slices.ContainsFunc(es, func(e coord.QueuedTrigger) bool { return e.Record.ID == p2.ID }) {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("push p2 (%s, answered 202) neither ran nor waits: ran %v, queue %+v; B reported %+v (p1 %s)", p2.ID, ran, es, reported, p1.ID)
	}
}

// The callbacks a superseding entry carries keep "the newest
// MaxSupersedes+1", but the new push's own callback is put first and the
// superseded ones appended after it, so once 21 are carried the newest
// push's callback is the one dropped, and so is every later push's: those
// Docker Hub pushes are answered 202 and never called back. (The in-memory
// queue appends the new callback last, and keeps it.)
func TestReviewTheNewestPushKeepsItsCallback(t *testing.T) {
	kapi := reviewEtcd(t)
	ctx := t.Context()
	d := reviewDurable(kapi, "receiver A", QueueOptions{})
	for i := range MaxSupersedes + 3 {
		if _, _, err := d.Submit(ctx, "my-service", reviewPush(i), fmt.Sprintf("https://cb/%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	es := queueOf(t, kapi)
	last := fmt.Sprintf("https://cb/%d", MaxSupersedes+2)
	if len(es) != 1 || !slices.Contains(es[0].Callbacks, last) {
		t.Fatalf("the waiting entry's callbacks %v lack the newest push's %s", es[0].Callbacks, last)
	}
}

// Pushes that alternate between two receivers (a load balancer): each
// receiver keeps the record of every push it accepted, status queued, once
// the other receiver's push took its place in etcd. Nothing updates it (the
// superseded record is put only in the replacing receiver's store, and not
// in the history), and the store never evicts a record that is not final:
// the status URL of that 202 says "queued" for ever, and the store grows
// with every push of a flood.
func TestReviewAReceiversStoreDoesNotKeepPushesAnotherSuperseded(t *testing.T) {
	kapi := reviewEtcd(t)
	ctx := t.Context()
	a := reviewDurable(kapi, "receiver A", QueueOptions{})
	b := reviewDurable(kapi, "receiver B", QueueOptions{})
	a.store, b.store = NewStore(5), NewStore(5)
	var first fleetroll.Report
	for i := range 40 {
		d := a
		if i%2 == 1 {
			d = b
		}
		r, _, err := d.Submit(ctx, "my-service", reviewPush(i), "")
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r
		}
	}
	recs := records{store: a.store, etcd: kapi, live: a.live, owner: "receiver A", config: func() *Config { return &Config{} }}
	// Superseded, it is final: kept within the store's bound, then
	// forgotten like any finished rollout past --history (not found).
	if r, found, err := recs.Get(ctx, first.ID); err != nil || (found && r.Status == fleetroll.StatusQueued) {
		t.Errorf("receiver A says push 0 (superseded long ago by B) is %q (found %v, %v)", r.Status, found, err)
	}
	if n := len(a.store.List("")); n > 5 {
		t.Errorf("receiver A's store (limit 5) holds %d records after 20 of its pushes were superseded by B", n)
	}
}

// One registry envelope with two events, for two services: my-service's is
// current, other's is stale (other's tag has moved on since). The envelope
// is refused 409 whole, and the delivery stays claimed, so the registry's
// retry is a "duplicate" that starts nothing: my-service's honest push is
// never rolled out.
func TestReviewAStaleEventDoesNotSinkTheEnvelopesCurrentOne(t *testing.T) {
	conf := strings.Replace(testConfig, "    ports: 8901-8903\n", "    ports: 8901-8903\n    image: "+releaseImage+"\n", 1)
	conf = strings.Replace(conf, "    ports: [9001]\n", "    ports: [9001]\n    image: 127.0.0.1:15000/demo/other\n    registry:\n      - repository: demo/other\n        tags: [v1]\n", 1)
	cfg, err := ParseConfig([]byte(conf), testBase())
	if err != nil {
		t.Fatal(err)
	}
	res := &tagResolver{answer: func(_ context.Context, image, tag string) (string, error) {
		if strings.HasSuffix(image, "/other") {
			return newerDigest, nil // other:v1 moved on
		}
		return ociDigest, nil
	}}
	kapi := startEtcd(t)
	env := newTestEnv(t, func(o *Options) { o.Config, o.Etcd, o.Resolver, o.Owner = cfg, kapi, res, "receiver" })
	event := func(id, repo, digest string) string {
		return `{"id":"` + id + `","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` +
			digest + `","repository":"` + repo + `","tag":"v1"}}`
	}
	body := []byte(`{"events":[` + event("e-1", "demo/my-service", ociDigest) + `,` + event("e-2", "demo/other", ghDigest) + `]}`)
	for i := range 2 { // the registry retries until it gets a 2xx
		resp, ans := env.do(t, "POST", "/webhooks/registry", body, registryHeaders(testRegToken))
		t.Logf("delivery %d: %d %v", i+1, resp.StatusCode, ans)
		if resp.StatusCode/100 == 2 {
			break
		}
	}
	live, err := env.srv.durable.live(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range live {
		if r.Service == "my-service" {
			return
		}
	}
	if recs := env.srv.Store().List("my-service"); len(recs) == 0 {
		t.Fatalf("my-service's current push (tag v1 is %s in the registry) was never queued", ociDigest)
	}
}

// A public URL with a query or a fragment is refused: the links made from
// it (PublicURL + "/ui/rollouts/ID") would land in the query or fragment.
func TestPublicURLWithoutQueryOrFragment(t *testing.T) {
	for _, u := range []string{"https://hooks.example.com/?a=b", "https://hooks.example.com/#x", "https://hooks.example.com?"} {
		if _, err := newPageHosts(u, ""); err == nil {
			t.Errorf("public URL %q taken", u)
		}
	}
	if _, err := newPageHosts("https://hooks.example.com/fleetroll", ""); err != nil {
		t.Errorf("a public URL with a path: %v", err)
	}
}

package hook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
	client "go.etcd.io/etcd/client/v2"
)

// receivers are several serve processes over one etcd and one fleet.
type receivers struct {
	kapi  client.KeysAPI
	fleet *fakefleet.Fleet
	api   fleetroll.Fleet
	cbs   *httptest.Server
	calls atomic.Int32 // callbacks received
	got   chan CallbackResult
}

func newReceivers(t *testing.T) *receivers {
	t.Helper()
	url, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	ff := fakefleet.New(testUnits...)
	fsrv := httptest.NewServer(ff)
	t.Cleanup(fsrv.Close)
	api, err := fleetroll.Connect(fsrv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rs := &receivers{kapi: kapi, fleet: ff, api: api, got: make(chan CallbackResult, 10)}
	cb := http.NewServeMux()
	cb.HandleFunc("POST /u/demo/my-service/hook/{id}/", func(w http.ResponseWriter, r *http.Request) {
		var res CallbackResult
		_ = json.NewDecoder(r.Body).Decode(&res)
		rs.calls.Add(1)
		rs.got <- res
	})
	rs.cbs = newHTTPServer(t, cb)
	return rs
}

// start starts a receiver named owner.
func (rs *receivers) start(t *testing.T, owner string) *testEnv {
	t.Helper()
	return newTestEnv(t, func(o *Options) {
		c, err := NewCallbacker([]string{rs.cbs.URL}, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		o.Callbacks, o.Fleet, o.Etcd, o.Owner = c, rs.api, rs.kapi, owner
		o.LeaseTTL = 3 * time.Second
		for i := range o.Config.Services {
			o.Config.Services[i].Settings.Lock, o.Config.Services[i].Settings.LockTTL = rollout.LockWait, 3*time.Second
		}
	})
}

// leftByA queues rec's trigger (with the callback, when not "") as
// running at "receiver A", a receiver gone.
func (rs *receivers) leftByA(t *testing.T, rec fleetroll.Report, callback string) {
	t.Helper()
	q := coord.Triggers{KAPI: rs.kapi}
	add, err := q.Add(t.Context(), rec.Service, triggerKey(rec.Trigger), false, func() fleetroll.Report { return rec }, callback, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Update(t.Context(), add.Entry.Key, func(e *coord.QueuedTrigger) { e.Runner = "receiver A" }); err != nil {
		t.Fatal(err)
	}
}

// diedMidUnit leaves what "receiver A" leaves when it dies in phase of
// the second of three units, the first restarted: its trigger running
// (with the callback, when not ""), its intent, and the unit stopped. It
// returns the rollout and its trigger (received now).
func (rs *receivers) diedMidUnit(t *testing.T, phase fleetroll.Phase, callback string) (string, fleetroll.Trigger) {
	t.Helper()
	units := testUnits[:3]
	id := fleetroll.NewID()
	now := time.Now().UTC()
	trig := fleetroll.Trigger{Source: "dockerhub", Repository: "demo/my-service", Tag: "latest", PushedAt: "1795835368", Received: now}
	rs.leftByA(t, fleetroll.Report{Version: fleetroll.SchemaVersion, ID: id, Service: "my-service", Status: fleetroll.StatusRunning,
		Trigger: trig, Started: now, By: "receiver A", Queue: &fleetroll.QueueInfo{Queued: now}, Units: []fleetroll.UnitReport{
			{Unit: units[0], Outcome: fleetroll.OutcomeRestarted},
			{Unit: units[1], Outcome: fleetroll.OutcomeInProgress, Phase: phase},
			{Unit: units[2], Outcome: fleetroll.OutcomePending},
		}}, callback)
	if err := (coord.Intents{KAPI: rs.kapi}).Put(t.Context(), "my-service", coord.Intent{Rollout: id, Trigger: trig, Owner: "receiver A, rollout " + id,
		Started: now, Units: []coord.IntentUnit{{Unit: units[1], Phase: phase, Since: now}}}); err != nil {
		t.Fatal(err)
	}
	rs.fleet.Update(units[1], func(u *fakefleet.Unit) { u.Desired, u.Active, u.Sub = "loaded", "inactive", "dead" })
	return id, trig
}

func (rs *receivers) push(t *testing.T) []byte {
	return bytes.Replace(fixture(t, "dockerhub-push.json"), []byte("https://registry.hub.docker.com"), []byte(rs.cbs.URL), 1)
}

// waitFinal polls a receiver's status API until the rollout has ended.
func waitFinal(t *testing.T, env *testEnv, id string) fleetroll.Report {
	t.Helper()
	auth := map[string]string{"Authorization": "Bearer " + testToken}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.DefaultClient.Do(mustRequest(t, "GET", env.http.URL+"/rollouts/"+id, auth))
		if err != nil {
			t.Fatal(err)
		}
		var r fleetroll.Report
		_ = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if r.Status.Final() {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout %s has not ended: %+v", id, r)
		}
		select {
		case <-env.srv.Store().Changed():
		case <-time.After(50 * time.Millisecond): // the record may change at another receiver
		}
	}
}

func mustRequest(t *testing.T, method, url string, headers map[string]string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return req
}

// The same delivery sent to two receivers (a retrying sender behind a load
// balancer) starts one rollout; both receivers show it.
func TestOnePushTwoReceivers(t *testing.T) {
	rs := newReceivers(t)
	a, b := rs.start(t, "receiver A"), rs.start(t, "receiver B")
	hub := rs.push(t)
	resp, first := a.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, hub, jsonHeaders())
	if resp.StatusCode != 202 {
		t.Fatalf("A: %d %v", resp.StatusCode, first)
	}
	resp, again := b.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, hub, jsonHeaders())
	if resp.StatusCode != 200 || again["status"] != "duplicate" {
		t.Fatalf("B: %d %v", resp.StatusCode, again)
	}
	id := first["id"].(string)
	if ids, _ := again["rollouts"].([]any); len(ids) != 1 || ids[0] != id {
		t.Fatalf("B names %v, want [%s]", again["rollouts"], id)
	}
	final := waitFinal(t, b, id)
	if final.Status != fleetroll.StatusSucceeded || final.Restarted() != 3 {
		t.Fatalf("rollout %+v", final)
	}
	if other := waitFinal(t, a, id); canonical(t, other) != canonical(t, final) {
		t.Fatalf("the receivers differ:\n%s\n%s", canonical(t, other), canonical(t, final))
	}
	for _, u := range testUnits[:3] {
		if unit, _ := rs.fleet.Unit(u); unit.Restarts != 1 {
			t.Errorf("%s restarted %d times, want 1", u, unit.Restarts)
		}
	}
	if res := <-rs.got; res.State != "success" {
		t.Fatalf("callback %+v", res)
	}
	if all, err := (coord.Triggers{KAPI: rs.kapi}).List(t.Context()); err != nil || len(all["my-service"]) != 0 {
		t.Fatalf("queue left %v %v", all, err)
	}
}

// A trigger is in etcd before it is answered: with etcd gone, the sender
// gets 503 (and retries), never a 202 for a trigger that could be lost.
func TestNo202WithoutEtcd(t *testing.T) {
	url, stop := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{url}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	env := newTestEnv(t, func(o *Options) { o.Etcd, o.Owner = kapi, "receiver" })
	stop()
	resp, ans := env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, fixture(t, "dockerhub-push.json"), jsonHeaders())
	if resp.StatusCode != 503 || ans["error"] != "the trigger could not be recorded; retry later" {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
}

// A receiver that died mid-rollout left its trigger (running, the first
// unit restarted) and an intent (the second unit stopped). Another receiver
// takes over once the dead one's lease is gone: it restores the second
// unit, restarts only the third, sends one callback, and records one
// rollout that says it was resumed.
func TestReceiverTakesOverADeadOnesRollout(t *testing.T) {
	rs := newReceivers(t)
	ctx := t.Context()
	units := testUnits[:3]
	id, _ := rs.diedMidUnit(t, fleetroll.PhaseStop, rs.cbs.URL+"/u/demo/my-service/hook/x/")

	b := rs.start(t, "receiver B")
	final := waitFinal(t, b, id)
	if final.Status != fleetroll.StatusSucceeded || len(final.Units) != 3 {
		t.Fatalf("rollout %+v", final)
	}
	for i, u := range final.Units {
		if u.Unit != units[i] || u.Outcome != fleetroll.OutcomeRestarted {
			t.Errorf("unit %d: %+v", i, u)
		}
	}
	if final.Queue == nil || len(final.Queue.Resumed) != 1 || final.Queue.Resumed[0].By != "receiver B" ||
		!slices.Equal(final.Queue.Resumed[0].Done, units[:2]) {
		t.Fatalf("queue info %+v", final.Queue)
	}
	for i, want := range []int{0, 1, 1} {
		if u, _ := rs.fleet.Unit(units[i]); u.Restarts != want || u.Active != "active" {
			t.Errorf("%s: %d restarts, %s; want %d, active", units[i], u.Restarts, u.Active, want)
		}
	}
	if res := <-rs.got; res.State != "success" {
		t.Fatalf("callback %+v", res)
	}
	hist, err := coord.History{KAPI: rs.kapi}.List(ctx, "my-service")
	if err != nil || len(hist) != 1 || hist[0].ID != id || hist[0].Status != fleetroll.StatusSucceeded {
		t.Fatalf("history %+v %v", hist, err)
	}
	if in, err := (coord.Intents{KAPI: rs.kapi}).Get(ctx, "my-service"); in != nil || err != nil {
		t.Fatalf("intent left: %+v %v", in, err)
	}
	b.stop()
	if n := rs.calls.Load(); n != 1 {
		t.Fatalf("%d callbacks, want 1", n)
	}
}

// A receiver died mid-rollout (its shutdown timed out) with a unit in
// flight, and a newer push waits. The next receiver runs the newer one:
// the queue records the dead one's rollout as interrupted and superseded
// by it, and the newer rollout's recovery of the intent records it too.
// The history keeps one record of it that says both, so that its push is
// seen to be in the rollout that ran.
func TestNewerPushTakesADeadReceiversPlace(t *testing.T) {
	rs := newReceivers(t)
	ctx := t.Context()
	units := testUnits[:3]
	old, trig := rs.diedMidUnit(t, fleetroll.PhaseStart, "")
	now := trig.Received
	newer := trig
	newer.PushedAt = "1795835369"
	add, err := (coord.Triggers{KAPI: rs.kapi}).Add(ctx, "my-service", triggerKey(newer), false, func() fleetroll.Report {
		return fleetroll.Report{Version: fleetroll.SchemaVersion, ID: fleetroll.NewID(), Service: "my-service", Status: fleetroll.StatusQueued,
			Trigger: newer, Units: []fleetroll.UnitReport{}, Queue: &fleetroll.QueueInfo{Queued: now.Add(time.Second)}}
	}, "", nil)
	if err != nil || add.Merged || add.Superseded != nil {
		t.Fatalf("newer push queued: %+v %v", add, err)
	}
	id := add.Entry.Record.ID

	b := rs.start(t, "receiver B")
	final := waitFinal(t, b, id)
	if final.Status != fleetroll.StatusSucceeded || final.Restarted() != 3 || final.Queue == nil || !slices.Equal(final.Queue.Supersedes, []string{old}) {
		t.Fatalf("rollout %+v", final)
	}
	hist, err := coord.History{KAPI: rs.kapi}.List(ctx, "my-service")
	if err != nil {
		t.Fatal(err)
	}
	var recs []fleetroll.Report
	for _, r := range hist {
		if r.ID == old {
			recs = append(recs, r)
		}
	}
	if len(recs) != 1 {
		t.Fatalf("%d records of the interrupted rollout, want 1: %+v", len(recs), recs)
	}
	rec := recs[0]
	if rec.Status != fleetroll.StatusInterrupted || rec.Queue == nil || rec.Queue.SupersededBy != id {
		t.Fatalf("interrupted rollout's record: status %s, queue %+v", rec.Status, rec.Queue)
	}
	for _, want := range []string{"stopped with " + units[1] + " in phase start in flight", "a newer trigger (" + id + ") took its place"} {
		if !strings.Contains(rec.Error, want) {
			t.Errorf("its error %q does not say %q", rec.Error, want)
		}
	}
	outcomes := map[string]fleetroll.Outcome{}
	for _, u := range rec.Units {
		outcomes[u.Unit] = u.Outcome
	}
	if want := map[string]fleetroll.Outcome{units[0]: fleetroll.OutcomeRestarted, units[1]: fleetroll.OutcomeInterrupted, units[2]: fleetroll.OutcomePending}; !maps.Equal(outcomes, want) {
		t.Fatalf("its units %v, want %v", outcomes, want)
	}
}

// serve restores what a fleetroll that died left in flight: at start-up,
// and when the service's lock expires while serve runs. Each killed
// rollout is recorded as interrupted.
func TestServeRecoversAtStartAndOnLockExpiry(t *testing.T) {
	rs := newReceivers(t)
	ctx := t.Context()
	intents := coord.Intents{KAPI: rs.kapi}
	leave := func(unit string) string {
		t.Helper()
		id := fleetroll.NewID()
		rs.fleet.Update(unit, func(u *fakefleet.Unit) { u.Desired, u.Active, u.Sub = "loaded", "inactive", "dead" })
		if err := intents.Put(ctx, "my-service", coord.Intent{Rollout: id, Owner: "a fleetroll restart that died", Started: time.Now(),
			Units: []coord.IntentUnit{{Unit: unit, Phase: fleetroll.PhaseStop, Since: time.Now()}}}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	recovered := func(id, unit string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			rec, found, err := coord.History{KAPI: rs.kapi}.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			u, _ := rs.fleet.Unit(unit)
			in, err := intents.Get(ctx, "my-service")
			if err != nil {
				t.Fatal(err)
			}
			if found && rec.Status == fleetroll.StatusInterrupted && u.Active == "active" && u.Restarts == 1 && in == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not recovered: %+v (found %v), %s %+v", id, rec, found, unit, u)
			}
			<-tick.C
		}
	}
	// 1. At start-up.
	first := leave(testUnits[0])
	rs.start(t, "receiver")
	recovered(first, testUnits[0])
	// 2. A restart holds the lock (its lease: 1 s), stops a unit and dies.
	// It takes the lock once the receiver's recovery has let it go.
	for {
		resp, err := rs.kapi.Set(ctx, coord.LockKey("my-service"), "a fleetroll restart", &client.SetOptions{TTL: time.Second, PrevExist: client.PrevNoExist})
		if err == nil {
			break
		}
		if !client.IsKeyNotFound(err) && !strings.Contains(err.Error(), "already exists") {
			t.Fatal(err)
		}
		_ = resp
		g, err := rs.kapi.Get(ctx, coord.LockKey("my-service"), nil)
		if client.IsKeyNotFound(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		w := rs.kapi.Watcher(coord.LockKey("my-service"), &client.WatcherOptions{AfterIndex: g.Index})
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = w.Next(wctx) // its next change: released
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	second := leave(testUnits[1])
	recovered(second, testUnits[1])
}

// A receiver shut down mid-rollout brings its unit back and leaves the
// trigger queued with its progress: the next receiver resumes the rollout
// without restarting the units already restarted, and reports it once.
func TestShutdownLeavesTheTriggerToTheNext(t *testing.T) {
	rs := newReceivers(t)
	a := rs.start(t, "receiver A")
	stopping := make(chan struct{})
	var once atomic.Bool
	rs.fleet.SetHook(func(call string) {
		if call == "set "+testUnits[1]+" loaded" && once.CompareAndSwap(false, true) {
			close(stopping)
		}
	})
	resp, ans := a.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, rs.push(t), jsonHeaders())
	if resp.StatusCode != 202 {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
	id := ans["id"].(string)
	<-stopping
	a.stop()
	all, err := (coord.Triggers{KAPI: rs.kapi}).List(t.Context())
	if err != nil || len(all["my-service"]) != 1 {
		t.Fatalf("queue %v %v", all, err)
	}
	left := all["my-service"][0]
	if left.Runner != "" || left.Record.Status != fleetroll.StatusQueued || left.Record.ID != id || left.Record.Restarted() != 1 {
		t.Fatalf("trigger left %+v", left)
	}
	if n := rs.calls.Load(); n != 0 {
		t.Fatalf("%d callbacks before the end", n)
	}
	b := rs.start(t, "receiver B")
	final := waitFinal(t, b, id)
	if final.Status != fleetroll.StatusSucceeded || final.Restarted() != 3 || final.Queue == nil || len(final.Queue.Resumed) != 1 {
		t.Fatalf("rollout %+v", final)
	}
	// The second unit was brought back at the shutdown, then restarted by
	// B: its restart had not been seen through.
	for i, want := range []int{1, 2, 1} {
		if u, _ := rs.fleet.Unit(testUnits[i]); u.Restarts != want {
			t.Errorf("%s restarted %d times, want %d", testUnits[i], u.Restarts, want)
		}
	}
	<-rs.got
	b.stop()
	if n := rs.calls.Load(); n != 1 {
		t.Fatalf("%d callbacks, want 1", n)
	}
}

// A receiver died with a deploy paused after its canary. The receiver that
// takes over pauses again at once, for the same canary (nothing else is
// touched); an abort then rolls the canary back to the release the deploy
// replaced, read from the release history, not to the deploy's own.
func TestTakenOverCanaryDeployPausesAndRollsBack(t *testing.T) {
	rs := newReceivers(t)
	ctx := t.Context()
	units := testUnits[:3]
	id := fleetroll.NewID()
	now := time.Now().UTC()
	v1 := fleetroll.Release{Image: fmt.Sprintf("%s@sha256:%064x", releaseImage, 1), Rollout: "000000000001"}
	v2 := fleetroll.Release{Image: fmt.Sprintf("%s@sha256:%064x", releaseImage, 2), Rollout: id}
	store := coord.ReleaseStore{KAPI: rs.kapi}
	if err := store.Set(ctx, "my-service", v1, nil); err != nil {
		t.Fatal(err)
	}
	if err := store.Set(ctx, "my-service", v2, &v1); err != nil {
		t.Fatal(err)
	}
	trig := fleetroll.Trigger{Source: string(SourceManual), Digest: v2.Digest(), Received: now}
	rec := fleetroll.Report{Version: fleetroll.SchemaVersion, ID: id, Service: "my-service", Status: fleetroll.StatusPaused, Trigger: trig,
		Started: now, By: "receiver A", Queue: &fleetroll.QueueInfo{Queued: now},
		Canary: &fleetroll.CanaryReport{Units: units[:1], Paused: now},
		Units: []fleetroll.UnitReport{
			{Unit: units[0], Outcome: fleetroll.OutcomeRestarted, ImageDigest: v2.Digest()},
			{Unit: units[1], Outcome: fleetroll.OutcomePending},
			{Unit: units[2], Outcome: fleetroll.OutcomePending},
		}}
	rs.leftByA(t, rec, "")
	if err := (coord.Pauses{KAPI: rs.kapi}).Open(ctx, coord.Pause{Rollout: id, Service: "my-service", Canaries: units[:1], Since: now}); err != nil {
		t.Fatal(err)
	}

	b := newTestEnv(t, func(o *Options) {
		cfg, err := ParseConfig([]byte(strings.Replace(testConfig, "    ports: 8901-8903\n", "    ports: 8901-8903\n    image: "+releaseImage+"\n    canary: 1\n", 1)), testBase())
		if err != nil {
			t.Fatal(err)
		}
		o.Config, o.Fleet, o.Etcd, o.Owner, o.Resolver = cfg, rs.api, rs.kapi, "receiver B", &fakeResolver{}
		o.LeaseTTL = 3 * time.Second
		for i := range o.Config.Services {
			o.Config.Services[i].Settings.Lock, o.Config.Services[i].Settings.LockTTL = rollout.LockWait, 3*time.Second
		}
	})
	paused := waitStatus(t, b, id, fleetroll.StatusPaused)
	if paused.Canary == nil || !slices.Equal(paused.Canary.Units, units[:1]) {
		t.Fatalf("paused record: %+v", paused.Canary)
	}
	if sets := rs.fleet.Sets(); len(sets) != 0 {
		t.Fatalf("touched before the decision: %v", sets)
	}
	auth := withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken)
	if resp, ans := b.do(t, "POST", "/rollouts/"+id+"/abort", nil, auth); resp.StatusCode != 200 {
		t.Fatalf("abort: %d %v", resp.StatusCode, ans)
	}
	final := waitFinal(t, b, id)
	if final.Status != fleetroll.StatusRolledBack || len(final.Units) != 3 {
		t.Fatalf("rollout %+v", final)
	}
	want := []fleetroll.Outcome{fleetroll.OutcomeRolledBack, fleetroll.OutcomeUntouched, fleetroll.OutcomeUntouched}
	for i, u := range final.Units {
		if u.Unit != units[i] || u.Outcome != want[i] {
			t.Errorf("unit %d: %+v, want %s", i, u, want[i])
		}
	}
	if final.Units[0].ImageDigest != v1.Digest() || final.Release == nil || final.Release.From == nil || final.Release.From.Image != v1.Image {
		t.Fatalf("release %+v, canary's digest %s", final.Release, final.Units[0].ImageDigest)
	}
	if cur, err := store.Current(ctx, "my-service"); err != nil || cur == nil || cur.Image != v1.Image {
		t.Fatalf("current release %+v %v", cur, err)
	}
	if got := rs.fleet.Sets(); !slices.Equal(got, []string{units[0] + " loaded", units[0] + " launched"}) {
		t.Fatalf("sets %v", got)
	}
}

// Receivers of other services share the etcd: GET /rollouts lists only the
// queue entries of the services this receiver serves.
func TestRolloutsListOnlyServicesServed(t *testing.T) {
	rs := newReceivers(t)
	a := rs.start(t, "receiver A")
	rs.leftByA(t, fleetroll.Report{ID: "0000000000f1", Service: "elsewhere", Status: fleetroll.StatusQueued,
		Trigger: fleetroll.Trigger{Source: "manual", RequestID: "x"}}, "")
	rs.leftByA(t, fleetroll.Report{ID: "0000000000f2", Service: "other", Status: fleetroll.StatusQueued,
		Trigger: fleetroll.Trigger{Source: "manual", RequestID: "y"}}, "")
	auth := map[string]string{"Authorization": "Bearer " + testToken}
	for _, q := range []string{"", "?service=elsewhere"} {
		resp, err := http.DefaultClient.Do(mustRequest(t, "GET", a.http.URL+"/rollouts"+q, auth))
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			Rollouts []fleetroll.Report `json:"rollouts"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&list)
		resp.Body.Close()
		var ids []string
		for _, r := range list.Rollouts {
			ids = append(ids, r.ID)
		}
		if slices.Contains(ids, "0000000000f1") || (q == "" && !slices.Contains(ids, "0000000000f2")) {
			t.Fatalf("GET /rollouts%s: %v", q, ids)
		}
	}
}

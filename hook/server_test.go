package hook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/fleetroll/fleetroll/internal/etcdtest"
	"github.com/fleetroll/fleetroll/internal/golden"
)

func registryHeaders(token string) map[string]string {
	h := map[string]string{"Content-Type": "application/vnd.docker.distribution.events.v1+json"}
	if token != "" {
		h["Authorization"] = "Bearer " + token
	}
	return h
}

func githubPackageBody(tag string) []byte {
	return []byte(`{"action":"published","package":{"name":"my-service","namespace":"demo","ecosystem":"CONTAINER",
"package_type":"CONTAINER","package_version":{"name":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","container_metadata":{"tag":{"name":"` + tag + `","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}}},
"repository":{"full_name":"demo/my-service"},"sender":{"login":"octo"}}`)
}

func githubHeaders(secret string, body []byte, event string) map[string]string {
	h := map[string]string{"Content-Type": "application/json", "X-GitHub-Event": event}
	if secret != "" {
		h["X-Hub-Signature-256"] = SignGitHub(secret, body)
	}
	return h
}

func TestAnswers(t *testing.T) {
	hub := fixture(t, "dockerhub-push.json")
	oci := fixture(t, "registry-push-oci.json")
	v2s2 := fixture(t, "registry-push-docker-v2s2.json")
	var ociHeaders struct {
		Headers map[string]string `json:"headers"`
	}
	if err := json.Unmarshal(fixture(t, "registry-push-oci.headers.json"), &ociHeaders); err != nil {
		t.Fatal(err)
	}
	hubDev := bytes.Replace(hub, []byte(`"tag": "latest"`), []byte(`"tag": "dev"`), 1)
	hubNoRepo := bytes.Replace(hub, []byte(`"repo_name"`), []byte(`"repo_nom"`), 1)
	layerOnly := []byte(`{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","repository":"demo/my-service","tag":""}}]}`)
	pull := bytes.Replace(oci, []byte(`"action": "push"`), []byte(`"action": "pull"`), 1)
	gh := githubPackageBody("latest")
	ghRegistryPackage := fixture(t, "github-registry-package.json")

	for _, tc := range []struct {
		name    string
		method  string
		path    string
		body    []byte
		headers map[string]string
		code    int
		want    string // in the body
	}{
		{"dockerhub accepted", "POST", "/webhooks/dockerhub/" + testHubToken, hub, jsonHeaders(), 202, "status_url"},
		{"dockerhub wrong token", "POST", "/webhooks/dockerhub/wrong-token-0123456789", hub, jsonHeaders(), 403, "wrong token"},
		{"dockerhub missing token", "POST", "/webhooks/dockerhub", hub, jsonHeaders(), 401, "missing token"},
		{"dockerhub no such tag", "POST", "/webhooks/dockerhub/" + testHubToken, hubDev, jsonHeaders(), 200, "no service is configured for Docker Hub demo/my-service:dev"},
		{"dockerhub malformed JSON", "POST", "/webhooks/dockerhub/" + testHubToken, hub[:40], jsonHeaders(), 400, "malformed JSON"},
		{"dockerhub not an object", "POST", "/webhooks/dockerhub/" + testHubToken, []byte(`[1,2]`), jsonHeaders(), 400, "want"},
		{"dockerhub missing repo_name", "POST", "/webhooks/dockerhub/" + testHubToken, hubNoRepo, jsonHeaders(), 400, "repository.repo_name"},
		{"dockerhub wrong content type", "POST", "/webhooks/dockerhub/" + testHubToken, hub, map[string]string{"Content-Type": "text/plain"}, 415, "application/json"},
		{"dockerhub wrong method", "GET", "/webhooks/dockerhub/" + testHubToken, nil, nil, 405, ""},
		{"registry OCI accepted", "POST", "/webhooks/registry", oci, withHeaders(ociHeaders.Headers, "Authorization", "Bearer "+testRegToken), 202, "status_url"},
		{"registry docker v2s2 accepted", "POST", "/webhooks/registry", v2s2, registryHeaders(testRegToken), 202, "status_url"},
		{"registry plain JSON type", "POST", "/webhooks/registry", v2s2, withHeaders(jsonHeaders(), "Authorization", "Bearer "+testRegToken), 202, "status_url"},
		{"registry missing token", "POST", "/webhooks/registry", oci, registryHeaders(""), 401, "missing Authorization"},
		{"registry wrong token", "POST", "/webhooks/registry", oci, registryHeaders("registry-token-example"), 401, "wrong token"},
		{"registry wrong scheme", "POST", "/webhooks/registry", oci, withHeaders(registryHeaders(""), "Authorization", "Basic "+testRegToken), 401, "missing Authorization"},
		{"registry scheme in lower case", "POST", "/webhooks/registry", oci, withHeaders(registryHeaders(""), "Authorization", "bearer "+testRegToken), 202, "status_url"},
		{"registry the API token", "POST", "/webhooks/registry", oci, registryHeaders(testToken), 401, "wrong token"},
		{"registry wrong content type", "POST", "/webhooks/registry", oci, withHeaders(registryHeaders(testRegToken), "Content-Type", "text/plain"), 415, "Content-Type"},
		{"registry malformed", "POST", "/webhooks/registry", []byte(`{"events":`), registryHeaders(testRegToken), 400, "malformed"},
		{"registry no events", "POST", "/webhooks/registry", []byte(`{}`), registryHeaders(testRegToken), 400, "missing events"},
		{"registry layer only", "POST", "/webhooks/registry", layerOnly, registryHeaders(testRegToken), 200, "ignored"},
		{"registry pull", "POST", "/webhooks/registry", pull, registryHeaders(testRegToken), 200, "ignored"},
		{"registry wrong method", "PUT", "/webhooks/registry", oci, registryHeaders(testRegToken), 405, ""},
		{"github accepted", "POST", "/webhooks/github", gh, githubHeaders(testGHSecret, gh, "package"), 202, "status_url"},
		{"github older event name", "POST", "/webhooks/github", gh, githubHeaders(testGHSecret, gh, "registry_package"), 202, "status_url"},
		{"github missing signature", "POST", "/webhooks/github", gh, githubHeaders("", gh, "package"), 401, "X-Hub-Signature-256"},
		{"github wrong signature", "POST", "/webhooks/github", gh, githubHeaders("another-secret-012345678", gh, "package"), 403, "wrong signature"},
		{"github form encoded", "POST", "/webhooks/github", gh, withHeaders(githubHeaders(testGHSecret, gh, "package"), "Content-Type", "application/x-www-form-urlencoded"), 415, "application/json"},
		{"github ping", "POST", "/webhooks/github", []byte(`{"zen":"x"}`), githubHeaders(testGHSecret, []byte(`{"zen":"x"}`), "ping"), 200, "pong"},
		{"github push event", "POST", "/webhooks/github", []byte(`{}`), githubHeaders(testGHSecret, []byte(`{}`), "push"), 200, "not a package event"},
		{"github other tag", "POST", "/webhooks/github", githubPackageBody("dev"), githubHeaders(testGHSecret, githubPackageBody("dev"), "package"), 200, "ignored"},
		{"github malformed", "POST", "/webhooks/github", []byte(`{"package":`), githubHeaders(testGHSecret, []byte(`{"package":`), "package"), 400, "malformed"},
		{"manual accepted", "POST", "/rollouts", []byte(`{"service":"other"}`), withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken), 202, "status_url"},
		{"manual unknown service", "POST", "/rollouts", []byte(`{"service":"nope"}`), withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken), 404, "no service"},
		{"manual missing service", "POST", "/rollouts", []byte(`{}`), withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken), 400, "missing service"},
		{"manual missing token", "POST", "/rollouts", []byte(`{"service":"other"}`), jsonHeaders(), 401, "missing Authorization"},
		{"manual wrong token", "POST", "/rollouts", []byte(`{"service":"other"}`), withHeaders(jsonHeaders(), "Authorization", "Bearer "+testRegToken), 401, "wrong token"},
		{"manual scheme in capitals", "POST", "/rollouts", []byte(`{"service":"other"}`), withHeaders(jsonHeaders(), "Authorization", "BEARER "+testToken), 202, "status_url"},
		{"manual wrong content type", "POST", "/rollouts", []byte(`{"service":"other"}`), map[string]string{"Authorization": "Bearer " + testToken, "Content-Type": "text/plain"}, 415, "application/json"},
		{"list missing token", "GET", "/rollouts", nil, nil, 401, "missing Authorization"},
		{"list wrong token", "GET", "/rollouts", nil, map[string]string{"Authorization": "Bearer nope"}, 401, "wrong token"},
		{"list the Docker Hub token", "GET", "/rollouts", nil, map[string]string{"Authorization": "Bearer " + testHubToken}, 401, "wrong token"},
		{"list of a service", "GET", "/rollouts?service=other", nil, map[string]string{"Authorization": "Bearer " + testToken}, 200, "rollouts"},
		{"list of an unknown service", "GET", "/rollouts?service=nope", nil, map[string]string{"Authorization": "Bearer " + testToken}, 404, "no such service"},
		{"list of a path", "GET", "/rollouts?service=../..", nil, map[string]string{"Authorization": "Bearer " + testToken}, 404, "no such service"},
		{"rollout ID of a path", "GET", "/rollouts/..%2F..%2Fx", nil, map[string]string{"Authorization": "Bearer " + testToken}, 404, "no such rollout"},
		{"dockerhub the API token", "POST", "/webhooks/dockerhub/" + testToken, hub, jsonHeaders(), 403, "wrong token"},
		{"github registry_package event", "POST", "/webhooks/github", ghRegistryPackage, githubHeaders(testGHSecret, ghRegistryPackage, "registry_package"), 202, "status_url"},
		{"list", "GET", "/rollouts", nil, map[string]string{"Authorization": "Bearer " + testToken}, 200, "rollouts"},
		{"unknown rollout", "GET", "/rollouts/0123abcd", nil, map[string]string{"Authorization": "Bearer " + testToken}, 404, "no such rollout"},
		{"rollouts wrong method", "DELETE", "/rollouts", nil, nil, 405, ""},
		{"healthz", "GET", "/healthz", nil, nil, 200, "ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newTestEnv(t, nil)
			resp, body := env.do(t, tc.method, tc.path, tc.body, tc.headers)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d: %v", resp.StatusCode, tc.code, body)
			}
			raw, _ := json.Marshal(body)
			if tc.want != "" {
				mustContain(t, string(raw), tc.want)
			}
			id := resp.Header.Get("X-Request-ID")
			if id == "" {
				t.Fatal("no X-Request-ID")
			}
			if tc.code != 405 && tc.path != "/healthz" && body["request_id"] != nil && body["request_id"] != id {
				t.Fatalf("request_id %v in body, %s in header", body["request_id"], id)
			}
			logs := env.logs.String()
			mustContain(t, logs, "request_id="+id)
			if tc.code == 401 {
				want := `Bearer realm="fleetroll"`
				if tc.want == "wrong token" {
					want += `, error="invalid_token"`
				}
				if got := resp.Header.Get("WWW-Authenticate"); got != want {
					t.Fatalf("WWW-Authenticate: %q, want %q", got, want)
				}
			}
			for _, secret := range []string{testToken, testHubToken, testRegToken, testGHSecret} {
				if strings.Contains(logs, secret) {
					t.Fatalf("a secret was logged:\n%s", logs)
				}
			}
			rollouts := env.srv.Store().List("")
			if tc.code == 202 {
				if len(rollouts) != 1 || body["id"] != rollouts[0].ID || body["status_url"] != "/rollouts/"+rollouts[0].ID {
					t.Fatalf("202 answer %v does not name the queued rollout %+v", body, rollouts)
				}
				return
			}
			if len(rollouts) != 0 || len(env.fleet.Sets()) != 0 {
				t.Fatalf("a request answered %d started something: %+v %v", tc.code, rollouts, env.fleet.Sets())
			}
		})
	}
}

func TestBodyLimit(t *testing.T) {
	env := newTestEnv(t, func(o *Options) { o.BodyLimit = 512 })
	big := append([]byte(`{"callback_url":"`), bytes.Repeat([]byte("x"), 1024)...)
	big = append(big, `"}`...)
	resp, body := env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, big, jsonHeaders())
	if resp.StatusCode != 413 {
		t.Fatalf("status %d: %v", resp.StatusCode, body)
	}
	// Chunked, without a Content-Length: MaxBytesReader catches it.
	req, _ := http.NewRequest("POST", env.http.URL+"/webhooks/registry", struct{ *bytes.Reader }{bytes.NewReader(big)})
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+testRegToken)
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != 413 {
		t.Fatalf("chunked status %d", resp2.StatusCode)
	}
	if n := len(env.srv.Store().List("")); n != 0 {
		t.Fatalf("%d rollouts after oversize bodies", n)
	}
}

func TestRegistryEnvelopeGivesOneRolloutPerService(t *testing.T) {
	env := newTestEnv(t, func(o *Options) { o.QuietPeriod = time.Hour }) // keep it queued
	body := []byte(`{"events":[
 {"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"demo/my-service","tag":"v1","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111"}},
 {"action":"push","target":{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","repository":"demo/my-service","digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333"}},
 {"action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","repository":"demo/my-service","tag":"release-2","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222"}}]}`)
	resp, ans := env.do(t, "POST", "/webhooks/registry", body, registryHeaders(testRegToken))
	if resp.StatusCode != 202 {
		t.Fatalf("status %d: %v", resp.StatusCode, ans)
	}
	if rs := ans["rollouts"].([]any); len(rs) != 1 {
		t.Fatalf("rollouts = %v", rs)
	}
	ro, _ := env.srv.Store().Get(ans["id"].(string))
	if ro.Trigger.Tag != "release-2" || ro.Trigger.Digest != "sha256:2222222222222222222222222222222222222222222222222222222222222222" {
		t.Fatalf("the rollout must carry the envelope's last matching event: %+v", ro.Trigger)
	}
}

func TestSourceAllowListAndTrustedProxies(t *testing.T) {
	env := newTestEnv(t, func(o *Options) {
		o.AllowFrom = mustPrefixes(t, "10.1.2.0/24")
		o.TrustedProxies = mustPrefixes(t, "127.0.0.1/32")
	})
	hdr := map[string]string{"Authorization": "Bearer " + testToken}
	if resp, _ := env.do(t, "GET", "/rollouts", nil, hdr); resp.StatusCode != 403 {
		t.Fatalf("loopback not on the allow-list: %d", resp.StatusCode)
	}
	if resp, _ := env.do(t, "GET", "/rollouts", nil, withHeaders(hdr, "X-Forwarded-For", "10.1.2.3")); resp.StatusCode != 200 {
		t.Fatalf("allowed client behind a trusted proxy: %d", resp.StatusCode)
	}
	// The client can prepend anything; only the hop the proxy added counts.
	if resp, _ := env.do(t, "GET", "/rollouts", nil, withHeaders(hdr, "X-Forwarded-For", "10.1.2.3, 192.0.2.7")); resp.StatusCode != 403 {
		t.Fatalf("spoofed X-Forwarded-For accepted: %d", resp.StatusCode)
	}
	if resp, _ := env.do(t, "GET", "/healthz", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("healthz is open to all: %d", resp.StatusCode)
	}
	// Without trusted proxies the header is ignored.
	env2 := newTestEnv(t, func(o *Options) { o.AllowFrom = mustPrefixes(t, "10.1.2.0/24") })
	if resp, _ := env2.do(t, "GET", "/rollouts", nil, withHeaders(hdr, "X-Forwarded-For", "10.1.2.3")); resp.StatusCode != 403 {
		t.Fatalf("X-Forwarded-For believed from an untrusted peer: %d", resp.StatusCode)
	}
}

func TestMetrics(t *testing.T) {
	env := newTestEnv(t, nil)
	env.do(t, "POST", "/webhooks/dockerhub/wrong-token-0123456789", []byte(`{}`), jsonHeaders())
	resp, ans := env.do(t, "POST", "/rollouts", []byte(`{"service":"other"}`), withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken))
	if resp.StatusCode != 202 {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
	env.waitRollout(t, ans["id"].(string))
	env.waitIdle(t)
	// The API's reads and the page's polls are not webhooks (issue 25).
	if resp, _ := env.do(t, "GET", "/rollouts", nil, withHeaders(nil, "Authorization", "Bearer "+testToken)); resp.StatusCode != 200 {
		t.Fatalf("GET /rollouts: %d", resp.StatusCode)
	}
	pageResp, _ := env.do(t, "GET", "/ui/state", nil, nil)
	// On the main listener, the metrics take the API token.
	req, _ := http.NewRequest("GET", env.http.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(r.Body)
	text := buf.String()
	for _, want := range []string{
		`fleetroll_webhooks_total{code="403",sender="dockerhub"} 1`,
		`fleetroll_webhooks_total{code="202",sender="manual"} 1`,
		`fleetroll_rollouts_total{result="succeeded",service="other"} 1`,
		`fleetroll_unit_restart_duration_seconds_count{service="other"} 1`,
		`fleetroll_queue_depth 0`,
		`fleetroll_rollouts_running 0`,
		`fleetroll_api_requests_total{code="200",handler="api"} 1`,
		fmt.Sprintf(`fleetroll_api_requests_total{code="%d",handler="page"} 1`, pageResp.StatusCode),
	} {
		mustContain(t, text, want)
	}
	for _, not := range []string{`sender="api"`, `sender="ui"`} {
		if strings.Contains(text, not) {
			t.Errorf("fleetroll_webhooks_total counts %s:\n%s", not, text)
		}
	}
}

// The whole path: a Docker Hub push is accepted, the service rolled, the
// status API shows per-unit phases, and the callback reports success.
func TestDockerHubRollsAndCallsBack(t *testing.T) {
	got := make(chan CallbackResult, 1)
	cb := http.NewServeMux()
	cb.HandleFunc("POST /u/demo/my-service/hook/{id}/", func(w http.ResponseWriter, r *http.Request) {
		var res CallbackResult
		_ = json.NewDecoder(r.Body).Decode(&res)
		got <- res
	})
	cbs := newHTTPServer(t, cb)
	env := newTestEnv(t, func(o *Options) {
		c, err := NewCallbacker([]string{cbs.URL}, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		o.Callbacks = c
		o.PublicURL = "https://hooks.example.com"
	})
	hub := bytes.Replace(fixture(t, "dockerhub-push.json"), []byte("https://registry.hub.docker.com"), []byte(cbs.URL), 1)
	resp, ans := env.do(t, "POST", "/webhooks/dockerhub/"+testHubToken, hub, jsonHeaders())
	if resp.StatusCode != 202 || ans["status_url"] != "https://hooks.example.com/rollouts/"+ans["id"].(string) {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
	ro := env.waitRollout(t, ans["id"].(string))
	if ro.Status != fleetroll.StatusSucceeded || len(ro.Units) != 3 {
		t.Fatalf("rollout = %+v", ro)
	}
	for _, u := range ro.Units {
		if u.Outcome != fleetroll.OutcomeRestarted || len(u.Phases) < 2 {
			t.Fatalf("unit %+v", u)
		}
	}
	for _, u := range testUnits[:3] {
		if unit, _ := env.fleet.Unit(u); unit.Restarts != 1 {
			t.Fatalf("%s restarted %d times", u, unit.Restarts)
		}
	}
	select {
	case res := <-got:
		// target_url is for the person reading Docker Hub: the status page
		// opened on the rollout; status_url stays the API's.
		if res.State != "success" || res.Context != "fleetroll" || res.TargetURL != "https://hooks.example.com/ui/rollouts/"+ans["id"].(string) {
			t.Fatalf("callback = %+v", res)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no callback")
	}
	// The status API shows the same.
	_, api := env.do(t, "GET", "/rollouts/"+ro.ID, nil, map[string]string{"Authorization": "Bearer " + testToken})
	if api["status"] != "succeeded" || api["trigger"].(map[string]any)["source"] != "dockerhub" {
		t.Fatalf("status API: %v", api)
	}
	raw, _ := json.Marshal(api)
	if strings.Contains(string(raw), "callback") {
		t.Fatalf("the callback URL leaks through the status API: %s", raw)
	}
	delete(api, "request_id")
	raw, _ = json.Marshal(api)
	golden.Check(t, "rollout-dockerhub.golden.json", raw)
}

func TestHandlerPanicAnswers500(t *testing.T) {
	env := newTestEnv(t, nil)
	h := env.srv.middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic("boom") }))
	srv := newHTTPServer(t, h)
	resp, err := http.Get(srv.URL + "/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 500 || resp.Header.Get("X-Request-ID") == "" {
		t.Fatalf("status %d", resp.StatusCode)
	}
	mustContain(t, env.logs.String(), "handler panic")
}

// With etcd, every rollout is recorded in the shared history, and the status
// API shows the rollouts of other receivers too.
func TestHistoryInEtcd(t *testing.T) {
	url, _ := etcdtest.Start(t)
	kapi, err := coord.Connect(coord.Config{Endpoints: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	other := fleetroll.Report{ID: "0123456789ab", Service: "other", Status: fleetroll.StatusSucceeded, By: "another receiver", Started: time.Now().Add(-time.Hour)}
	if err := (coord.History{KAPI: kapi}).Save(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	env := newTestEnv(t, func(o *Options) { o.Etcd, o.Owner = kapi, "this receiver" })
	auth := withHeaders(jsonHeaders(), "Authorization", "Bearer "+testToken)
	resp, ans := env.do(t, "POST", "/rollouts", []byte(`{"service":"other"}`), auth)
	if resp.StatusCode != 202 {
		t.Fatalf("%d %v", resp.StatusCode, ans)
	}
	id := ans["id"].(string)
	final := env.waitRollout(t, id)
	// The history has the record once the API shows it finished, and it
	// is the same document.
	recs, err := coord.History{KAPI: kapi}.List(context.Background(), "other")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].ID != id || recs[0].Status != fleetroll.StatusSucceeded || recs[0].By != "this receiver" || len(recs[0].Units) != 1 {
		t.Fatalf("history = %+v", recs)
	}
	_, fromMemory := env.do(t, "GET", "/rollouts/"+id, nil, auth)
	delete(fromMemory, "request_id")
	if a, b := canonical(t, fromMemory), canonical(t, recs[0]); a != b {
		t.Fatalf("memory and etcd differ:\n%s\n%s", a, b)
	}
	if final.Version != fleetroll.SchemaVersion {
		t.Fatalf("version %d", final.Version)
	}
	_, list := env.do(t, "GET", "/rollouts", nil, auth)
	hist, _ := list["history"].([]any)
	if len(hist) != 1 || hist[0].(map[string]any)["id"] != other.ID {
		t.Fatalf("GET /rollouts history = %v", list["history"])
	}
	if resp, got := env.do(t, "GET", "/rollouts/"+other.ID, nil, auth); resp.StatusCode != 200 || got["by"] != "another receiver" {
		t.Fatalf("%d %v", resp.StatusCode, got)
	}
}

// canonical renders a JSON document with sorted keys.
func canonical(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(m)
	return string(out)
}

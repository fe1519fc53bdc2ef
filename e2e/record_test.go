package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"testing"

	fr "github.com/fleetroll/fleetroll/fleetroll"
)

// canonical renders a JSON document with its keys sorted.
func canonical(t *testing.T, raw []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, raw)
	}
	out, _ := json.MarshalIndent(v, "", " ")
	return string(out)
}

func getRaw(t *testing.T, url string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+serveToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, raw
}

// statusJSON runs fleetroll status ID -o json against the cluster's etcd.
func statusJSON(t *testing.T, id string) []byte {
	t.Helper()
	c := clusterOf(t)
	cmd := exec.Command(binary, "status", id, "-o", "json", "--etcd-endpoints", c.EtcdURL)
	cmd.Env = c.Env()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fleetroll status %s: %v", id, err)
	}
	return out
}

// One rollout, one document: what restart -o json prints, what fleetroll
// status reads from etcd, and what serve's API answers from memory and from
// etcd are the same, for a rollout of the CLI and one of serve.
func TestOneRecordEverywhere(t *testing.T) {
	c := needCluster(t)
	units := launchDemo(t, "e2e-rec", "19221", "19222")
	serveArgs := append(secretArgs(t), "--service", "e2e-rec", "--ports", "19221,19222", "--grace", "0s", "--min-healthy-time", "0s",
		"--etcd-endpoints", c.EtcdURL, "--lock", "fail")
	base := startServe(t, serveArgs...)

	// A rollout of the CLI.
	cmd := exec.Command(binary, "restart", "e2e-rec", "--ports", "19221,19222", "--endpoint", c.Endpoint, "--grace", "0s", "--min-healthy-time", "0s",
		"--etcd-endpoints", c.EtcdURL, "-o", "json")
	cmd.Env = c.Env()
	printed, err := cmd.Output()
	if err != nil {
		t.Fatalf("fleetroll restart: %v\n%s", err, printed)
	}
	var rep fr.Report
	if err := json.Unmarshal(printed, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Status != fr.StatusSucceeded || rep.Version != fr.SchemaVersion || rep.Trigger.Source != "cli" || len(rep.Units) != 2 {
		t.Fatalf("report: %s", printed)
	}
	for _, u := range rep.Units {
		if len(u.Phases) != 2 || u.Phases[0].Phase != fr.PhaseStop || u.Phases[1].Finished.IsZero() {
			t.Fatalf("phases of %s: %+v", u.Unit, u.Phases)
		}
	}
	want := canonical(t, printed)
	if got := canonical(t, statusJSON(t, rep.ID)); got != want {
		t.Fatalf("fleetroll status differs from restart -o json:\n%s\nwant\n%s", got, want)
	}
	code, fromAPI := getRaw(t, base+"/rollouts/"+rep.ID)
	if code != 200 {
		t.Fatalf("GET /rollouts/%s: %d %s", rep.ID, code, fromAPI)
	}
	if got := canonical(t, fromAPI); got != want {
		t.Fatalf("GET /rollouts/{id} (etcd) differs from restart -o json:\n%s\nwant\n%s", got, want)
	}

	// A rollout of serve: from its memory, from etcd through status, and
	// from etcd through a second receiver that never ran it.
	code, ans := post(t, base+"/rollouts", []byte(`{"service":"e2e-rec"}`),
		map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + serveToken})
	if code != 202 {
		t.Fatalf("POST /rollouts: %d %v", code, ans)
	}
	id := ans["id"].(string)
	if ro := waitStatus(t, base, id); ro["status"] != "succeeded" {
		t.Fatalf("rollout: %v", ro)
	}
	_, fromMemory := getRaw(t, base+"/rollouts/"+id)
	want = canonical(t, fromMemory)
	var served fr.Report
	if err := json.Unmarshal(fromMemory, &served); err != nil {
		t.Fatal(err)
	}
	if served.Trigger.Source != "manual" || served.Queue == nil || served.Queue.Queued.IsZero() || served.By == "" {
		t.Fatalf("serve's record: %s", fromMemory)
	}
	if got := canonical(t, statusJSON(t, id)); got != want {
		t.Fatalf("fleetroll status differs from the API's memory:\n%s\nwant\n%s", got, want)
	}
	other := startServe(t, serveArgs...)
	if _, fromEtcd := getRaw(t, other+"/rollouts/"+id); canonical(t, fromEtcd) != want {
		t.Fatalf("another receiver's GET /rollouts/{id} (etcd) differs:\n%s\nwant\n%s", canonical(t, fromEtcd), want)
	}
	after := systemd(t, units...)
	for i := range units {
		if !after[i].Up() {
			t.Errorf("%s: %+v", units[i], after[i])
		}
	}
}

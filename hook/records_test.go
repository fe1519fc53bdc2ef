package hook

import (
	"net/http"
	"testing"
)

// With the queue in etcd and nothing run yet, the rollouts are an empty
// list, never null: the page iterates them (a null broke it).
func TestRolloutsAreAListWhenThereAreNone(t *testing.T) {
	rs := newReceivers(t)
	a := rs.start(t, "receiver A")
	resp, ans := a.do(t, "GET", "/rollouts", nil, map[string]string{"Authorization": "Bearer " + testToken})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /rollouts: %d %v", resp.StatusCode, ans)
	}
	if l, ok := ans["rollouts"].([]any); !ok || l == nil || len(l) != 0 {
		t.Fatalf("rollouts: %#v, want an empty list", ans["rollouts"])
	}
	if l := a.srv.records.List(t.Context(), "my-service"); l.Rollouts == nil || l.History == nil {
		t.Fatalf("the read model's lists: %#v", l)
	}
}

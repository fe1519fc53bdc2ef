package loadtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	var rs []result
	for i := 1; i <= 100; i++ {
		r := result{latency: time.Duration(i) * time.Millisecond, slow: i%10 == 0}
		if i%25 == 0 {
			r.failure = "HTTP 502"
		}
		rs = append(rs, r)
	}
	rs = append(rs, result{latency: time.Second, failure: "connection reset"})
	got := summarize(rs)
	if got.Requests != 101 || got.Slow != 10 || got.Failed != 5 {
		t.Fatalf("counts: %+v", got)
	}
	if got.P50 != 51*time.Millisecond || got.P99 != 100*time.Millisecond || got.Max != time.Second {
		t.Fatalf("percentiles: p50 %s p99 %s max %s", got.P50, got.P99, got.Max)
	}
	if s := got.FailureSummary(); s != "HTTP 502: 4, connection reset: 1" {
		t.Fatalf("summary %q", s)
	}
	if s := summarize(nil).FailureSummary(); s != "none" {
		t.Fatalf("empty: %q", s)
	}
}

// The load keeps its rate, marks every Nth request slow, and counts what the
// server refuses.
func TestLoadAgainstAUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var n, slow atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Method != http.MethodPost {
			http.Error(w, "want POST", http.StatusMethodNotAllowed)
			return
		}
		if r.URL.Query().Get("sleep") != "" {
			slow.Add(1)
		}
		if n.Add(1)%10 == 0 {
			http.Error(w, "no", http.StatusBadGateway)
			return
		}
		fmt.Fprintln(w, "ok")
	})}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	load := StartLoad(ctx, sock, LoadOptions{Rate: 200, SlowEvery: 4, Slow: time.Millisecond})
	if err := load.WaitSent(ctx, 100); err != nil {
		t.Fatal(err)
	}
	res := load.Stop()
	if res.Requests < 100 || int64(res.Requests) != n.Load() {
		t.Fatalf("requests: result %d, server saw %d", res.Requests, n.Load())
	}
	if res.Slow != int(slow.Load()) || res.Slow != res.Requests/4 {
		t.Fatalf("slow: result %d, server saw %d, of %d", res.Slow, slow.Load(), res.Requests)
	}
	if res.Failed != res.Requests/10 || res.Failures["HTTP 502"] != res.Failed {
		t.Fatalf("failed: %d (%s) of %d", res.Failed, res.FailureSummary(), res.Requests)
	}
}

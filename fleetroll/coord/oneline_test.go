package coord

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fleetroll/fleetroll/internal/etcdtest"
	client "go.etcd.io/etcd/client/v2"
)

// etcd's client ends its cluster errors with a newline (one line per
// endpoint): through Connect they come out on one line, and what is
// underneath is still there (issue 25: an empty line on stderr, "\n" in
// JSON log values).
func TestEtcdErrorsAreOneLine(t *testing.T) {
	kapi, err := Connect(Config{Endpoints: []string{"http://127.0.0.1:1", "http://127.0.0.1:2"}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = kapi.Get(ctx, "/x", nil)
	var ce *client.ClusterError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %#v, want a ClusterError underneath", err)
	}
	if !strings.Contains(ce.Error(), "\n") {
		t.Skip("etcd's client no longer puts newlines in its errors")
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "127.0.0.1:1") || !strings.Contains(msg, "127.0.0.1:2") {
		t.Fatalf("err = %q, want one line naming both endpoints", msg)
	}
	if err := Ping(ctx, kapi); err == nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Ping: %q", err)
	}
	if _, err := kapi.Watcher("/x", nil).Next(ctx); err == nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("a watch: %q", err)
	}
}

// The codes of etcd's answers are read through the one-line errors, and
// no error is made of a success.
func TestEtcdCodesThroughOneLineErrors(t *testing.T) {
	url, _ := etcdtest.Start(t)
	kapi, err := Connect(Config{Endpoints: []string{url}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err = kapi.Get(ctx, "/nope", nil)
	if !isCode(err, client.ErrorCodeKeyNotFound) {
		t.Fatalf("a missing key: %v", err)
	}
	if _, err := kapi.Set(ctx, "/k", "v", nil); err != nil {
		t.Fatal(err)
	}
	if !client.IsKeyNotFound(err) {
		t.Fatalf("client.IsKeyNotFound: %v", err)
	}
	if _, err := kapi.Create(ctx, "/k", "w"); !isCode(err, client.ErrorCodeNodeExist) {
		t.Fatalf("create over a key: %v", err)
	}
}

// Certificate files given for an endpoint that is not https:// are refused,
// as fleet's are, rather than left unused on a plain-text connection.
func TestConnectRefusesTLSFilesForPlainEndpoints(t *testing.T) {
	for _, eps := range [][]string{{"http://127.0.0.1:2379"}, {"https://a:2379", "http://b:2379"}, {"127.0.0.1:2379"}} {
		_, err := Connect(Config{Endpoints: eps, CAFile: "/nonexistent/ca.pem"})
		if err == nil || !strings.Contains(err.Error(), "https://") {
			t.Errorf("%v with a CA file: %v, want a refusal naming https://", eps, err)
		}
	}
	if _, err := Connect(Config{Endpoints: []string{"http://127.0.0.1:2379"}}); err != nil {
		t.Errorf("a plain endpoint without files: %v", err)
	}
}

// Package coord coordinates rollouts through etcd (v2 API, which fleet
// itself uses): a cluster-wide lock per service, drain keys that take an
// instance out of the proxy before it is stopped, the history of rollout
// records, and Safety, which carries out a roll policy (lock, drain, health
// gate) as the roller's hooks.
package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// Config says how to reach etcd: its client URLs and, over TLS, the CA of
// its certificate and a client certificate and key (fleetroll's --etcd-*
// flags).
type Config struct {
	Endpoints                 []string
	CAFile, CertFile, KeyFile string
	// Timeout bounds each request (default 3s).
	Timeout time.Duration
}

// Connect returns a keys API for etcd. It does not dial; Ping does.
func Connect(cfg Config) (client.KeysAPI, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 3 * time.Second
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: cfg.Timeout}).DialContext,
		TLSHandshakeTimeout: cfg.Timeout,
		MaxIdleConnsPerHost: 4,
	}
	if files := (fleetroll.TLSFiles{CA: cfg.CAFile, Cert: cfg.CertFile, Key: cfg.KeyFile}); !files.IsZero() {
		// As fleet's: files named for a plain endpoint are refused, not
		// left unused on a connection the operator believes is TLS.
		for _, ep := range cfg.Endpoints {
			if !strings.HasPrefix(strings.ToLower(ep), "https://") {
				return nil, fmt.Errorf("etcd endpoint %q: TLS files are for https:// endpoints", ep)
			}
		}
		tc, err := files.Config()
		if err != nil {
			return nil, fmt.Errorf("etcd: %w", err)
		}
		tr.TLSClientConfig = tc
	}
	c, err := client.New(client.Config{Endpoints: cfg.Endpoints, Transport: tr, HeaderTimeoutPerRequest: cfg.Timeout})
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return oneLineKeys{client.NewKeysAPI(c)}, nil
}

// Ping checks that etcd answers.
func Ping(ctx context.Context, kapi client.KeysAPI) error {
	_, err := kapi.Get(ctx, "/", nil)
	return err
}

func isCode(err error, code int) bool {
	var e client.Error
	return errors.As(err, &e) && e.Code == code
}

// getJSON reads a JSON document from a key, with its etcd modified index;
// nil when the key does not exist. Errors name what (the intent of
// my-service).
func getJSON[T any](ctx context.Context, kapi client.KeysAPI, key, what string) (*T, uint64, error) {
	resp, err := kapi.Get(ctx, key, nil)
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	var v T
	if err := json.Unmarshal([]byte(resp.Node.Value), &v); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	return &v, resp.Node.ModifiedIndex, nil
}

// putJSON writes v to a key as JSON (opts: a compare-and-swap, say).
func putJSON(ctx context.Context, kapi client.KeysAPI, key, what string, v any, opts *client.SetOptions) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := kapi.Set(ctx, key, string(b), opts); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// deleteKey removes a key; one that is gone already is not an error.
func deleteKey(ctx context.Context, kapi client.KeysAPI, key, what string) error {
	if _, err := kapi.Delete(ctx, key, nil); err != nil && !isCode(err, client.ErrorCodeKeyNotFound) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

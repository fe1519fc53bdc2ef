// Package coord coordinates rollouts through etcd (v2 API, which fleet
// itself uses): a cluster-wide lock per service, drain keys that take an
// instance out of the proxy before it is stopped, the history of rollout
// records, and Safety, which carries out a roll policy (lock, drain, health
// gate) as the roller's hooks.
package coord

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	client "go.etcd.io/etcd/client/v2"
)

// Config says how to reach etcd, as fleetctl's flags do.
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
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("etcd CA file: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("etcd CA file %s: no certificate", cfg.CAFile)
			}
		}
		if cfg.CertFile != "" || cfg.KeyFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("etcd client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		tr.TLSClientConfig = tc
	}
	c, err := client.New(client.Config{Endpoints: cfg.Endpoints, Transport: tr, HeaderTimeoutPerRequest: cfg.Timeout})
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return client.NewKeysAPI(c), nil
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

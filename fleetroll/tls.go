package fleetroll

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// TLSFiles are a TLS client's certificate files, as fleetctl's --ca-file,
// --cert-file and --key-file name them: CA verifies the server's
// certificate (empty: the system's roots), Cert and Key (both or neither)
// are the client's certificate for a server that asks for one.
type TLSFiles struct {
	CA, Cert, Key string
}

// IsZero says that no file is named.
func (f TLSFiles) IsZero() bool { return f == TLSFiles{} }

// Config reads the files into a client configuration (TLS 1.2 at least).
// Each error names the file it is about.
func (f TLSFiles) Config() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", f.CA)
		}
	}
	switch {
	case f.Cert == "" && f.Key == "":
	case f.Cert == "" || f.Key == "":
		return nil, errors.New("a client certificate needs both its certificate file and its key file")
	default:
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("client certificate %s, key %s: %w", f.Cert, f.Key, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

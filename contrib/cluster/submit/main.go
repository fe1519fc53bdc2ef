// Command submit launches instances of a template unit file on a fleet
// cluster through its HTTP API and waits until they run, as
// "fleetctl start my-service@{8901..8903}.service" would for the local
// cluster. -env KEY=VALUE replaces the unit's Environment=KEY=... line, so one
// unit file serves clusters with different state directories.
//
//	go run ./contrib/cluster/submit -endpoint http://127.0.0.1:49153 \
//	    -env STATE=/tmp/fleetroll-cluster -ports 8901-8903 contrib/demo/my-service@.service
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/coreos/fleet/client"
	"github.com/coreos/fleet/schema"
	"github.com/coreos/fleet/unit"
	"github.com/fleetroll/fleetroll/fleetroll"
)

type envFlags []string

func (e *envFlags) String() string     { return strings.Join(*e, ",") }
func (e *envFlags) Set(v string) error { *e = append(*e, v); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "submit:", err)
		os.Exit(1)
	}
}

func run() error {
	endpoint := flag.String("endpoint", "http://127.0.0.1:49153", "fleet API endpoint (http)")
	ports := flag.String("ports", "", "instances to launch: 8901,8902 or 8901-8903")
	timeout := flag.Duration("timeout", 2*time.Minute, "how long to wait until every instance runs")
	var envs envFlags
	flag.Var(&envs, "env", "KEY=VALUE: replace the unit's Environment=KEY=... (repeatable)")
	flag.Parse()
	if flag.NArg() != 1 || *ports == "" {
		return errors.New("usage: submit [-endpoint URL] [-env K=V]... -ports PORTS TEMPLATE@.service")
	}
	raw, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		return err
	}
	uf, err := unit.NewUnitFile(string(raw))
	if err != nil {
		return fmt.Errorf("parse %s: %w", flag.Arg(0), err)
	}
	opts := schema.MapUnitFileToSchemaUnitOptions(uf)
	for _, kv := range envs {
		key, _, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("-env %q: want KEY=VALUE", kv)
		}
		replaced := false
		for _, o := range opts {
			if o.Section == "Service" && o.Name == "Environment" && strings.HasPrefix(o.Value, key+"=") {
				o.Value, replaced = kv, true
			}
		}
		if !replaced {
			opts = append(opts, &schema.UnitOption{Section: "Service", Name: "Environment", Value: kv})
		}
	}
	template := filepath.Base(flag.Arg(0))
	service, ok := strings.CutSuffix(template, "@.service")
	if !ok {
		return fmt.Errorf("%s is not a template unit (NAME@.service)", template)
	}
	instances, err := fleetroll.ParseInstances(*ports)
	if err != nil {
		return err
	}
	ep, err := url.Parse(*endpoint)
	if err != nil {
		return err
	}
	api, err := client.NewHTTPClient(&http.Client{Timeout: 10 * time.Second}, *ep)
	if err != nil {
		return err
	}
	var names []string
	for _, in := range instances {
		name := fleetroll.UnitName(service, in)
		names = append(names, name)
		if err := api.CreateUnit(&schema.Unit{Name: name, Options: opts, DesiredState: "launched"}); err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
	}
	fleet, err := fleetroll.Connect(*endpoint, 10*time.Second)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	for _, name := range names {
		if err := waitRunning(ctx, fleet, name); err != nil {
			return err
		}
		fmt.Printf("%s running\n", name)
	}
	return nil
}

func waitRunning(ctx context.Context, f fleetroll.Fleet, name string) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	last := "no state"
	for {
		st, err := f.UnitState(ctx, name)
		if err == nil || errors.Is(err, fleetroll.ErrNotFound) {
			msg, done, jerr := fleetroll.RunningStatus(st)
			if done {
				return nil
			}
			if jerr != nil {
				return fmt.Errorf("%s: %w", name, jerr)
			}
			last = msg
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (%s)", name, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

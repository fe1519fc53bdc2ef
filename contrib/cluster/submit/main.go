// Command submit launches instances of a template unit file on the local
// fleet cluster through its HTTP API and waits until they run, as
// "fleetctl start my-service@{8901..8903}.service" would. An instance fleet
// already has and that has failed is restarted once. -env KEY=VALUE
// replaces the unit's Environment=KEY=... line, so one unit file serves
// clusters with different state directories.
//
//	go run ./contrib/cluster/submit -endpoint http://127.0.0.1:49153 \
//	    -env STATE=/tmp/fleetroll-cluster -ports 8901-8903 contrib/demo/my-service@.service
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/cluster"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

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
	as := flag.String("service", "", "launch the instances under this service name (default: the template's)")
	noConflicts := flag.Bool("no-conflicts", false, "drop X-Fleet Conflicts= (one machine runs instances of several services)")
	var envs listFlag
	flag.Var(&envs, "env", "KEY=VALUE: replace the unit's Environment=KEY=... (repeatable)")
	flag.Parse()
	if flag.NArg() != 1 || *ports == "" {
		return errors.New("usage: submit [-endpoint URL] [-env K=V]... -ports PORTS TEMPLATE@.service")
	}
	service, ok := strings.CutSuffix(filepath.Base(flag.Arg(0)), "@.service")
	if !ok {
		return fmt.Errorf("%s is not a template unit (NAME@.service)", flag.Arg(0))
	}
	if *as != "" {
		service = *as
	}
	opts, err := cluster.LoadTemplate(flag.Arg(0), envs...)
	if err != nil {
		return err
	}
	if *noConflicts {
		kept := opts[:0]
		for _, o := range opts {
			if !(o.Section == "X-Fleet" && o.Name == "Conflicts") {
				kept = append(kept, o)
			}
		}
		opts = kept
	}
	instances, err := fleetroll.ParseInstances(*ports)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c := cluster.Attach(*endpoint)
	names, err := c.Launch(ctx, service, opts, instances...)
	if err != nil {
		return err
	}
	for _, n := range names {
		fmt.Printf("%s running\n", n)
	}
	return nil
}

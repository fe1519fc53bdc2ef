package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	"github.com/urfave/cli/v2"
)

func statusCommand() *cli.Command {
	flags := append(etcdFlagsUsage("etcd client URLs, comma-separated, where the rollouts are recorded"),
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", EnvVars: []string{"FLEETROLL_OUTPUT"}, Usage: "text or json"},
		&cli.IntFlag{Name: "limit", Value: 20, Usage: "rollouts to show"},
		&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "print a rollout's progress from serve (--server) until it ends; exit with restart's exit codes"},
		&cli.StringFlag{Name: "server", EnvVars: []string{"FLEETROLL_SERVER"}, Usage: "with --follow: fleetroll serve's URL, http(s)://HOST:PORT"},
		&cli.StringFlag{Name: "token-file", EnvVars: []string{"FLEETROLL_TOKEN_FILE"}, Usage: "with --follow: file with serve's API token (or $FLEETROLL_TOKEN)"},
		&cli.DurationFlag{Name: "request-timeout", Value: 10 * time.Second, EnvVars: []string{"FLEETROLL_REQUEST_TIMEOUT"}, Usage: "with --follow: bound on each request to serve (the stream itself lasts the rollout)"},
	)
	return &cli.Command{
		Name:      "status",
		Usage:     "show recent rollouts, from every fleetroll (CLI and servers), from etcd",
		ArgsUsage: "[SERVICE | ROLLOUT-ID]",
		Description: `Lists the rollouts in progress (running, paused after their canaries, queued in
serve's queue; from etcd's queue, pauses and locks), then the rollouts recorded in etcd
(/fleetroll/history), newest first. Every rollout run with etcd is recorded: restart,
deploy, rollback and serve's.

Examples:
   fleetroll status
   fleetroll status my-service --etcd-endpoints http://10.0.0.1:2379
   fleetroll status 5f0c2a9b1e77 -o json
   FLEETROLL_TOKEN=… fleetroll status --follow 5f0c2a9b1e77 --server https://fleetroll.example.com:8080

Exit codes: 0 listed; 1 etcd could not be read; 2 usage errors. With --follow,
the rollout's result as restart's: 0 succeeded; 1 failed, or it never ran
(superseded by a newer trigger: its record names the rollout that runs
instead; cancelled), or serve could not be reached; 2 usage errors; 3 rolled
back; 4 aborted; 5 refused; 130 interrupted.`,
		Flags:        flags,
		Action:       statusAction,
		OnUsageError: onUsageError,
	}
}

func statusAction(c *cli.Context) error {
	if c.Bool("follow") {
		o, err := followFrom(c)
		if err != nil {
			return err
		}
		return follow(c, o)
	}
	if c.NArg() > 1 {
		return usageErr("status: at most one service or rollout ID")
	}
	out, err := outputOf(c)
	if err != nil {
		return err
	}
	kapi, err := etcdFrom(c)
	if err != nil {
		return err
	}
	h := coord.History{KAPI: kapi}
	arg := c.Args().First()
	if arg != "" && !fleetroll.ValidRolloutID(arg) {
		if err := fleetroll.ValidateServiceName(arg); err != nil {
			return usageErr("status: %q is neither a rollout ID (12 hex digits) nor a service: %w", arg, err)
		}
	}
	if id, isID := rolloutID(arg); isID {
		if r, ok, err := h.Get(c.Context, id); err != nil {
			return &exitError{exitFailed, fmt.Errorf("status: %w", err)}
		} else if ok {
			enc := json.NewEncoder(c.App.Writer)
			enc.SetIndent("", "  ")
			return enc.Encode(r)
		}
		// Not ended yet: it is in progress, if anywhere.
		active, err := coord.Active(c.Context, kapi, "")
		if err != nil {
			return &exitError{exitFailed, fmt.Errorf("status: %w", err)}
		}
		for _, a := range active {
			if a.ID == id {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(a)
			}
		}
	}
	service := ""
	if _, isID := rolloutID(arg); !isID {
		service = arg
	}
	active, err := coord.Active(c.Context, kapi, service)
	if err != nil {
		return &exitError{exitFailed, fmt.Errorf("status: cannot read etcd at %s: %w", c.String("etcd-endpoints"), err)}
	}
	recs, err := h.List(c.Context, arg)
	if err != nil {
		return &exitError{exitFailed, fmt.Errorf("status: cannot read etcd at %s: %w", c.String("etcd-endpoints"), err)}
	}
	if n := c.Int("limit"); n > 0 && len(recs) > n {
		recs = recs[:n]
	}
	var rels *releases
	var quarantined []coord.Quarantined
	if arg != "" && !fleetroll.ValidRolloutID(arg) {
		// A service: the digests a deploy of is refused.
		if quarantined, err = (coord.Quarantine{KAPI: h.KAPI}).List(c.Context, arg); err != nil {
			return &exitError{exitFailed, fmt.Errorf("status: %w", err)}
		}
	}
	if arg != "" {
		// A service: its current release and the one before.
		store := coord.ReleaseStore{KAPI: h.KAPI}
		cur, err := store.Current(c.Context, arg)
		if err != nil {
			return &exitError{exitFailed, fmt.Errorf("status: %w", err)}
		}
		if cur != nil {
			rels = &releases{Current: cur}
			rels.Previous, _ = store.Previous(c.Context, arg)
		}
	}
	if out == "json" {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		doc := map[string]any{"rollouts": recs, "active": active}
		if active == nil {
			doc["active"] = []coord.ActiveRollout{}
		}
		if rels != nil {
			doc["release"] = rels
		}
		if quarantined != nil {
			doc["quarantined"] = quarantined
		}
		return enc.Encode(doc)
	}
	if rels != nil {
		fmt.Fprintf(c.App.Writer, "release:  %s\n", describeRelease(*rels.Current))
		if rels.Previous != nil {
			fmt.Fprintf(c.App.Writer, "previous: %s\n", describeRelease(*rels.Previous))
		}
	}
	if len(quarantined) > 0 {
		if err := printQuarantined(c.App.Writer, quarantined); err != nil {
			return err
		}
	}
	if err := printActive(c.App.Writer, active); err != nil {
		return err
	}
	if len(recs) == 0 {
		fmt.Fprintln(c.App.Writer, "no rollouts recorded")
		return nil
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSERVICE\tSTATUS\tUNITS\tSTARTED\tTOOK\tTRIGGER\tERROR")
	for _, r := range recs {
		done, of := r.Done()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", r.ID, r.Service, r.Status, done, of,
			r.Started.Local().Format(time.DateTime), r.Finished.Sub(r.Started).Round(time.Second), r.Trigger, r.Error)
	}
	return tw.Flush()
}

// printActive prints the rollouts in progress, when there are any, with
// what a paused one waits for.
func printActive(w io.Writer, active []coord.ActiveRollout) error {
	if len(active) == 0 {
		return nil
	}
	fmt.Fprintln(w, "in progress:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSERVICE\tSTATUS\tUNITS\tSTARTED\tTRIGGER\tBY\tWAITING")
	for _, a := range active {
		id, started, units := cmp.Or(a.ID, "-"), "-", "-"
		if !a.Started.IsZero() {
			started = a.Started.Local().Format(time.DateTime)
		}
		if a.Units > 0 {
			units = fmt.Sprintf("%d/%d", a.Done, a.Units)
		}
		waiting := ""
		if a.Status == fleetroll.StatusPaused {
			waiting = fmt.Sprintf("canaries %s since %s: fleetroll promote|abort %s", strings.Join(a.Canaries, ","), a.PausedSince.Local().Format(time.DateTime), a.ID)
			if a.Decision != nil {
				waiting = fmt.Sprintf("decided: %s by %s", a.Decision.Kind, a.Decision.By)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, a.Service, a.Status, units, started, cmp.Or(a.Trigger, "-"), cmp.Or(a.Runner, "-"), waiting)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	return nil
}

// releases is a service's current release and the one before, as status
// shows them.
type releases struct {
	Current  *fleetroll.Release `json:"current"`
	Previous *fleetroll.Release `json:"previous,omitempty"`
}

func describeRelease(r fleetroll.Release) string {
	s := r.Image
	var more []string
	if r.Tag != "" {
		more = append(more, "tag "+r.Tag)
	}
	if r.Rollout != "" {
		more = append(more, "rollout "+r.Rollout)
	}
	if !r.Created.IsZero() {
		more = append(more, r.Created.Local().Format(time.DateTime))
	}
	if len(more) > 0 {
		s += " (" + strings.Join(more, ", ") + ")"
	}
	return s
}

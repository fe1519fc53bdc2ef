package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/hook"
	"github.com/urfave/cli/v2"
)

// followOptions are fleetroll status --follow ID --server URL.
type followOptions struct {
	id      string
	server  *url.URL
	token   string
	timeout time.Duration // of each request but the stream
	output  string
}

// followFrom builds and checks the options of status --follow.
func followFrom(c *cli.Context) (*followOptions, error) {
	id, isID := rolloutID(c.Args().First())
	o := &followOptions{id: id, timeout: c.Duration("request-timeout"), output: c.String("output")}
	if c.NArg() != 1 || !isID {
		return nil, usageErr("status --follow: name one rollout ID (12 hex digits)")
	}
	raw := c.String("server")
	u, err := url.Parse(raw)
	if raw == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, usageErr("status --follow: --server: want fleetroll serve's URL, http(s)://HOST:PORT")
	}
	o.server = u
	if o.token, err = readSecret(c.String("token-file"), "token-file", "FLEETROLL_TOKEN"); err != nil {
		return nil, err
	}
	if o.token == "" {
		return nil, usageErr("status --follow: the API token is required: --token-file FILE or $FLEETROLL_TOKEN")
	}
	if o.timeout <= 0 {
		return nil, usageErr("--request-timeout must be positive")
	}
	return o, nil
}

// followGiveUp is how long status --follow tries again a server that no
// longer answers (a receiver restarting, a balancer moving it) before it
// gives up.
var followGiveUp = time.Minute

// follow prints a rollout's progress from serve's event stream until it
// ends, and returns restart's exit code for its result. A broken stream is
// opened again where it left off (Last-Event-ID), on whichever receiver
// answers. A server that cannot be reached at the start, or that has not
// answered for followGiveUp, is given up with an error.
func follow(c *cli.Context, o *followOptions) error {
	ctx, out, errw := c.Context, c.App.Writer, c.App.ErrWriter
	base := strings.TrimSuffix(o.server.String(), "/")
	var last uint64
	var rec fleetroll.Report
	// opened: when a stream was last open (the start, before the first):
	// the minute counts from its end; reached: whether the server ever
	// answered.
	opened, reached := time.Now(), false
	backoff := 500 * time.Millisecond
	for {
		resp, err := o.open(ctx, base+"/events?rollout="+o.id, last)
		var ne net.Error
		unreachable := errors.As(err, &ne)
		switch {
		case err == nil:
			opened, reached = time.Now(), true
		case ctx.Err() != nil:
		case unreachable && !reached:
			return &exitError{exitFailed, fmt.Errorf("status --follow: fleetroll serve at %s cannot be reached: %w", base, err)}
		case time.Since(opened) > followGiveUp:
			return &exitError{exitFailed, fmt.Errorf("status --follow: fleetroll serve at %s: no event stream for %s (%w); rollout %s may still run: fleetroll status %s",
				base, followGiveUp, err, o.id, o.id)}
		}
		reached = reached || !unreachable
		if err == nil {
			// The record as it stands once the stream is open: a rollout
			// that ended before is not waited for.
			if rec, err = o.record(ctx, base); err == nil && rec.Status.Final() {
				resp.Body.Close()
				return followEnd(out, o.output, rec)
			}
			if err == nil {
				backoff = 500 * time.Millisecond
				done, of := rec.Done()
				fmt.Fprintf(errw, "following rollout %s of %s: %s, %d/%d done\n", rec.ID, rec.Service, rec.Status, done, of)
				err = hook.ReadEvents(resp.Body, func(id uint64, kind string, data []byte) error {
					if kind == "reset" {
						r, err := o.record(ctx, base)
						rec = r
						return err
					}
					var ev hook.StreamEvent
					if err := json.Unmarshal(data, &ev); err != nil {
						return err
					}
					last, rec = id, ev.Record
					printStreamEvent(errw, ev)
					if rec.Status.Final() {
						return errFollowed
					}
					return nil
				})
			}
			resp.Body.Close()
			opened = time.Now()
		}
		if errors.Is(err, errFollowed) {
			return followEnd(out, o.output, rec)
		}
		var ee *exitError
		if errors.As(err, &ee) {
			return err
		}
		if ctx.Err() != nil {
			return &exitError{exitInterrupted, ctx.Err()}
		}
		msg := "the stream ended"
		if err != nil {
			msg = err.Error()
		}
		fmt.Fprintf(errw, "following rollout %s: %s; again in %s\n", o.id, msg, backoff)
		select {
		case <-ctx.Done():
			return &exitError{exitInterrupted, ctx.Err()}
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

var errFollowed = errors.New("the rollout ended")

// open opens the event stream; refusals (401, 404) are exit errors, a
// server out of reach is retried.
func (o *followOptions) open(ctx context.Context, u string, last uint64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, &exitError{exitUsage, err}
	}
	req.Header.Set("Authorization", "Bearer "+o.token)
	req.Header.Set("Accept", "text/event-stream")
	if last > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatUint(last, 10))
	}
	// No client timeout: the stream lasts as long as the rollout. Dialling
	// and the answer's headers are bounded.
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, ResponseHeaderTimeout: o.timeout,
		TLSHandshakeTimeout: o.timeout}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, answerError(resp, "events")
	}
	return resp, nil
}

// record reads the rollout's record.
func (o *followOptions) record(ctx context.Context, base string) (fleetroll.Report, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var rec fleetroll.Report
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/rollouts/"+o.id, nil)
	if err != nil {
		return rec, &exitError{exitUsage, err}
	}
	req.Header.Set("Authorization", "Bearer "+o.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return rec, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return rec, answerError(resp, "rollout "+o.id)
	}
	return rec, json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&rec)
}

// answerError turns a refusal of serve into an exit error: its message,
// never the token.
func answerError(resp *http.Response, what string) error {
	var body struct {
		Error string `json:"error"`
	}
	_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	err := fmt.Errorf("%s: %s: %s", what, resp.Status, body.Error)
	switch {
	case resp.StatusCode/100 == 4:
		return &exitError{exitUsage, err}
	case resp.StatusCode >= 500:
		return err // retried
	}
	return &exitError{exitFailed, err}
}

// printStreamEvent prints a unit's step as restart prints it.
func printStreamEvent(w io.Writer, ev hook.StreamEvent) {
	if ev.Unit == "" {
		switch ev.Kind {
		case "queued", "progress":
		case "resumed":
			fmt.Fprintf(w, "rollout %s: resumed by %s\n", ev.Rollout, ev.Record.By)
		default:
			fmt.Fprintf(w, "rollout %s: %s\n", ev.Rollout, ev.Kind)
		}
		return
	}
	var u fleetroll.UnitReport
	for _, x := range ev.Record.Units {
		if x.Unit == ev.Unit {
			u = x
		}
	}
	e := fleetroll.Event{RolloutID: ev.Rollout, Unit: ev.Unit, Kind: fleetroll.EventKind(ev.Kind), Phase: ev.Phase, State: u.LastState, Progress: u}
	switch e.Kind {
	case fleetroll.EventStopped:
		e.Elapsed = time.Duration(u.Stop)
	case fleetroll.EventRunning:
		e.Elapsed = time.Duration(u.Start)
	case fleetroll.EventHealthy, fleetroll.EventFailed:
		e.Elapsed = time.Duration(u.Total)
	}
	if u.Error != "" {
		e.Err = errors.New(u.Error)
	}
	printEvent(w, e)
}

// followEnd prints the record and returns restart's exit code for it.
func followEnd(out io.Writer, output string, rec fleetroll.Report) error {
	if output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rec); err != nil {
			return &exitError{exitFailed, err}
		}
	} else {
		printSummary(out, &rec)
	}
	if rec.Status == fleetroll.StatusSucceeded {
		return nil
	}
	return exitFor(rec.Status, fmt.Errorf("rollout %s %s: %s", rec.ID, rec.Status, rec.Error))
}

package hook

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	client "go.etcd.io/etcd/client/v2"
)

// feedPrefix is what the feed watches: the queue entries (a rollout queued
// and each step of its run, whichever receiver runs it) and the history
// (its end), under one prefix, so that one watch sees them in etcd's order.
const feedPrefix = "/fleetroll"

// watchFeed feeds the store's event stream from etcd until ctx ends: the
// records of the queue's entries as they are now, then every write of an
// entry or of the history, numbered by its etcd index. When etcd no longer
// holds the events after the last one seen (its window of 1000 is past),
// it starts again from the present: the clients connected then are cut
// off, and those behind get a reset.
func (d *durable) watchFeed(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for again := false; ctx.Err() == nil; again = true {
		index, err := d.loadFeed(ctx)
		if err == nil {
			d.store.restartFeed(index, again)
			backoff = 100 * time.Millisecond
			err = d.followFeed(ctx, index)
		}
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("event feed: etcd's changes are read again from the present", "error", err.Error())
		if !d.pause(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// loadFeed puts the queued and running rollouts into the store (no event:
// they are the state the feed starts from) and returns etcd's index then.
// Records the store holds already are brought up to date as mirror does
// (when the feed starts again, it missed their changes): from their queue
// entry, or from the history once they have left the queue.
func (d *durable) loadFeed(ctx context.Context) (uint64, error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := d.kapi.Get(lctx, coord.QueuePrefix+"/entries", &client.GetOptions{Recursive: true})
	if isKeyNotFound(err) {
		resp, err = d.kapi.Get(lctx, "/", nil)
		if err == nil {
			resp.Node = nil // no entries
		}
	}
	if err != nil {
		return 0, err
	}
	served := d.services()
	queued := map[string]bool{}
	for _, dir := range nodesOf(resp.Node) {
		for _, n := range dir.Nodes {
			e, err := coord.DecodeEntry(n)
			if err != nil || !slices.Contains(served, e.Record.Service) {
				continue
			}
			queued[e.Record.ID] = true
			d.store.refresh(e.Record, e.Runner == d.owner, e.Runner == "")
		}
	}
	var gone []string
	for _, r := range d.store.List("") {
		if !r.Status.Final() && !queued[r.ID] && slices.Contains(served, r.Service) {
			gone = append(gone, r.ID)
		}
	}
	if len(gone) > 0 {
		recs, err := coord.History{KAPI: d.kapi}.List(lctx, "")
		if err != nil {
			d.log.Warn("event feed: the ends of rollouts that left the queue not read", "error", err.Error())
		}
		for _, r := range recs {
			if slices.Contains(gone, r.ID) && r.Status.Final() {
				d.store.Put(r)
			}
		}
	}
	return resp.Index, nil
}

// nodesOf is a directory's nodes (none for nil).
func nodesOf(n *client.Node) client.Nodes {
	if n == nil {
		return nil
	}
	return n.Nodes
}

// errFeedCleared: etcd no longer holds the changes after the last one seen.
var errFeedCleared = errors.New("etcd no longer holds the changes after the last one seen")

// followFeed hands each change after index to the store, in etcd's order.
// A broken watch is opened again where it stopped.
func (d *durable) followFeed(ctx context.Context, index uint64) error {
	backoff := 100 * time.Millisecond
	for {
		w := d.kapi.Watcher(feedPrefix, &client.WatcherOptions{AfterIndex: index, Recursive: true})
		for {
			resp, err := w.Next(ctx)
			if err != nil {
				var ee client.Error
				if errors.As(err, &ee) && ee.Code == client.ErrorCodeEventIndexCleared {
					return errFeedCleared
				}
				break
			}
			backoff = 100 * time.Millisecond
			if resp.Node != nil {
				index = resp.Node.ModifiedIndex
				d.feedChange(resp)
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !d.pause(ctx, backoff) {
			return ctx.Err()
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// feedChange turns one write under feedPrefix into the feed's event, when
// it is a queue entry's or a history record's of a service served here.
func (d *durable) feedChange(resp *client.Response) {
	n := resp.Node
	switch resp.Action {
	case "set", "create", "update", "compareAndSwap":
	default:
		return // deletes and expiries: a rollout's end is its history record
	}
	id := n.ModifiedIndex
	if service, ok := coord.EntryService(n.Key); ok {
		if !slices.Contains(d.services(), service) {
			return
		}
		e, err := coord.DecodeEntry(n)
		if err != nil {
			return
		}
		var prev *coord.QueuedTrigger
		if resp.PrevNode != nil {
			if p, err := coord.DecodeEntry(resp.PrevNode); err == nil {
				prev = &p
			}
		}
		d.feedEntry(id, e, prev)
		return
	}
	if strings.HasPrefix(n.Key, coord.HistoryPrefix+"/") {
		r, err := coord.DecodeHistory(n)
		if err != nil || !slices.Contains(d.services(), r.Service) {
			return
		}
		if _, held := d.store.Get(r.ID); !held && r.Queue == nil {
			// Not a receiver's (a CLI's): streamed, and listed from the
			// history, not among the receivers' rollouts.
			d.store.pass(id, change{}, "", r)
			return
		}
		d.store.mirror(id, change{}, "", r, false, false)
	}
}

// feedEntry is the event of a write of a queue entry: the step its Event
// names, a new rollout ("queued"), or the change of the record's status.
// A waiting entry that a newer push took the place of ends its rollout,
// superseded: that event has no ID (etcd numbers one write once).
func (d *durable) feedEntry(id uint64, e coord.QueuedTrigger, prev *coord.QueuedTrigger) {
	var ch change
	before := fleetroll.Status("")
	switch {
	case e.Event != nil:
		ch = change{kind: e.Event.Kind, unit: e.Event.Unit, phase: e.Event.Phase}
	case prev == nil || prev.Record.ID != e.Record.ID:
		ch = change{kind: "queued"}
	}
	if prev != nil && prev.Record.ID == e.Record.ID {
		before = prev.Record.Status
	}
	if prev != nil && prev.Record.ID != e.Record.ID && !prev.Record.Status.Final() {
		d.store.mirror(0, change{}, prev.Record.Status, d.supersededRecord(prev.Record, e.Record.ID), false, false)
	}
	d.store.mirror(id, ch, before, e.Record, e.Runner == d.owner, e.Runner == "")
}

// pause waits d on the queue's clock; false when ctx ended first.
func (d *durable) pause(ctx context.Context, wait time.Duration) bool {
	t := d.opt.Clock.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

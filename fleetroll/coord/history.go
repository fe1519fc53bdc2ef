package coord

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// HistoryPrefix is where rollout records live:
// /fleetroll/history/SERVICE/<start time>-<id>.
const HistoryPrefix = "/fleetroll/history"

// History keeps the last Keep rollout records per service in etcd, in the
// one record shape (fleetroll.Report).
type History struct {
	KAPI client.KeysAPI
	Keep int // default 50
}

// Save stores a record as its rollout's one record, in place of the one
// the rollout has already (which may sit under another start time's key),
// and drops the oldest beyond Keep.
func (h History) Save(ctx context.Context, r fleetroll.Report) error {
	return h.Amend(ctx, r, nil)
}

// Amend stores r as its rollout's one record, like Save; when the rollout
// has a record already, what is stored is merge(stored, r) (nil: r).
// Two fleetrolls may each write a part of one record at once (the queue of
// a receiver, the recovery of another's intent): each write is a
// compare-and-swap on the record read, and a write that lost the race reads
// the record again and merges anew. Two that each found no record create
// one each, under their own start times: with a merge, the one that sees
// both (each looks again after a create) folds the later key's into the
// earlier's and removes it, so that one record is left.
func (h History) Amend(ctx context.Context, r fleetroll.Report, merge func(stored, r fleetroll.Report) fleetroll.Report) error {
	if err := fleetroll.ValidateServiceName(r.Service); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if !fleetroll.ValidRolloutID(r.ID) {
		return fmt.Errorf("history: rollout ID %q is not 12 hex digits", r.ID)
	}
	dir := HistoryPrefix + "/" + r.Service
	nodes, err := h.write(ctx, dir, r, merge)
	if err != nil {
		return fmt.Errorf("history: save %s: %w", r.ID, err)
	}
	// A create, or records of the rollout under more keys: fold them.
	if len(nodes) != 1 && merge != nil {
		if err := h.fold(ctx, dir, r.ID, merge); err != nil {
			return fmt.Errorf("history: save %s: %w", r.ID, err)
		}
	}
	if err := prune(ctx, h.KAPI, dir, h.Keep, 50); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return nil
}

// write stores r in the rollout's earliest record, as merge(stored, r)
// (nil: r), or as a new record when it has none: a compare-and-swap, read
// and merged again after a race lost. It returns the rollout's records as
// read before the write that won.
func (h History) write(ctx context.Context, dir string, r fleetroll.Report, merge func(stored, r fleetroll.Report) fleetroll.Report) ([]*client.Node, error) {
	for attempt := 1; ; attempt++ {
		nodes, err := h.records(ctx, dir, r.ID)
		if err != nil {
			return nil, err
		}
		rec, key := r, recordKey(dir, r)
		opts := &client.SetOptions{PrevExist: client.PrevNoExist}
		if len(nodes) > 0 {
			n := nodes[0]
			key, opts = n.Key, &client.SetOptions{PrevIndex: n.ModifiedIndex}
			if stored, ok := decodeRecord(n); ok && merge != nil {
				rec = merge(stored, r)
			}
		}
		err = h.put(ctx, key, rec, opts)
		if err == nil {
			return nodes, nil
		}
		if !raced(err) || attempt == maxAmends {
			return nil, err
		}
	}
}

// fold leaves one record of a rollout that has more (two writers created
// one each at once): each later key's record is merged into the earliest
// key's (write), then removed. Both writers may fold at once: a record
// merged in twice is merged as once (merge joins what each part says), and
// a key removed already is not an error.
func (h History) fold(ctx context.Context, dir, id string, merge func(stored, r fleetroll.Report) fleetroll.Report) error {
	nodes, err := h.records(ctx, dir, id)
	if err != nil || len(nodes) < 2 {
		return err
	}
	for _, extra := range nodes[1:] {
		if part, ok := decodeRecord(extra); ok {
			into, err := h.write(ctx, dir, part, merge)
			if err != nil {
				return err
			}
			if len(into) > 0 && into[0].Key == extra.Key {
				return nil // the earlier one is gone (pruned): this one stays
			}
		}
		if _, err := h.KAPI.Delete(ctx, extra.Key, &client.DeleteOptions{PrevIndex: extra.ModifiedIndex}); err != nil && !raced(err) {
			return fmt.Errorf("remove %s: %w", extra.Key, err)
		}
	}
	return nil
}

// raced: a compare-and-swap or a create lost to another writer, or the
// key went (pruned, or folded into another) meanwhile.
func raced(err error) bool {
	return isCode(err, client.ErrorCodeTestFailed) || isCode(err, client.ErrorCodeNodeExist) || isCode(err, client.ErrorCodeKeyNotFound)
}

// put writes a record to its key (opts: the compare-and-swap).
func (h History) put(ctx context.Context, key string, r fleetroll.Report, opts *client.SetOptions) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode %s: %w", r.ID, err)
	}
	_, err = h.KAPI.Set(ctx, key, string(b), opts)
	return err
}

// maxAmends bounds the writes of one record that lose a race with another
// writer of it: each race lost is one another writer won, and a handful of
// fleetrolls at most write one record.
const maxAmends = 10

// recordKey is where a new record goes: under its start time (its queue
// time when it never started), so that the keys sort oldest first.
func recordKey(dir string, r fleetroll.Report) string {
	at := r.Started
	if at.IsZero() && r.Queue != nil {
		at = r.Queue.Queued
	}
	return fmt.Sprintf("%s/%020d-%s", dir, at.UnixNano(), r.ID)
}

// records returns the nodes of a rollout's records in its service's
// directory, earliest key first (one, but for a moment when two writers
// created one each), read from etcd's leader.
func (h History) records(ctx context.Context, dir, id string) ([]*client.Node, error) {
	resp, err := h.KAPI.Get(ctx, dir, &client.GetOptions{Sort: true, Quorum: true})
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*client.Node
	for _, n := range resp.Node.Nodes {
		if !n.Dir && strings.HasSuffix(n.Key, "-"+id) {
			out = append(out, n)
		}
	}
	return out, nil
}

// decodeRecord reads a record node.
func decodeRecord(n *client.Node) (fleetroll.Report, bool) {
	var r fleetroll.Report
	return r, json.Unmarshal([]byte(n.Value), &r) == nil
}

// prune deletes the oldest keys of dir (sorted by name) beyond keep
// (def when keep is not positive).
func prune(ctx context.Context, kapi client.KeysAPI, dir string, keep, def int) error {
	if keep <= 0 {
		keep = def
	}
	resp, err := kapi.Get(ctx, dir, &client.GetOptions{Sort: true})
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	for i := 0; i < len(resp.Node.Nodes)-keep; i++ {
		if _, err := kapi.Delete(ctx, resp.Node.Nodes[i].Key, nil); err != nil && !isCode(err, client.ErrorCodeKeyNotFound) {
			return fmt.Errorf("prune %s: %w", dir, err)
		}
	}
	return nil
}

// List returns the records of one service (or of all, for ""), newest
// first. A service name that is not valid is an error: it never reaches a
// key.
func (h History) List(ctx context.Context, service string) ([]fleetroll.Report, error) {
	dir := HistoryPrefix
	if service != "" {
		if err := fleetroll.ValidateServiceName(service); err != nil {
			return nil, fmt.Errorf("history: %w", err)
		}
		dir += "/" + service
	}
	resp, err := h.KAPI.Get(ctx, dir, &client.GetOptions{Recursive: true, Sort: true})
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	var out []fleetroll.Report
	var walk func(n *client.Node)
	walk = func(n *client.Node) {
		if n.Dir {
			for _, c := range n.Nodes {
				walk(c)
			}
			return
		}
		var r fleetroll.Report
		if json.Unmarshal([]byte(n.Value), &r) == nil && r.ID != "" {
			out = append(out, r)
		}
	}
	walk(resp.Node)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Started.After(out[j].Started) })
	return out, nil
}

// Get finds one record by ID; an ID of the wrong shape is not found.
func (h History) Get(ctx context.Context, id string) (fleetroll.Report, bool, error) {
	if !fleetroll.ValidRolloutID(id) {
		return fleetroll.Report{}, false, nil
	}
	all, err := h.List(ctx, "")
	if err != nil {
		return fleetroll.Report{}, false, err
	}
	for _, r := range all {
		if r.ID == id {
			return r, true, nil
		}
	}
	return fleetroll.Report{}, false, nil
}

// DecodeHistory decodes a record as the history holds it (a node under
// HistoryPrefix/SERVICE), for a watch of the history.
func DecodeHistory(n *client.Node) (fleetroll.Report, error) {
	var r fleetroll.Report
	if err := json.Unmarshal([]byte(n.Value), &r); err != nil {
		return fleetroll.Report{}, fmt.Errorf("history %s: %w", n.Key, err)
	}
	if !fleetroll.ValidRolloutID(r.ID) || r.Service == "" || !strings.HasPrefix(n.Key, HistoryPrefix+"/"+r.Service+"/") {
		return fleetroll.Report{}, fmt.Errorf("history %s: not a rollout record of its service", n.Key)
	}
	return r, nil
}

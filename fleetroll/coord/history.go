package coord

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// HistoryPrefix is where rollout records live:
// /fleetroll/history/SERVICE/<start time>-<id>.
const HistoryPrefix = "/fleetroll/history"

// Record is one rollout as any fleetroll (CLI or server) saw it.
type Record struct {
	ID       string                 `json:"id"`
	Service  string                 `json:"service"`
	Status   string                 `json:"status"` // succeeded, failed, cancelled, interrupted, ...
	Trigger  string                 `json:"trigger"`
	By       string                 `json:"by"` // which fleetroll
	Started  time.Time              `json:"started"`
	Finished time.Time              `json:"finished"`
	Units    []fleetroll.UnitReport `json:"units,omitempty"`
	Error    string                 `json:"error,omitempty"`
}

// RecordFromReport turns a roller report into a record.
func RecordFromReport(rep *fleetroll.Report, trigger, by string) Record {
	return Record{ID: rep.ID, Service: rep.Service, Status: rep.Result, Trigger: trigger, By: by,
		Started: rep.Started, Finished: rep.Finished, Units: rep.Units, Error: rep.Error}
}

// History keeps the last Keep records per service in etcd.
type History struct {
	KAPI client.KeysAPI
	Keep int // default 50
}

// Save stores a record and drops the oldest beyond Keep.
func (h History) Save(ctx context.Context, r Record) error {
	if r.Service == "" || r.ID == "" {
		return fmt.Errorf("history: record without service or id")
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	dir := HistoryPrefix + "/" + r.Service
	key := fmt.Sprintf("%s/%020d-%s", dir, r.Started.UnixNano(), r.ID)
	if _, err := h.KAPI.Set(ctx, key, string(b), nil); err != nil {
		return fmt.Errorf("history: save %s: %w", r.ID, err)
	}
	keep := h.Keep
	if keep <= 0 {
		keep = 50
	}
	resp, err := h.KAPI.Get(ctx, dir, &client.GetOptions{Sort: true})
	if err != nil {
		return fmt.Errorf("history: list %s: %w", dir, err)
	}
	for i := 0; i < len(resp.Node.Nodes)-keep; i++ {
		if _, err := h.KAPI.Delete(ctx, resp.Node.Nodes[i].Key, nil); err != nil && !isCode(err, client.ErrorCodeKeyNotFound) {
			return fmt.Errorf("history: prune: %w", err)
		}
	}
	return nil
}

// List returns the records of one service (or of all, for ""), newest first.
func (h History) List(ctx context.Context, service string) ([]Record, error) {
	dir := HistoryPrefix
	if service != "" {
		dir += "/" + service
	}
	resp, err := h.KAPI.Get(ctx, dir, &client.GetOptions{Recursive: true, Sort: true})
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	var out []Record
	var walk func(n *client.Node)
	walk = func(n *client.Node) {
		if n.Dir {
			for _, c := range n.Nodes {
				walk(c)
			}
			return
		}
		var r Record
		if json.Unmarshal([]byte(n.Value), &r) == nil {
			out = append(out, r)
		}
	}
	walk(resp.Node)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Started.After(out[j].Started) })
	return out, nil
}

// Get finds one record by ID.
func (h History) Get(ctx context.Context, id string) (Record, bool, error) {
	all, err := h.List(ctx, "")
	if err != nil {
		return Record{}, false, err
	}
	for _, r := range all {
		if r.ID == id {
			return r, true, nil
		}
	}
	return Record{}, false, nil
}

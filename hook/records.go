package hook

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/fleetroll/coord"
	client "go.etcd.io/etcd/client/v2"
)

// records is the read model of rollouts that the status API and the page
// answer from: this receiver's store, the shared queue in etcd (queued and
// running, at any receiver) and the history (ended, by any receiver and
// CLI), merged into one answer. It holds no state of its own.
type records struct {
	store *Store
	etcd  client.KeysAPI // nil without etcd
	// live reads the shared queue; nil without the durable queue.
	live   func(ctx context.Context) (map[string]fleetroll.Report, error)
	owner  string
	config func() *Config
}

// Errors of a part of the read model that could not be read.
var (
	errQueueUnread   = errors.New("the queue in etcd could not be read")
	errHistoryUnread = errors.New("the history in etcd could not be read")
)

// unreadMessage is what an answer says of a part that could not be read
// (never the error's details, which go to the log).
func unreadMessage(err error) string {
	for _, e := range []error{errQueueUnread, errHistoryUnread} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return "the rollout records could not be read"
}

// Listing is what List found: the rollouts (this receiver's and the
// others' queued and running ones of the services it serves, newest
// first), the history's others, and what could not be read.
type Listing struct {
	Rollouts, History    []fleetroll.Report
	HistoryErr, QueueErr error
}

// List lists the rollouts of one service, or of all ("").
func (m records) List(ctx context.Context, service string) Listing {
	l := Listing{Rollouts: m.store.List(service), History: []fleetroll.Report{}}
	if m.etcd == nil {
		return l
	}
	// Rollouts of other receivers and CLIs (or of this one before a
	// restart).
	recs, err := coord.History{KAPI: m.etcd}.List(ctx, service)
	if err != nil {
		l.HistoryErr = fmt.Errorf("%w: %w", errHistoryUnread, err)
	}
	if m.live != nil {
		live, err := m.live(ctx)
		if err != nil {
			l.QueueErr = fmt.Errorf("%w: %w", errQueueUnread, err)
		}
		l.Rollouts = m.merged(l.Rollouts, live, recs, service)
	}
	if l.Rollouts == nil {
		l.Rollouts = []fleetroll.Report{} // a list, never null, in JSON
	}
	l.History = notIn(recs, l.Rollouts)
	return l
}

// Get returns one rollout's newest record, wherever it is.
func (m records) Get(ctx context.Context, id string) (fleetroll.Report, bool, error) {
	ro, ok := m.store.Get(id)
	if m.live != nil {
		live, err := m.live(ctx)
		if err != nil {
			return fleetroll.Report{}, false, fmt.Errorf("%w: %w", errQueueUnread, err)
		}
		if l, found := live[id]; found {
			if ok && (l.By == m.owner || ro.Status.Final()) {
				// This receiver runs it (its record is the newest), or it has
				// ended (its history record, which the feed brought, comes
				// before the entry's removal).
				return ro, true, nil
			}
			return l, true, nil
		}
		if ok && ro.Status.Final() {
			return ro, true, nil
		}
		// A rollout that waited here and that a newer push took the place
		// of, at another receiver: the entry that carries it says so.
		for _, l := range live {
			if l.Queue != nil && slices.Contains(l.Queue.Supersedes, id) && ok {
				ro.Status, ro.Queue.SupersededBy = fleetroll.StatusSuperseded, l.ID
				return ro, true, nil
			}
		}
	} else if ok {
		return ro, true, nil
	}
	if m.etcd != nil {
		rec, found, err := coord.History{KAPI: m.etcd}.Get(ctx, id)
		if err != nil {
			return fleetroll.Report{}, false, fmt.Errorf("%w: %w", errHistoryUnread, err)
		}
		if found {
			return rec, true, nil
		}
	}
	return ro, ok, nil
}

// merged is what the status API lists with the durable queue: this
// receiver's records, brought up to date from the queue in etcd (queued and
// running, at any receiver) and the history (ended, by any receiver), then
// the queued and running rollouts of the others.
func (m records) merged(local []fleetroll.Report, live map[string]fleetroll.Report, hist []fleetroll.Report, service string) []fleetroll.Report {
	ended := map[string]fleetroll.Report{}
	for _, h := range hist {
		ended[h.ID] = h
	}
	seen := map[string]bool{}
	out := make([]fleetroll.Report, 0, len(local)+len(live))
	for _, r := range local {
		if l, ok := live[r.ID]; ok {
			if l.By != m.owner && !r.Status.Final() {
				r = l // queued, or run by another receiver (and not ended yet)
			}
		} else if h, ok := ended[r.ID]; ok && !r.Status.Final() {
			r = h
		}
		seen[r.ID] = true
		out = append(out, r)
	}
	// Others' entries of the shared queue: only of the services this
	// receiver serves (receivers of other services share the etcd).
	cfg := m.config()
	_, served := cfg.Service(service)
	var others []fleetroll.Report
	for id, l := range live {
		if _, ok := cfg.Service(l.Service); !seen[id] && ok && (service == "" || (served && l.Service == service)) {
			others = append(others, l)
		}
	}
	slices.SortFunc(others, func(a, b fleetroll.Report) int {
		if a.Queue != nil && b.Queue != nil {
			return b.Queue.Queued.Compare(a.Queue.Queued)
		}
		return strings.Compare(b.ID, a.ID)
	})
	return append(others, out...)
}

// notIn returns the records of recs that are not among have (by ID): the
// history's rollouts this receiver does not hold.
func notIn(recs, have []fleetroll.Report) []fleetroll.Report {
	seen := map[string]bool{}
	for _, ro := range have {
		seen[ro.ID] = true
	}
	out := []fleetroll.Report{}
	for _, rec := range recs {
		if !seen[rec.ID] {
			out = append(out, rec)
		}
	}
	return out
}

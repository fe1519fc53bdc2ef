package coord

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	client "go.etcd.io/etcd/client/v2"
)

// QueuePrefix is where serve's receivers keep the triggers they accepted
// (QueuePrefix/entries/SERVICE/KEY) and who runs each service's queue
// (QueuePrefix/claims/SERVICE, a lease like the service's lock).
const QueuePrefix = "/fleetroll/queue"

// QueuedTrigger is one accepted trigger waiting for, or carried by, a
// rollout: the rollout's record (status queued or running, with each
// unit's progress) and what the queue needs besides.
type QueuedTrigger struct {
	Record fleetroll.Report `json:"record"`
	// Callbacks are the Docker Hub callback URLs to report to.
	Callbacks []string `json:"callbacks,omitempty"`
	// Runner names the receiver running it; empty while it waits.
	Runner string `json:"runner,omitempty"`
	// Push names the push it carries (a hash): the same push delivered to
	// two receivers merges into one rollout.
	Push string `json:"push,omitempty"`
	// Event says what the write that left the entry so was (a unit's
	// step, a phase), for the event stream of every receiver (GET
	// /events); nil when the change of the record says it. Each write
	// sets its own: Update and a merge clear it first.
	Event *EntryEvent `json:"event,omitempty"`

	Key   string `json:"-"` // its etcd key
	Index uint64 `json:"-"` // etcd's creation index: the order of arrival
	mod   uint64
}

// EntryEvent is what one write of a queue entry was: the kind of event
// (a roller's event of a unit, "phase", ...), its unit and phase.
type EntryEvent struct {
	Kind  string          `json:"kind"`
	Unit  string          `json:"unit,omitempty"`
	Phase fleetroll.Phase `json:"phase,omitempty"`
}

// DecodeEntry decodes a queue entry as etcd holds it (a node under
// QueuePrefix/entries), for a watch of the queue.
func DecodeEntry(n *client.Node) (QueuedTrigger, error) { return decodeTrigger(n) }

// EntryService is the service of a queue entry's key, and whether the key
// is one (QueuePrefix/entries/SERVICE/NAME).
func EntryService(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, QueuePrefix+"/entries/")
	if !ok {
		return "", false
	}
	service, name, ok := strings.Cut(rest, "/")
	return service, ok && name != "" && !strings.Contains(name, "/")
}

// Triggers is the durable trigger queue shared by several receivers.
type Triggers struct {
	KAPI client.KeysAPI
}

func entriesDir(service string) (string, error) {
	if err := fleetroll.ValidateServiceName(service); err != nil {
		return "", fmt.Errorf("queue: %w", err)
	}
	return QueuePrefix + "/entries/" + service, nil
}

// pushName is the key of a push in a service's queue: the same push
// delivered to two receivers lands on one key.
func pushName(push string) string {
	sum := sha256.Sum256([]byte(push))
	return hex.EncodeToString(sum[:16])
}

// Added is what Add did with a trigger.
type Added struct {
	// Entry is the entry that carries the trigger now.
	Entry QueuedTrigger
	// Merged: the same push was queued or running already, and Entry is
	// its entry (with the callback added).
	Merged bool
	// Superseded is the idle entry the new one took the place of, as it
	// was (nil when there was none).
	Superseded *QueuedTrigger
}

// Add records a trigger for a service, identified by push, before its
// sender is answered. When the same push is already queued or running
// (from any receiver) it merges into that rollout: the callback is added.
// Otherwise a new rollout (newRecord) is queued: in place of the service's
// entry that waits, if there is one (compare-and-swap; carry hands what the
// old one carried to the new one), so a service has at most one waiting
// entry however many pushes arrive, and a push costs one read and one
// write. A push that repeats a running rollout's with again set (a manual
// "roll now") gets a rollout of its own.
func (q Triggers) Add(ctx context.Context, service, push string, again bool, newRecord func() fleetroll.Report, callback string,
	carry func(old QueuedTrigger, e *QueuedTrigger)) (Added, error) {
	dir, err := entriesDir(service)
	if err != nil {
		return Added{}, err
	}
	name := pushName(push)
	var rec *fleetroll.Report
	for range 10 {
		es, err := q.listDir(ctx, dir)
		if err != nil {
			return Added{}, fmt.Errorf("queue %s: %w", service, err)
		}
		var same, idle *QueuedTrigger
		for i := range es {
			if es[i].pushName() == name {
				same = &es[i]
			}
			if es[i].Runner == "" && (idle == nil || es[i].Index > idle.Index) {
				idle = &es[i]
			}
		}
		if same != nil {
			if again && same.Runner != "" {
				push += "|" + same.Record.ID
				name = pushName(push)
				continue
			}
			if callback == "" || slices.Contains(same.Callbacks, callback) {
				return Added{Entry: *same, Merged: true}, nil
			}
			same.Callbacks, same.Event = addOnce(same.Callbacks, callback), nil
			if err := q.put(ctx, same); isCode(err, client.ErrorCodeTestFailed) || isCode(err, client.ErrorCodeKeyNotFound) {
				continue
			} else if err != nil {
				return Added{}, fmt.Errorf("queue %s: %w", service, err)
			}
			return Added{Entry: *same, Merged: true}, nil
		}
		if rec == nil {
			r := newRecord()
			rec = &r
		}
		e := QueuedTrigger{Record: rec.Clone(), Callbacks: addOnce(nil, callback), Push: name}
		if idle == nil {
			b, err := json.Marshal(e)
			if err != nil {
				return Added{}, err
			}
			key := dir + "/" + name
			if slices.ContainsFunc(es, func(o QueuedTrigger) bool { return o.Key == key }) {
				// The entry this push created once carries a newer push now:
				// this one gets a key of its own.
				key = dir + "/" + pushName(push+"|"+rec.ID)
			}
			r, err := q.KAPI.Set(ctx, key, string(b), &client.SetOptions{PrevExist: client.PrevNoExist})
			if isCode(err, client.ErrorCodeNodeExist) {
				continue // another receiver got the same push first
			}
			if err != nil {
				return Added{}, fmt.Errorf("queue %s: %w", service, err)
			}
			e.Key, e.Index, e.mod = key, r.Node.CreatedIndex, r.Node.ModifiedIndex
			return Added{Entry: e}, nil
		}
		old := *idle
		if carry != nil {
			carry(old, &e)
		}
		e.Key, e.Index, e.mod = old.Key, old.Index, old.mod
		if err := q.put(ctx, &e); isCode(err, client.ErrorCodeTestFailed) || isCode(err, client.ErrorCodeKeyNotFound) {
			continue // taken or replaced meanwhile: look again
		} else if err != nil {
			return Added{}, fmt.Errorf("queue %s: %w", service, err)
		}
		return Added{Entry: e, Superseded: &old}, nil
	}
	return Added{}, fmt.Errorf("queue %s: too many concurrent changes", service)
}

// listDir returns one service's entries, oldest first.
func (q Triggers) listDir(ctx context.Context, dir string) ([]QueuedTrigger, error) {
	resp, err := q.KAPI.Get(ctx, dir, nil)
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var es []QueuedTrigger
	for _, n := range resp.Node.Nodes {
		if e, err := decodeTrigger(n); err == nil {
			es = append(es, e)
		}
	}
	slices.SortFunc(es, func(a, b QueuedTrigger) int { return cmp.Compare(a.Index, b.Index) })
	return es, nil
}

// pushName is the name of the push the entry carries (entries written
// before it was recorded are named by their key).
func (e QueuedTrigger) pushName() string {
	if e.Push != "" {
		return e.Push
	}
	return path.Base(e.Key)
}

// addOnce adds a callback URL once, keeping the newest few.
func addOnce(cbs []string, cb string) []string {
	if cb == "" || slices.Contains(cbs, cb) {
		return cbs
	}
	cbs = append(cbs, cb)
	if n := len(cbs) - 21; n > 0 {
		cbs = cbs[n:]
	}
	return cbs
}

func decodeTrigger(n *client.Node) (QueuedTrigger, error) {
	var e QueuedTrigger
	if err := json.Unmarshal([]byte(n.Value), &e); err != nil {
		return QueuedTrigger{}, fmt.Errorf("queue entry %s: %w", n.Key, err)
	}
	e.Key, e.Index, e.mod = n.Key, n.CreatedIndex, n.ModifiedIndex
	return e, nil
}

// put writes an entry back, if nobody changed it since it was read.
func (q Triggers) put(ctx context.Context, e *QueuedTrigger) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	r, err := q.KAPI.Set(ctx, e.Key, string(b), &client.SetOptions{PrevExist: client.PrevExist, PrevIndex: e.mod})
	if err != nil {
		return err
	}
	e.mod = r.Node.ModifiedIndex
	return nil
}

// List returns the queued triggers of every service, oldest first.
func (q Triggers) List(ctx context.Context) (map[string][]QueuedTrigger, error) {
	resp, err := q.KAPI.Get(ctx, QueuePrefix+"/entries", &client.GetOptions{Recursive: true})
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return map[string][]QueuedTrigger{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	out := map[string][]QueuedTrigger{}
	for _, dir := range resp.Node.Nodes {
		service := path.Base(dir.Key)
		for _, n := range dir.Nodes {
			if e, err := decodeTrigger(n); err == nil {
				out[service] = append(out[service], e)
			}
		}
		slices.SortFunc(out[service], func(a, b QueuedTrigger) int { return cmp.Compare(a.Index, b.Index) })
	}
	return out, nil
}

// read reads one entry.
func (q Triggers) read(ctx context.Context, key string) (QueuedTrigger, error) {
	resp, err := q.KAPI.Get(ctx, key, nil)
	if err != nil {
		return QueuedTrigger{}, fmt.Errorf("queue entry: %w", err)
	}
	return decodeTrigger(resp.Node)
}

// Update changes an entry with fn (read, change, compare-and-swap, again
// on a conflict). It returns the entry as written.
func (q Triggers) Update(ctx context.Context, key string, fn func(*QueuedTrigger)) (QueuedTrigger, error) {
	return q.UpdateIf(ctx, key, nil, fn)
}

// UpdateIf is Update when ok, asked of the entry as it is before each
// change, accepts it; its error is returned otherwise.
func (q Triggers) UpdateIf(ctx context.Context, key string, ok func(QueuedTrigger) error, fn func(*QueuedTrigger)) (QueuedTrigger, error) {
	for range 10 {
		e, err := q.read(ctx, key)
		if err != nil {
			return QueuedTrigger{}, err
		}
		if ok != nil {
			if err := ok(e); err != nil {
				return e, err
			}
		}
		e.Event = nil
		fn(&e)
		if err := q.put(ctx, &e); isCode(err, client.ErrorCodeTestFailed) {
			continue
		} else if err != nil {
			return QueuedTrigger{}, fmt.Errorf("queue entry: %w", err)
		}
		return e, nil
	}
	return QueuedTrigger{}, errors.New("queue entry: too many concurrent changes")
}

// Remove deletes an entry once its rollout has ended and returns it as it
// was last (with the callbacks added until then).
func (q Triggers) Remove(ctx context.Context, key string) (QueuedTrigger, error) {
	return q.RemoveIf(ctx, key, nil)
}

// RemoveIf is Remove when ok, asked of the entry as it is at the delete
// (compare-and-swap), accepts it; its error is returned otherwise.
func (q Triggers) RemoveIf(ctx context.Context, key string, ok func(QueuedTrigger) error) (QueuedTrigger, error) {
	for range 10 {
		e, err := q.read(ctx, key)
		if err != nil {
			return QueuedTrigger{}, err
		}
		if ok != nil {
			if err := ok(e); err != nil {
				return e, err
			}
		}
		_, err = q.KAPI.Delete(ctx, key, &client.DeleteOptions{PrevIndex: e.mod})
		if isCode(err, client.ErrorCodeTestFailed) {
			continue
		}
		if err != nil {
			return QueuedTrigger{}, fmt.Errorf("queue entry: %w", err)
		}
		return e, nil
	}
	return QueuedTrigger{}, errors.New("queue entry: too many concurrent changes")
}

// Claim is the lease a receiver holds while it runs a service's queue:
// one receiver at a time, and the others take over when it lapses.
func (q Triggers) Claim(service, owner string, ttl time.Duration) Lock {
	return Lock{KAPI: q.KAPI, Key: QueuePrefix + "/claims/" + service, Owner: owner, TTL: ttl}
}

// DeliveryPrefix is where receivers remember the deliveries they saw, for
// the replay window: DeliveryPrefix/SLOT, one of a fixed number of slots
// (the delivery's hash decides which), each holding one delivery's hash and
// the rollouts it started. However many deliveries arrive, there are at
// most that many keys: a delivery whose slot another took since is no
// longer remembered (its replay is taken for a new delivery).
const DeliveryPrefix = "/fleetroll/deliveries"

// DefaultDeliverySlots bounds the deliveries remembered in etcd.
const DefaultDeliverySlots = 10000

// Deliveries remembers deliveries across receivers.
type Deliveries struct {
	KAPI   client.KeysAPI
	Window time.Duration
	// Slots bounds the keys (DefaultDeliverySlots when zero).
	Slots int
}

// slot is the delivery's key and the hash its value starts with.
func (d Deliveries) slot(key string) (k, hash string) {
	sum := sha256.Sum256([]byte(key))
	n := d.Slots
	if n <= 0 {
		n = DefaultDeliverySlots
	}
	return fmt.Sprintf("%s/%d", DeliveryPrefix, binary.BigEndian.Uint64(sum[:8])%uint64(n)), hex.EncodeToString(sum[:16])
}

// Claim records a delivery and reports whether any receiver saw it within
// the window (and still remembers it), with the rollouts it started then.
func (d Deliveries) Claim(ctx context.Context, key string) ([]string, bool, error) {
	k, hash := d.slot(key)
	for range 10 {
		resp, err := d.KAPI.Get(ctx, k, nil)
		var opts *client.SetOptions
		switch {
		case isCode(err, client.ErrorCodeKeyNotFound):
			opts = &client.SetOptions{PrevExist: client.PrevNoExist, TTL: d.Window}
		case err != nil:
			return nil, false, fmt.Errorf("deliveries: %w", err)
		default:
			h, ids, _ := strings.Cut(resp.Node.Value, "|")
			if h == hash {
				if ids == "" {
					return nil, true, nil
				}
				return strings.Split(ids, ","), true, nil
			}
			// Another delivery's slot: this one takes it over.
			opts = &client.SetOptions{PrevIndex: resp.Node.ModifiedIndex, TTL: d.Window}
		}
		_, err = d.KAPI.Set(ctx, k, hash+"|", opts)
		switch {
		case err == nil:
			return nil, false, nil
		case isCode(err, client.ErrorCodeNodeExist) || isCode(err, client.ErrorCodeTestFailed) || isCode(err, client.ErrorCodeKeyNotFound):
			continue // changed meanwhile: look again
		default:
			return nil, false, fmt.Errorf("deliveries: %w", err)
		}
	}
	return nil, false, errors.New("deliveries: too many concurrent changes")
}

// Started notes the rollouts a claimed delivery started (while its slot is
// still its own).
func (d Deliveries) Started(ctx context.Context, key string, ids []string) error {
	k, hash := d.slot(key)
	_, err := d.KAPI.Set(ctx, k, hash+"|"+strings.Join(ids, ","), &client.SetOptions{PrevValue: hash + "|", TTL: d.Window})
	if isCode(err, client.ErrorCodeTestFailed) || isCode(err, client.ErrorCodeKeyNotFound) {
		return nil // its slot was taken since: nothing to note
	}
	return err
}

// Forget drops a delivery that started nothing, so that its retry is not
// taken for a replay.
func (d Deliveries) Forget(ctx context.Context, key string) error {
	k, hash := d.slot(key)
	resp, err := d.KAPI.Get(ctx, k, nil)
	if isCode(err, client.ErrorCodeKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if h, _, _ := strings.Cut(resp.Node.Value, "|"); h != hash {
		return nil // another delivery's now
	}
	_, err = d.KAPI.Delete(ctx, k, &client.DeleteOptions{PrevIndex: resp.Node.ModifiedIndex})
	if isCode(err, client.ErrorCodeKeyNotFound) || isCode(err, client.ErrorCodeTestFailed) {
		return nil
	}
	return err
}

// Watch calls wake with each change under prefix until ctx ends. A broken
// watch is set up again after a pause, with a wake-up of nil (changes may
// have been missed).
func Watch(ctx context.Context, kapi client.KeysAPI, prefix string, wake func(*client.Response)) {
	WatchFrom(ctx, kapi, prefix, 0, wake)
}

// WatchFrom is Watch from the changes after etcd's index after (0: from
// now on); a watch set up again starts from now.
func WatchFrom(ctx context.Context, kapi client.KeysAPI, prefix string, after uint64, wake func(*client.Response)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		w := kapi.Watcher(prefix, &client.WatcherOptions{Recursive: true, AfterIndex: after})
		after = 0
		for {
			resp, err := w.Next(ctx)
			if err != nil {
				break
			}
			backoff = 100 * time.Millisecond
			wake(resp)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
		wake(nil)
	}
}

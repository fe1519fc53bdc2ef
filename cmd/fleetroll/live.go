package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// liveView draws one line per unit of a roll and redraws them in place as
// events come and time passes (a terminal only: elsewhere restart prints a
// line per event).
type liveView struct {
	w     io.Writer
	now   func() time.Time
	mu    sync.Mutex
	order []string
	rows  map[string]*liveRow
	drawn int
}

type liveRow struct {
	what  string // the last step
	phase fleetroll.Phase
	since time.Time
	took  time.Duration
	done  bool
}

func newLiveView(w io.Writer, units []string, now func() time.Time) *liveView {
	v := &liveView{w: w, now: now, order: units, rows: map[string]*liveRow{}}
	for _, u := range units {
		v.rows[u] = &liveRow{what: "pending"}
	}
	return v
}

// event takes a roller event; the rollout's own (a canary pause) are
// printed above the view.
func (v *liveView) event(e fleetroll.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e.Unit == "" {
		v.clearLocked()
		printEvent(v.w, e)
		v.drawLocked()
		return
	}
	r, ok := v.rows[e.Unit]
	if !ok {
		r = &liveRow{}
		v.rows[e.Unit] = r
		v.order = append(v.order, e.Unit)
	}
	if e.Phase != r.phase || r.since.IsZero() {
		r.since = v.now()
	}
	r.phase, r.what = e.Phase, string(e.Kind)
	if e.Kind == fleetroll.EventPhase {
		r.what = string(e.Phase)
	}
	switch e.Kind {
	case fleetroll.EventHealthy, fleetroll.EventFailed:
		r.done, r.took = true, e.Elapsed
	case fleetroll.EventRunning:
		if e.Phase == "" {
			r.done, r.took = true, time.Duration(e.Progress.Total)
		}
	}
	if e.Kind == fleetroll.EventFailed && e.Err != nil {
		r.what = "FAILED: " + e.Err.Error()
	}
	v.drawLocked()
}

// tick redraws (the elapsed times) until ctx ends.
func (v *liveView) tick(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			v.mu.Lock()
			v.drawLocked()
			v.mu.Unlock()
		}
	}
}

func (v *liveView) clearLocked() {
	if v.drawn > 0 {
		fmt.Fprintf(v.w, "\x1b[%dA\x1b[J", v.drawn)
		v.drawn = 0
	}
}

func (v *liveView) drawLocked() {
	var b strings.Builder
	if v.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", v.drawn)
	}
	width := 0
	for _, u := range v.order {
		width = max(width, len(u))
	}
	for _, u := range v.order {
		r := v.rows[u]
		elapsed := ""
		switch {
		case r.done:
			elapsed = r.took.Round(100 * time.Millisecond).String()
		case !r.since.IsZero():
			d := v.now().Sub(r.since)
			elapsed = d.Round(100*time.Millisecond).String() + " " + strings.Repeat("█", min(int(d/time.Second), 30))
		}
		fmt.Fprintf(&b, "\x1b[2K%-*s  %-10s %s\n", width, u, r.what, elapsed)
	}
	v.drawn = len(v.order)
	_, _ = io.WriteString(v.w, b.String())
}

// progress returns the OnEvent of a roll: the live view on a terminal
// (with its ticker, stopped by the returned func), a line per event
// elsewhere.
func progress(ctx context.Context, w io.Writer, plan *fleetroll.Plan) (onEvent func(fleetroll.Event), say func(string), stop func()) {
	if !isTerminal(w) {
		return func(e fleetroll.Event) { printEvent(w, e) }, func(msg string) { fmt.Fprintln(w, msg) }, func() {}
	}
	var units []string
	for _, u := range plan.Units {
		units = append(units, u.Name)
	}
	v := newLiveView(w, units, time.Now)
	tctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); v.tick(tctx) }()
	v.mu.Lock()
	v.drawLocked()
	v.mu.Unlock()
	say = func(msg string) {
		v.mu.Lock()
		defer v.mu.Unlock()
		v.clearLocked()
		fmt.Fprintln(w, msg)
		v.drawLocked()
	}
	var once sync.Once
	return v.event, say, func() {
		once.Do(func() {
			cancel()
			<-done
			v.mu.Lock()
			v.drawLocked()
			v.mu.Unlock()
		})
	}
}

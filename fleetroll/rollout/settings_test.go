package rollout

import (
	"slices"
	"testing"
)

// The waits watch fleet's state writes by default when there is etcd;
// --watch=false polls alone; without etcd they poll (and an explicit
// --watch is refused: Uses).
func TestWatches(t *testing.T) {
	for _, c := range []struct {
		watch   *bool
		etcd    bool
		want    bool
		needsIt bool
	}{
		{nil, true, true, false},
		{nil, false, false, false},
		{new(false), true, false, false},
		{new(true), true, true, true},
		{new(true), false, false, true},
	} {
		s := Defaults()
		s.Watch = c.watch
		if got := s.Watches(c.etcd); got != c.want {
			t.Errorf("watch %v, etcd %v: watches %v, want %v", c.watch, c.etcd, got, c.want)
		}
		if got := slices.Contains(s.Uses(), "--watch"); got != c.needsIt {
			t.Errorf("watch %v: needs etcd %v, want %v", c.watch, got, c.needsIt)
		}
	}
}

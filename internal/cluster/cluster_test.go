package cluster

import "testing"

func TestMostDown(t *testing.T) {
	s := func(left, entered int64) SystemdState { return SystemdState{LeftActive: left, EnteredActive: entered} }
	for _, c := range []struct {
		name   string
		states []SystemdState
		since  int64
		want   int
	}{
		{"one at a time", []SystemdState{s(10, 20), s(20, 30), s(30, 40)}, 0, 1},
		{"two overlap", []SystemdState{s(10, 20), s(15, 30), s(30, 40)}, 0, 2},
		{"three overlap", []SystemdState{s(10, 50), s(15, 30), s(20, 40)}, 0, 3},
		{"before the roll does not count", []SystemdState{s(5, 50), s(15, 30)}, 10, 1},
		{"still down", []SystemdState{s(10, 5), s(15, 30)}, 0, 2},
		{"never restarted", []SystemdState{s(0, 0), s(15, 30)}, 0, 1},
	} {
		if got := MostDown(c.states, c.since); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

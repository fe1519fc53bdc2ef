package fleetroll

import (
	"fmt"
	"strconv"
	"strings"
)

// Unavailable bounds how many units a roll takes down at once: N units, or
// P percent of the plan's units (rounded down, at least 1). The zero value
// is 1: one at a time.
type Unavailable struct {
	N       int
	Percent int
}

// ParseUnavailable reads "N" (N ≥ 1) or "P%" (1 ≤ P ≤ 100); "" is the
// default, 1. Flags and the configuration file both read it here.
func ParseUnavailable(s string) (Unavailable, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Unavailable{}, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.Atoi(p)
		if err != nil || v < 1 || v > 100 {
			return Unavailable{}, fmt.Errorf("max unavailable %q: want a number of units (1 or more) or a percentage (1%% to 100%%)", s)
		}
		return Unavailable{Percent: v}, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 {
		return Unavailable{}, fmt.Errorf("max unavailable %q: want a number of units (1 or more) or a percentage (1%% to 100%%)", s)
	}
	return Unavailable{N: v}, nil
}

// Validate rejects what ParseUnavailable would not return.
func (u Unavailable) Validate() error {
	if u.N < 0 || u.Percent < 0 || u.Percent > 100 || (u.N > 0 && u.Percent > 0) {
		return fmt.Errorf("max unavailable %+v: want N units or a percentage", u)
	}
	return nil
}

// Of is the number of units that may be down at once in a plan of total.
func (u Unavailable) Of(total int) int {
	if u.Percent > 0 {
		return max(total*u.Percent/100, 1)
	}
	return max(u.N, 1)
}

func (u Unavailable) String() string {
	if u.Percent > 0 {
		return strconv.Itoa(u.Percent) + "%"
	}
	return strconv.Itoa(max(u.N, 1))
}

// UnmarshalText reads the configuration file's max_unavailable.
func (u *Unavailable) UnmarshalText(b []byte) error {
	v, err := ParseUnavailable(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}

// MarshalText writes it back as it is read.
func (u Unavailable) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

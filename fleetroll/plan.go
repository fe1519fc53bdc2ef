package fleetroll

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/coreos/fleet/schema"
)

// Target names the units to roll: a service with explicit instances (usually
// ports), a service whose instances are discovered, or explicit unit names.
type Target struct {
	// Service is the template name, "my-service" for my-service@.service.
	Service string
	// Instances lists instance names ("8901"); empty means every instance of
	// the template whose desired state is "launched".
	Instances []string
	// Units lists full unit names; it excludes Service and Instances.
	Units []string
}

// PlanError is a problem with what was asked for rather than with the
// cluster: unknown units, nothing to roll, a bad target.
type PlanError struct{ Msg string }

func (e *PlanError) Error() string { return e.Msg }

// Plan is the ordered list of units a roll will restart.
type Plan struct {
	Service string        `json:"service"`
	Units   []PlannedUnit `json:"units"`
	// NotLaunched, for a plan of every launched instance, names the
	// service's instances fleet knows whose target is not launched (left
	// stopped by someone, or by a fleetroll that died): they are not
	// restarted, and the caller should say so.
	NotLaunched []string `json:"not_launched,omitempty"`
}

// PlannedUnit is one unit of a plan with the state it had at planning time.
type PlannedUnit struct {
	Name    string `json:"name"`
	State   string `json:"state"`
	Running bool   `json:"running"`
}

// Names returns the plan's unit names in order.
func (p *Plan) Names() []string {
	names := make([]string, len(p.Units))
	for i, u := range p.Units {
		names[i] = u.Name
	}
	return names
}

// Validate checks a target's shape without asking fleet.
func (t Target) Validate() error {
	switch {
	case len(t.Units) > 0 && (t.Service != "" || len(t.Instances) > 0):
		return &PlanError{"give either a service (with optional instances) or full unit names, not both"}
	case len(t.Units) > 0:
		for _, u := range t.Units {
			if _, _, ok := splitInstance(u); !ok {
				return &PlanError{fmt.Sprintf("%q is not an instance unit name like my-service@8901.service", u)}
			}
		}
	case t.Service == "":
		return &PlanError{"no service given"}
	case strings.ContainsAny(t.Service, "@/ \t") || strings.HasSuffix(t.Service, ".service"):
		return &PlanError{fmt.Sprintf("service %q: give the template name without @ or .service (my-service), or full unit names", t.Service)}
	}
	if err := ValidateServiceName(t.Service); t.Service != "" && err != nil {
		return &PlanError{err.Error()}
	}
	for _, in := range t.Instances {
		if !instanceRe.MatchString(in) {
			return &PlanError{fmt.Sprintf("bad instance name %q: letters, digits, _, : and - only", in)}
		}
	}
	return nil
}

var (
	serviceRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$`)
	instanceRe = regexp.MustCompile(`^[A-Za-z0-9_:-]{1,64}$`)
	idRe       = regexp.MustCompile(`^[0-9a-f]{12}$`)
)

// ValidateServiceName checks a service (template) name wherever one enters:
// flags, config, a request, fleetroll status. Names become etcd keys
// (/fleetroll/history/NAME), so "/", ".." and the like never pass.
func ValidateServiceName(name string) error {
	if !serviceRe.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("service name %q: want letters, digits, _, ., : and - (starting with a letter or digit, no \"..\")", name)
	}
	return nil
}

// ValidRolloutID reports whether id has the shape of NewID's IDs.
func ValidRolloutID(id string) bool { return idRe.MatchString(id) }

// UnitName returns "service@instance.service".
func UnitName(service, instance string) string {
	return service + "@" + instance + ".service"
}

// MakePlan resolves a target against fleet before anything is touched: every
// named unit must exist (all missing ones are named in one PlanError), and a
// discovered service must have at least one launched instance. Units that are
// not running at planning time come first, so the roll never takes down a
// running instance while another is already down.
func MakePlan(ctx context.Context, f Fleet, t Target) (*Plan, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	units, err := f.Units(ctx)
	if err != nil {
		return nil, fmt.Errorf("list units: %w", err)
	}
	known := make(map[string]*schema.Unit, len(units))
	for _, u := range units {
		if u != nil {
			known[u.Name] = u
		}
	}

	var names, notLaunched []string
	switch {
	case len(t.Units) > 0:
		names = dedupe(t.Units)
	case len(t.Instances) > 0:
		for _, in := range dedupe(t.Instances) {
			names = append(names, UnitName(t.Service, in))
		}
	default:
		names = discover(t.Service, units)
		for _, u := range units {
			if u == nil {
				continue
			}
			if svc, _, ok := splitInstance(u.Name); ok && svc == t.Service && u.DesiredState != "launched" {
				notLaunched = append(notLaunched, u.Name)
			}
		}
		sort.Strings(notLaunched)
		if len(names) == 0 {
			return nil, &PlanError{fmt.Sprintf("no launched instances of %s found in fleet", UnitName(t.Service, ""))}
		}
	}

	var missing []string
	for _, n := range names {
		if _, ok := known[n]; !ok {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return nil, &PlanError{fmt.Sprintf("unknown to fleet: %s", strings.Join(missing, ", "))}
	}

	plan := &Plan{Service: t.Service, NotLaunched: notLaunched}
	if plan.Service == "" {
		plan.Service, _, _ = splitInstance(names[0])
	}
	states, err := f.UnitStates(ctx)
	if err != nil {
		return nil, fmt.Errorf("states of %s's units: %w", plan.Service, err)
	}
	for _, n := range names {
		st, _ := findState(states, n) // none published: not running
		_, running, _ := RunningStatus(st)
		plan.Units = append(plan.Units, PlannedUnit{Name: n, State: DescribeState(st), Running: running})
	}
	sort.SliceStable(plan.Units, func(i, j int) bool {
		return !plan.Units[i].Running && plan.Units[j].Running
	})
	return plan, nil
}

// discover lists the launched instances of service@.service, ordered by
// instance: numerically when every instance is a number, else by name.
func discover(service string, units []*schema.Unit) []string {
	type inst struct {
		name, instance string
	}
	var found []inst
	numeric := true
	for _, u := range units {
		if u == nil || u.DesiredState != "launched" {
			continue
		}
		svc, in, ok := splitInstance(u.Name)
		if !ok || svc != service {
			continue
		}
		if _, err := strconv.ParseUint(in, 10, 64); err != nil {
			numeric = false
		}
		found = append(found, inst{u.Name, in})
	}
	sort.Slice(found, func(i, j int) bool {
		a, b := found[i].instance, found[j].instance
		if numeric && len(a) != len(b) {
			return len(a) < len(b)
		}
		return a < b
	})
	names := make([]string, len(found))
	for i, f := range found {
		names[i] = f.name
	}
	return names
}

// ParseInstances parses a port list such as "8901,8902" or "8901-8904" (the
// two forms may be mixed) into instance names, in the order given.
func ParseInstances(s string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, &PlanError{fmt.Sprintf("port list %q: empty element", s)}
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := parsePort(lo)
		if err != nil {
			return nil, &PlanError{fmt.Sprintf("port list %q: %v", s, err)}
		}
		b := a
		if isRange {
			if b, err = parsePort(hi); err != nil {
				return nil, &PlanError{fmt.Sprintf("port list %q: %v", s, err)}
			}
			if b < a {
				return nil, &PlanError{fmt.Sprintf("port list %q: range %s is reversed", s, part)}
			}
			if b-a >= 1024 {
				return nil, &PlanError{fmt.Sprintf("port list %q: range %s is too large", s, part)}
			}
		}
		for p := a; p <= b; p++ {
			out = append(out, strconv.Itoa(p))
		}
	}
	return out, nil
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return p, nil
}

func dedupe(in []string) []string {
	seen := make(map[string]bool, len(in))
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// splitInstance splits an instance unit name:
// "my-service@8901.service" -> ("my-service", "8901", true).
func splitInstance(unit string) (service, instance string, ok bool) {
	base, found := strings.CutSuffix(unit, ".service")
	if !found {
		return "", "", false
	}
	service, instance, ok = strings.Cut(base, "@")
	if !ok || service == "" || instance == "" {
		return "", "", false
	}
	return service, instance, true
}

package fleetroll

import (
	"context"
	"errors"
	"github.com/fleetroll/fleetroll/internal/fakefleet"
	"reflect"
	"strings"
	"testing"
)

func TestParseInstances(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"8901", []string{"8901"}, ""},
		{"8901,8902", []string{"8901", "8902"}, ""},
		{"8901-8904", []string{"8901", "8902", "8903", "8904"}, ""},
		{"8910, 8901-8902", []string{"8910", "8901", "8902"}, ""},
		{"", nil, "empty element"},
		{"8901,,8902", nil, "empty element"},
		{"abc", nil, "not a port"},
		{"0", nil, "not a port"},
		{"70000", nil, "not a port"},
		{"8904-8901", nil, "reversed"},
		{"1-9000", nil, "too large"},
		{"8901-", nil, "not a port"},
	} {
		got, err := ParseInstances(tc.in)
		if tc.wantErr != "" {
			var pe *PlanError
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &pe) {
				t.Errorf("ParseInstances(%q) err = %v, want PlanError containing %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseInstances(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestTargetValidate(t *testing.T) {
	for _, tc := range []struct {
		t  Target
		ok bool
	}{
		{Target{Service: "my-service"}, true},
		{Target{Service: "my-service", Instances: []string{"8901"}}, true},
		{Target{Units: []string{"my-service@8901.service"}}, true},
		{Target{}, false},
		{Target{Service: "my-service@8901.service"}, false},
		{Target{Service: "my-service.service"}, false},
		{Target{Units: []string{"my-service.service"}}, false},
		{Target{Service: "a", Units: []string{"a@1.service"}}, false},
		{Target{Service: "a", Instances: []string{"../x"}}, false},
	} {
		if err := tc.t.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: err = %v, want ok=%v", tc.t, err, tc.ok)
		}
	}
}

func TestMakePlanDiscoversLaunchedInstancesInNumericOrder(t *testing.T) {
	f := newFakeFleet("my-service@8910.service", "my-service@8902.service", "other@1.service", "my-service@900.service", "my-service.service")
	f.Add("my-service@8903.service", fakefleet.Unit{Desired: "loaded", Active: "inactive", Sub: "dead"})
	p, err := MakePlan(context.Background(), connectFake(t, f), Target{Service: "my-service"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"my-service@900.service", "my-service@8902.service", "my-service@8910.service"}
	if got := p.Names(); !reflect.DeepEqual(got, want) {
		t.Fatalf("plan = %v, want %v", got, want)
	}
	// The loaded one is named, not silently skipped.
	if !reflect.DeepEqual(p.NotLaunched, []string{"my-service@8903.service"}) {
		t.Fatalf("not launched = %v", p.NotLaunched)
	}
	for _, c := range f.Calls() {
		if strings.HasPrefix(c, "set ") {
			t.Fatalf("planning touched a unit: %s", c)
		}
	}
}

func TestMakePlanNamesEveryMissingUnit(t *testing.T) {
	f := newFakeFleet("my-service@8901.service")
	_, err := MakePlan(context.Background(), connectFake(t, f), Target{Service: "my-service", Instances: []string{"8901", "8902", "8903"}})
	var pe *PlanError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want PlanError", err)
	}
	if !strings.Contains(err.Error(), "my-service@8902.service, my-service@8903.service") {
		t.Fatalf("err = %q does not name both missing units", err)
	}
}

func TestMakePlanNoInstances(t *testing.T) {
	_, err := MakePlan(context.Background(), connectFake(t, newFakeFleet("other@1.service")), Target{Service: "my-service"})
	var pe *PlanError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "my-service@.service") {
		t.Fatalf("err = %v, want PlanError naming the template", err)
	}
}

func TestMakePlanPutsDownUnitsFirst(t *testing.T) {
	f := newFakeFleet("s@1.service")
	f.Add("s@2.service", fakefleet.Unit{Desired: "launched", Active: "failed", Sub: "failed", Machine: "m"})
	f.Add("s@3.service", fakefleet.Unit{})
	p, err := MakePlan(context.Background(), connectFake(t, f), Target{Service: "s", Instances: []string{"1", "2", "3"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.Names(), []string{"s@2.service", "s@1.service", "s@3.service"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("plan = %v, want %v", got, want)
	}
}

func TestMakePlanListError(t *testing.T) {
	f := newFakeFleet("s@1.service")
	f.FailNext(fakefleet.Fault{Status: 400, Message: "boom"})
	if _, err := MakePlan(context.Background(), connectFake(t, f), Target{Service: "s"}); err == nil || !strings.Contains(err.Error(), "list units: ") || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("err = %v", err)
	}
}

package hook

import (
	"errors"
	"fmt"
	"strings"
)

// CheckResult is what Check found in a configuration that serve would
// start with: its counts, and what in it needs etcd (which serve finds
// only as it starts).
type CheckResult struct {
	Services, Notifications int
	// NeedsEtcd names each service whose settings need etcd, and why
	// ("my-service (--canary, poll)").
	NeedsEtcd []string
}

// Check validates what New would, without fleet or etcd: the
// configuration, the secrets (each set, long enough, no two alike), every
// service's settings and the notifications' secrets (a URL on the
// notifications' allow-list, a webhook's key). Its errors never carry a
// secret. serve --check-config runs it.
func Check(opt Options) (*CheckResult, error) {
	if opt.Config == nil {
		return nil, errors.New("hook: no configuration")
	}
	if err := opt.Config.Validate(); err != nil {
		return nil, err
	}
	if err := opt.Secrets.Validate(); err != nil {
		return nil, err
	}
	res := &CheckResult{Services: len(opt.Config.Services), Notifications: len(opt.Config.Notifications)}
	for i, svc := range opt.Config.Services {
		s := svc.Settings.Complete(svc.Name)
		if err := s.Validate(); err != nil {
			return nil, fmt.Errorf("services[%d] (%s): %w", i, svc.Name, err)
		}
		uses := s.Uses()
		if svc.Poll != nil {
			uses = append(uses, "poll")
		}
		if len(uses) > 0 {
			res.NeedsEtcd = append(res.NeedsEtcd, svc.Name+" ("+strings.Join(uses, ", ")+")")
		}
	}
	if opt.Callbacks == nil {
		cb, err := defaultCallbacker()
		if err != nil {
			return nil, err
		}
		opt.Callbacks = cb
	}
	if _, err := resolveTargets(opt.Config, opt); err != nil {
		return nil, err
	}
	return res, nil
}

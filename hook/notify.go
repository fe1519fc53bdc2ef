package hook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// Notification is a target rollouts are announced to (configuration,
// notifications:). Its URL, and a webhook's signing key, are secrets: they
// never live in the file (Options.NotifySecret reads them).
type Notification struct {
	Name string `yaml:"name"`
	// Kind is slack (a Slack-compatible incoming webhook) or webhook (a
	// JSON document signed with HMAC-SHA256, as GitHub signs).
	Kind string `yaml:"kind"`
	// Events it is told of; empty: all of NotifyEvents.
	Events []string `yaml:"events"`
}

// Kinds of notification targets.
const (
	NotifySlack   = "slack"
	NotifyWebhook = "webhook"
)

// NotifyEvents are the events a notification can be told of: a rollout
// started, and how it ended.
var NotifyEvents = []string{"started", string(fleetroll.StatusSucceeded), string(fleetroll.StatusFailed),
	string(fleetroll.StatusInterrupted), string(fleetroll.StatusRolledBack), string(fleetroll.StatusAborted)}

// SignatureHeader carries a webhook notification's signature:
// "sha256=" and the hex HMAC-SHA256 of the body with the target's key.
const SignatureHeader = "X-Fleetroll-Signature-256"

var notifyNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// validate checks one notification (errors name the field).
func (n Notification) validate() error {
	if !notifyNameRe.MatchString(n.Name) {
		return fmt.Errorf("name %q: want lower-case letters, digits and -", n.Name)
	}
	if n.Kind != NotifySlack && n.Kind != NotifyWebhook {
		return fmt.Errorf("kind %q: want slack or webhook", n.Kind)
	}
	for _, e := range n.Events {
		if !slices.Contains(NotifyEvents, e) {
			return fmt.Errorf("events: %q: want one of %s", e, strings.Join(NotifyEvents, ", "))
		}
	}
	return nil
}

func (n Notification) wants(event string) bool {
	return len(n.Events) == 0 || slices.Contains(n.Events, event)
}

// NotifySecret is where a target's message goes and, for a webhook, the
// key it is signed with.
type NotifySecret struct {
	URL string
	Key string
}

// notifyTarget is a configured notification with its secret.
type notifyTarget struct {
	Notification
	NotifySecret
}

// resolveTargets reads the secret of every configured notification and
// checks it: a URL on the notifications' allow-list (--notify-allow), a
// key for a webhook.
func resolveTargets(c *Config, opt Options) (map[string]notifyTarget, error) {
	out := map[string]notifyTarget{}
	for i, n := range c.Notifications {
		field := fmt.Sprintf("notifications[%d] (%s)", i, n.Name)
		if opt.NotifySecret == nil {
			return nil, fmt.Errorf("%s: no way to read notification secrets", field)
		}
		sec, err := opt.NotifySecret(n.Name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		if sec.URL == "" {
			return nil, fmt.Errorf("%s: its URL is not set", field)
		}
		if opt.Callbacks == nil || !opt.Callbacks.NotifyAllowed(sec.URL) {
			return nil, fmt.Errorf("%s: its URL's origin %s is not on --notify-allow", field, originOf(sec.URL))
		}
		if n.Kind == NotifyWebhook && len(sec.Key) < 16 {
			return nil, fmt.Errorf("%s: a webhook needs a signing key of at least 16 characters", field)
		}
		out[n.Name] = notifyTarget{n, sec}
	}
	return out, nil
}

// notifyRollout is a rollout as a notification tells it: what an outsider
// may see (no addresses, no machine IDs, no transport errors).
type notifyRollout struct {
	ID       string             `json:"id"`
	Service  string             `json:"service"`
	Status   fleetroll.Status   `json:"status"`
	Strategy string             `json:"strategy,omitempty"`
	Trigger  notifyTrigger      `json:"trigger"`
	Started  time.Time          `json:"started,omitzero"`
	Finished time.Time          `json:"finished,omitzero"`
	Seconds  float64            `json:"duration_seconds,omitempty"`
	Failed   string             `json:"failed_unit,omitempty"`
	Phase    fleetroll.Phase    `json:"phase,omitempty"`
	Units    []notifyUnit       `json:"units"`
	Release  *fleetroll.Release `json:"release,omitempty"`
}

type notifyTrigger struct {
	Source     string `json:"source"`
	Repository string `json:"repository,omitempty"`
	Tag        string `json:"tag,omitempty"`
	Digest     string `json:"digest,omitempty"`
}

type notifyUnit struct {
	Unit    string            `json:"unit"`
	Outcome fleetroll.Outcome `json:"outcome"`
	Phase   fleetroll.Phase   `json:"phase,omitempty"`
	Seconds float64           `json:"total_seconds,omitempty"`
}

// WebhookNotification is the body of a webhook notification.
type WebhookNotification struct {
	Event   string `json:"event"`
	Summary string `json:"summary"`
	// URL is the rollout's record in the API (for a program, with the API
	// token); PageURL the status page opened on it (for a person).
	URL     string        `json:"url,omitempty"`
	PageURL string        `json:"page_url,omitempty"`
	Rollout notifyRollout `json:"rollout"`
}

// rolloutLinks are where a notification points: the rollout in the API
// and on the status page ("" without a public URL).
type rolloutLinks struct{ status, page string }

func toNotify(r fleetroll.Report) notifyRollout {
	n := notifyRollout{ID: r.ID, Service: r.Service, Status: r.Status, Strategy: r.Strategy, Started: r.Started, Finished: r.Finished,
		Trigger: notifyTrigger{Source: r.Trigger.Source, Repository: r.Trigger.Repository, Tag: r.Trigger.Tag, Digest: r.Trigger.Digest},
		Units:   []notifyUnit{}}
	if !r.Started.IsZero() && !r.Finished.IsZero() {
		n.Seconds = r.Finished.Sub(r.Started).Round(time.Millisecond).Seconds()
	}
	if r.Release != nil {
		to := r.Release.To
		to.Trigger = fleetroll.Trigger{}
		n.Release = &to
	}
	for _, u := range r.Units {
		n.Units = append(n.Units, notifyUnit{Unit: u.Unit, Outcome: u.Outcome, Phase: u.Phase, Seconds: time.Duration(u.Total).Seconds()})
		if n.Failed == "" && (u.Outcome == fleetroll.OutcomeFailed || u.Outcome == fleetroll.OutcomeInterrupted) {
			n.Failed, n.Phase = u.Unit, u.Phase
		}
	}
	return n
}

// message builds a target's request: the body and its headers. A Slack
// message links to the status page, for the person who reads it.
func (t notifyTarget) message(event string, r fleetroll.Report, links rolloutLinks) ([]byte, map[string]string, error) {
	summary := Outcome(r)
	if event == "started" {
		summary = fmt.Sprintf("%s: rollout %s started (%s)", r.Service, r.ID, describeTrigger(r.Trigger))
	}
	switch t.Kind {
	case NotifySlack:
		// What a sender wrote (a tag, a repository) reaches the text only
		// escaped: Slack reads <...> as a mention or a link.
		text := "fleetroll " + r.ID + ": " + slackEscape(summary)
		if event != "started" {
			text += " (" + slackEscape(describeTrigger(r.Trigger))
			if d := toNotify(r).Seconds; d > 0 {
				text += fmt.Sprintf(", %s", time.Duration(d*float64(time.Second)).Round(time.Second))
			}
			text += ")"
		}
		if links.page != "" {
			text += " <" + links.page + "|rollout " + r.ID + ">"
		}
		b, err := json.Marshal(map[string]string{"text": text})
		return b, map[string]string{"Content-Type": "application/json"}, err
	case NotifyWebhook:
		b, err := json.Marshal(WebhookNotification{Event: event, Summary: summary, URL: links.status, PageURL: links.page, Rollout: toNotify(r)})
		if err != nil {
			return nil, nil, err
		}
		return b, map[string]string{"Content-Type": "application/json", "X-Fleetroll-Event": event, SignatureHeader: Sign(t.Key, b)}, nil
	}
	return nil, nil, errors.New("unknown notification kind " + t.Kind)
}

// slackEscaper escapes the three characters Slack's text format gives a
// meaning to, as Slack's documentation asks.
var slackEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

func slackEscape(s string) string { return slackEscaper.Replace(s) }

// Sign returns the signature header's value of a body: "sha256=" and the
// hex HMAC-SHA256 with key. A receiver compares it in constant time
// (hmac.Equal).
func Sign(key string, body []byte) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// describeTrigger says what triggered a rollout, outsider-safe.
func describeTrigger(t fleetroll.Trigger) string {
	s := t.Source
	if t.Repository != "" {
		s += " " + t.Repository
		if t.Tag != "" {
			s += ":" + t.Tag
		}
	}
	return s
}

// notify announces a rollout's event to its service's notification
// targets, through the outbox: it never waits for them.
func (s *Server) notify(event string, r fleetroll.Report) {
	svc, ok := s.Config().Service(r.Service)
	if !ok || len(svc.Notify) == 0 || !slices.Contains(NotifyEvents, event) {
		return
	}
	targets := s.targets.Load()
	var out []outgoing
	for _, name := range svc.Notify {
		t, ok := (*targets)[name]
		if !ok || !t.wants(event) {
			continue
		}
		var links rolloutLinks
		if s.opt.PublicURL != "" {
			links = rolloutLinks{status: s.statusURL(r.ID), page: s.pageURL(r.ID)}
		}
		body, headers, err := t.message(event, r, links)
		if err != nil {
			s.log.Warn("notification not built", "rollout_id", r.ID, "notification", name, "error", err.Error())
			continue
		}
		out = append(out, outgoing{what: "notification " + name, notify: true, url: t.URL, body: body, headers: headers})
	}
	if len(out) > 0 && (s.outbox == nil || !s.outbox.post(r.ID, out)) {
		s.log.Warn("notifications not sent: the outbox is closed or full", "rollout_id", r.ID, "event", event)
	}
}

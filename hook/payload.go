package hook

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
)

// Source is the kind of sender that triggered a rollout.
type Source string

const (
	SourceDockerHub Source = "dockerhub"
	SourceRegistry  Source = "registry"
	SourceGitHub    Source = "github"
	SourceManual    Source = "manual"
)

// Event is an image event a payload reports: a repository, a tag and what
// identifies this very push.
type Event struct {
	Repository string `json:"repository,omitempty"`
	Tag        string `json:"tag,omitempty"`
	Digest     string `json:"digest,omitempty"`
	Pusher     string `json:"pusher,omitempty"`
	// PushedAt is the sender's push time (Docker Hub), as sent.
	PushedAt string `json:"pushed_at,omitempty"`
	// CallbackURL is where Docker Hub wants the result; never shown.
	CallbackURL string `json:"-"`
	// EventID is the sender's ID of this event (a registry's event id).
	EventID string `json:"-"`
}

// Trigger turns the event into the rollout record's trigger.
func (e Event) Trigger(source Source, requestID string, received time.Time) fleetroll.Trigger {
	return fleetroll.Trigger{Source: string(source), Repository: e.Repository, Tag: e.Tag, Digest: e.Digest,
		Pusher: e.Pusher, PushedAt: e.PushedAt, RequestID: requestID, Received: received}
}

// Bounds of what a sender may send, checked as a payload arrives: a
// field past its bound is refused (400), never stored (docs/serve.md,
// "Limits").
const (
	MaxRepositoryLen  = 255 // a registry's repository name
	MaxTagLen         = 128 // a registry's tag
	MaxPusherLen      = 100 // Docker Hub, registry and GitHub user names are shorter
	MaxPushedAtLen    = 32
	MaxCallbackURLLen = 1024
	MaxEventIDLen     = 128
)

var (
	// tagRe is the registry's tag grammar (distribution/reference).
	tagRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)
	// repositoryRe: path components of letters, digits and separators.
	repositoryRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$`)
	// printableRe: a user name or an ID, without control characters.
	printableRe = regexp.MustCompile(`^[^\x00-\x1f\x7f]*$`)
)

// Check bounds every field a sender controls; field names the payload's
// field in errors.
func (e Event) Check(field func(name string) string) error {
	switch {
	case len(e.Repository) > MaxRepositoryLen || !repositoryRe.MatchString(e.Repository):
		return payloadErr("%s: not a repository name (letters, digits, . _ - and /, at most %d)", field("repository"), MaxRepositoryLen)
	case !tagRe.MatchString(e.Tag):
		return payloadErr("%s: not a tag (letters, digits, . _ -, at most %d, as a registry allows)", field("tag"), MaxTagLen)
	case e.Digest != "" && !fleetroll.ValidDigest(e.Digest):
		return payloadErr("%s: not a sha256 digest", field("digest"))
	case len(e.Pusher) > MaxPusherLen || !printableRe.MatchString(e.Pusher):
		return payloadErr("%s: at most %d printable characters", field("pusher"), MaxPusherLen)
	case len(e.PushedAt) > MaxPushedAtLen:
		return payloadErr("%s: at most %d characters", field("pushed_at"), MaxPushedAtLen)
	case len(e.CallbackURL) > MaxCallbackURLLen:
		return payloadErr("%s: at most %d characters", field("callback_url"), MaxCallbackURLLen)
	case len(e.EventID) > MaxEventIDLen || !printableRe.MatchString(e.EventID):
		return payloadErr("%s: at most %d printable characters", field("id"), MaxEventIDLen)
	}
	return nil
}

// PayloadError is a malformed or incomplete payload (400).
type PayloadError struct{ Msg string }

func (e *PayloadError) Error() string { return e.Msg }

func payloadErr(format string, a ...any) error { return &PayloadError{fmt.Sprintf(format, a...)} }

// ParseDockerHub parses a Docker Hub repository webhook.
func ParseDockerHub(body []byte) (Event, error) {
	var p struct {
		CallbackURL string `json:"callback_url"`
		PushData    *struct {
			PushedAt json.Number `json:"pushed_at"`
			Pusher   string      `json:"pusher"`
			Tag      string      `json:"tag"`
		} `json:"push_data"`
		Repository *struct {
			RepoName string `json:"repo_name"`
		} `json:"repository"`
	}
	if err := decodeJSON(body, &p); err != nil {
		return Event{}, err
	}
	switch {
	case p.Repository == nil || p.Repository.RepoName == "":
		return Event{}, payloadErr("missing repository.repo_name")
	case p.PushData == nil:
		return Event{}, payloadErr("missing push_data")
	case p.PushData.Tag == "":
		return Event{}, payloadErr("missing push_data.tag")
	}
	if p.PushData.PushedAt != "" {
		if _, err := strconv.ParseFloat(string(p.PushData.PushedAt), 64); err != nil {
			return Event{}, payloadErr("push_data.pushed_at: not a number")
		}
	}
	ev := Event{
		Repository:  p.Repository.RepoName,
		Tag:         p.PushData.Tag,
		Pusher:      p.PushData.Pusher,
		PushedAt:    string(p.PushData.PushedAt),
		CallbackURL: p.CallbackURL,
	}
	return ev, ev.Check(func(name string) string {
		switch name {
		case "repository":
			return "repository.repo_name"
		case "callback_url":
			return name
		}
		return "push_data." + name
	})
}

// ManifestMediaTypes are the media types of an image manifest or index.
var ManifestMediaTypes = map[string]bool{
	"application/vnd.docker.distribution.manifest.v2+json":      true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
	"application/vnd.oci.image.manifest.v1+json":                true,
	"application/vnd.oci.image.index.v1+json":                   true,
}

// ParseRegistry parses a registry notification envelope and returns its
// manifest pushes with a tag, in order. Layer and config pushes, pulls and
// deletes are left out.
func ParseRegistry(body []byte) ([]Event, error) {
	var env struct {
		Events *[]struct {
			ID     string `json:"id"`
			Action string `json:"action"`
			Target struct {
				MediaType  string `json:"mediaType"`
				Digest     string `json:"digest"`
				Repository string `json:"repository"`
				Tag        string `json:"tag"`
			} `json:"target"`
			Actor struct {
				Name string `json:"name"`
			} `json:"actor"`
		} `json:"events"`
	}
	if err := decodeJSON(body, &env); err != nil {
		return nil, err
	}
	if env.Events == nil {
		return nil, payloadErr("missing events")
	}
	var out []Event
	for i, e := range *env.Events {
		if e.Action != "push" || !ManifestMediaTypes[e.Target.MediaType] || e.Target.Tag == "" {
			continue
		}
		if e.Target.Repository == "" {
			return nil, payloadErr("events[%d].target.repository: missing", i)
		}
		ev := Event{Repository: e.Target.Repository, Tag: e.Target.Tag, Digest: e.Target.Digest, Pusher: e.Actor.Name, EventID: e.ID}
		if err := ev.Check(func(name string) string {
			switch name {
			case "pusher":
				return fmt.Sprintf("events[%d].actor.name", i)
			case "id":
				return fmt.Sprintf("events[%d].id", i)
			}
			return fmt.Sprintf("events[%d].target.%s", i, name)
		}); err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// githubPackage is the package of a GitHub "package" event, and of the
// older "registry_package" event, which carries it as "registry_package".
type githubPackage struct {
	Name           string `json:"name"`
	Namespace      string `json:"namespace"`
	Ecosystem      string `json:"ecosystem"`
	PackageType    string `json:"package_type"`
	PackageVersion *struct {
		ContainerMetadata *struct {
			Tag *struct {
				Name   string `json:"name"`
				Digest string `json:"digest"`
			} `json:"tag"`
		} `json:"container_metadata"`
	} `json:"package_version"`
	Owner *struct {
		Login string `json:"login"`
	} `json:"owner"`
}

// ParseGitHub parses a GitHub "package" event, or a "registry_package"
// event (the package is under "registry_package" there). ok is false for an
// authentic event that is not a container publish.
func ParseGitHub(body []byte) (ev Event, ok bool, err error) {
	var p struct {
		Action          string         `json:"action"`
		Package         *githubPackage `json:"package"`
		RegistryPackage *githubPackage `json:"registry_package"`
		Repository      *struct {
			FullName string `json:"full_name"`
		} `json:"repository"`
		Sender *struct {
			Login string `json:"login"`
		} `json:"sender"`
	}
	if err := decodeJSON(body, &p); err != nil {
		return Event{}, false, err
	}
	pkg := p.Package
	if pkg == nil {
		pkg = p.RegistryPackage
	}
	if pkg == nil || pkg.Name == "" {
		return Event{}, false, payloadErr("missing package.name (or registry_package.name)")
	}
	if p.Action != "published" && p.Action != "updated" {
		return Event{}, false, nil
	}
	if !strings.EqualFold(pkg.Ecosystem, "container") && !strings.EqualFold(pkg.PackageType, "container") {
		return Event{}, false, nil
	}
	v := pkg.PackageVersion
	if v == nil || v.ContainerMetadata == nil || v.ContainerMetadata.Tag == nil || v.ContainerMetadata.Tag.Name == "" {
		return Event{}, false, nil // an untagged manifest of a multi-arch image
	}
	ns := pkg.Namespace
	if ns == "" && pkg.Owner != nil {
		ns = pkg.Owner.Login
	}
	if ns == "" && p.Repository != nil {
		ns, _, _ = strings.Cut(p.Repository.FullName, "/")
	}
	if ns == "" {
		return Event{}, false, payloadErr("missing package.namespace")
	}
	ev = Event{Repository: ns + "/" + pkg.Name, Tag: v.ContainerMetadata.Tag.Name, Digest: v.ContainerMetadata.Tag.Digest}
	if p.Sender != nil {
		ev.Pusher = p.Sender.Login
	}
	if err := ev.Check(func(name string) string {
		switch name {
		case "pusher":
			return "sender.login"
		case "repository":
			return "package.namespace/package.name"
		}
		return "package.package_version.container_metadata.tag." + strings.TrimPrefix(strings.Replace(name, "tag", "name", 1), "")
	}); err != nil {
		return Event{}, false, err
	}
	return ev, true, nil
}

// ParseManual parses the body of POST /rollouts: {"service": "my-service"}.
func ParseManual(body []byte) (service, image string, err error) {
	var p struct {
		Service string `json:"service"`
		// Image, for a service with releases: REGISTRY/REPOSITORY:TAG or
		// REGISTRY/REPOSITORY@sha256:DIGEST of its configured image.
		Image string `json:"image"`
	}
	if err := decodeJSON(body, &p); err != nil {
		return "", "", err
	}
	if p.Service == "" {
		return "", "", payloadErr("missing service")
	}
	return p.Service, p.Image, nil
}

// decodeJSON decodes one JSON object; anything else is a PayloadError.
func decodeJSON(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		// In JSON's terms: the field's path and JSON types, never Go's.
		if msg, ok := jsonDecodeMessage(err); ok {
			return payloadErr("%s", msg)
		}
		return payloadErr("malformed JSON")
	}
	return nil
}

// VerifyGitHubSignature checks an X-Hub-Signature-256 header
// ("sha256=<hex HMAC-SHA256 of the body>") in constant time.
func VerifyGitHubSignature(secret, header string, body []byte) bool {
	hexsig, ok := strings.CutPrefix(header, "sha256=")
	if !ok || secret == "" {
		return false
	}
	got, err := hex.DecodeString(hexsig)
	if err != nil || len(got) != sha256.Size {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}

// SignGitHub returns the X-Hub-Signature-256 value for body.
func SignGitHub(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// tokenEqual compares a presented token with the expected one in constant
// time, length included (both are hashed first). An empty expected token
// never matches.
func tokenEqual(expected, presented string) bool {
	if expected == "" {
		return false
	}
	a := sha256.Sum256([]byte(expected))
	b := sha256.Sum256([]byte(presented))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

package hook

import (
	"strings"
	"testing"
)

func seed(f *testing.F, names ...string) {
	for _, n := range names {
		f.Add(fixture(f, n))
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.index.v1+json","repository":"a/b","tag":"t"}}]}`))
}

func FuzzParseDockerHub(f *testing.F) {
	seed(f, "dockerhub-push.json")
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := ParseDockerHub(b)
		if err == nil && (ev.Repository == "" || ev.Tag == "") {
			t.Fatalf("accepted without repository or tag: %+v", ev)
		}
	})
}

func FuzzParseRegistry(f *testing.F) {
	seed(f, "registry-push-oci.json", "registry-push-docker-v2s2.json")
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, err := ParseRegistry(b)
		if err != nil {
			return
		}
		for _, ev := range evs {
			if ev.Repository == "" || ev.Tag == "" {
				t.Fatalf("event without repository or tag: %+v", ev)
			}
		}
	})
}

func FuzzParseGitHub(f *testing.F) {
	f.Add(githubPackageBody("latest"))
	f.Add([]byte(`{"action":"published","package":{"name":"x","ecosystem":"container"}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, ok, err := ParseGitHub(b)
		if err == nil && ok && (!strings.Contains(ev.Repository, "/") || ev.Tag == "") {
			t.Fatalf("accepted a bad event: %+v", ev)
		}
		if err != nil && ok {
			t.Fatal("ok with an error")
		}
	})
}

func FuzzVerifyGitHubSignature(f *testing.F) {
	f.Add([]byte(`{"zen":"x"}`), "sha256=00")
	f.Add(githubPackageBody("latest"), "")
	f.Fuzz(func(t *testing.T, body []byte, header string) {
		const secret = "fuzz-secret-0123456789"
		if !VerifyGitHubSignature(secret, SignGitHub(secret, body), body) {
			t.Fatal("a correct signature was refused")
		}
		if header != SignGitHub(secret, body) && strings.ToLower(header) != SignGitHub(secret, body) && VerifyGitHubSignature(secret, header, body) {
			t.Fatalf("signature %q accepted for a body it does not sign", header)
		}
		if VerifyGitHubSignature("", header, body) {
			t.Fatal("an empty secret verified something")
		}
	})
}

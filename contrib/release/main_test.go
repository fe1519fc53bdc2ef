package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestRelease builds a release of this tree for both platforms into a
// temporary directory and checks what a user gets: the stamped binaries,
// an OCI layout naming one image index of the two platforms with the OCI
// labels, in each image a binary that is the released one (the host's
// runs and names the version and revision), the archive, the checksums,
// and an index a registry accepts as it is (what crane push sends).
func TestRelease(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go on PATH")
	}
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := config{
		Version:   "v0.9.9-test",
		Revision:  "0123456789ab",
		Source:    "https://example.org/fleetroll",
		Created:   created,
		Platforms: []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}},
		Dir:       "../..",
		Out:       t.TempDir(),
	}
	c.CACerts = filepath.Join(t.TempDir(), "ca.crt")
	writeFile(t, c.CACerts, "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	if err := run(ctx, c, &progress); err != nil {
		t.Fatalf("release: %v\n%s", err, progress.String())
	}

	wantLabels := map[string]string{
		"org.opencontainers.image.title":       "fleetroll",
		"org.opencontainers.image.description": "safe rolling restarts and releases of fleet services",
		"org.opencontainers.image.version":     "v0.9.9-test",
		"org.opencontainers.image.revision":    "0123456789ab",
		"org.opencontainers.image.source":      "https://example.org/fleetroll",
		"org.opencontainers.image.licenses":    "Apache-2.0",
		"org.opencontainers.image.created":     "2026-01-02T03:04:05Z",
	}
	lp, err := layout.FromPath(c.layoutDir())
	if err != nil {
		t.Fatal(err)
	}
	top, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	tm, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(tm.Manifests) != 1 || tm.Manifests[0].MediaType != types.OCIImageIndex || tm.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "fleetroll:v0.9.9-test" {
		t.Fatalf("index.json: want one OCI image index named fleetroll:v0.9.9-test, got %+v", tm.Manifests)
	}
	idx, err := top.ImageIndex(tm.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(im.Annotations, wantLabels) {
		t.Errorf("index annotations = %v", im.Annotations)
	}
	var platforms []string
	for _, d := range im.Manifests {
		if d.Platform == nil {
			t.Fatalf("a manifest without a platform: %+v", d)
		}
		p := *d.Platform
		platforms = append(platforms, p.OS+"/"+p.Architecture)
		if d.MediaType != types.OCIManifestSchema1 {
			t.Errorf("%s: media type %s", p, d.MediaType)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != p.OS || cf.Architecture != p.Architecture {
			t.Errorf("%s: the config says %s/%s", p, cf.OS, cf.Architecture)
		}
		if !reflect.DeepEqual(cf.Config.Labels, wantLabels) {
			t.Errorf("%s: labels = %v", p, cf.Config.Labels)
		}
		if cf.Config.User != "65532:65532" || !reflect.DeepEqual(cf.Config.Entrypoint, []string{"fleetroll"}) || !reflect.DeepEqual(cf.Config.Cmd, []string{"serve"}) || !cf.Created.Time.Equal(created) {
			t.Errorf("%s: config = %+v, created %s", p, cf.Config, cf.Created)
		}
		files := imageFiles(t, img)
		var names []string
		for n := range files {
			names = append(names, n)
		}
		sort.Strings(names)
		if want := []string{"etc/", "etc/group", "etc/passwd", "etc/ssl/", "etc/ssl/certs/", "etc/ssl/certs/ca-certificates.crt", "usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/fleetroll"}; !reflect.DeepEqual(names, want) {
			t.Errorf("%s: files %v, want %v", p, names, want)
		}
		exe := files["usr/local/bin/fleetroll"]
		released, err := os.ReadFile(c.binary(p))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(exe, released) {
			t.Errorf("%s: the image's binary is not %s", p, c.binary(p))
		}
		if m := elfMachine(t, exe); m != map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[p.Architecture] {
			t.Errorf("%s: the binary is for %s", p, m)
		}
		if p.Architecture == runtime.GOARCH {
			bin := filepath.Join(t.TempDir(), "fleetroll")
			if err := os.WriteFile(bin, exe, 0o755); err != nil {
				t.Fatal(err)
			}
			out, err := exec.CommandContext(ctx, bin, "version").CombinedOutput()
			if want := fmt.Sprintf("fleetroll v0.9.9-test (revision 0123456789ab, %s)\n", runtime.Version()); err != nil || string(out) != want {
				t.Errorf("the image's %s binary: fleetroll version = %q, %v; want %q", p, out, err, want)
			}
		}
	}
	sort.Strings(platforms)
	if !reflect.DeepEqual(platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("platforms = %v", platforms)
	}

	// The archive holds the layout's files, and the checksums name every
	// file a user downloads.
	if got, want := archiveNames(t, c.archive()), layoutNames(t, c.layoutDir()); !reflect.DeepEqual(got, want) {
		t.Errorf("the archive holds %v, the layout %v", got, want)
	}
	sums, err := os.ReadFile(filepath.Join(c.Out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"fleetroll-v0.9.9-test-linux-amd64", "fleetroll-v0.9.9-test-linux-arm64", "fleetroll-v0.9.9-test-image.tar"} {
		b, err := os.ReadFile(filepath.Join(c.Out, n))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(sums), sum(b, n)) {
			t.Errorf("SHA256SUMS lacks %s:\n%s", n, sums)
		}
	}

	// A registry takes the index as it is and gives back the same digest.
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/fleetroll/fleetroll:v0.9.9-test")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx)); err != nil {
		t.Fatalf("push: %v", err)
	}
	desc, err := remote.Head(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != tm.Manifests[0].Digest || desc.MediaType != types.OCIImageIndex {
		t.Errorf("pushed %s (%s), the layout's index is %s", desc.Digest, desc.MediaType, tm.Manifests[0].Digest)
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// imageFiles reads every file of the image's layers (regular files with
// their content, directories empty).
func imageFiles(t *testing.T, img v1.Image) map[string][]byte {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
		rc.Close()
	}
	return files
}

func elfMachine(t *testing.T, exe []byte) elf.Machine {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(exe))
	if err != nil {
		t.Fatalf("not an ELF binary: %v", err)
	}
	return f.Machine
}

func archiveNames(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var names []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
}

func layoutNames(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if fi.IsDir() {
			rel += "/"
		}
		names = append(names, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	return names
}

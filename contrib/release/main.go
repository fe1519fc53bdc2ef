// Command release builds fleetroll's release artefacts (make release):
// static binaries for each platform, stamped with the version and the
// revision, and a multi-platform OCI image of them, made without a
// container engine and without a base image: one layer per platform with
// the binary, CA certificates and a non-root user, as the Dockerfile's
// image has. It writes into -out:
//
//	fleetroll-VERSION-linux-amd64, fleetroll-VERSION-linux-arm64
//	fleetroll-VERSION-image/      the image, an OCI image layout (its index.json names one image index)
//	fleetroll-VERSION-image.tar   the same layout in one archive (podman load -i, skopeo oci-archive:)
//	SHA256SUMS                    of the binaries and the archive
//
// Run from the repository's top (make release gives every flag):
//
//	go run ./contrib/release -version v0.1.0 -revision 1a2b3c4d5e6f -out dist
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// config is one release's settings.
type config struct {
	Version   string        // the tag, or git describe's name between tags
	Revision  string        // the short commit, -dirty for a modified tree
	Source    string        // where the source is (org.opencontainers.image.source)
	Created   time.Time     // the image's creation time (and its files')
	Platforms []v1.Platform // linux/amd64, linux/arm64
	CACerts   string        // the CA bundle put into the image
	Dir       string        // the repository's top, where go build runs
	Out       string        // where the artefacts go
}

// Paths of the artefacts in Out.
func (c config) binary(p v1.Platform) string {
	return filepath.Join(c.Out, fmt.Sprintf("fleetroll-%s-%s-%s", c.Version, p.OS, p.Architecture))
}
func (c config) layoutDir() string { return filepath.Join(c.Out, "fleetroll-"+c.Version+"-image") }
func (c config) archive() string   { return c.layoutDir() + ".tar" }

func main() {
	var c config
	var platforms, created string
	flag.StringVar(&c.Version, "version", "", "the release's version (default: git describe --tags --always --dirty)")
	flag.StringVar(&c.Revision, "revision", "", "the release's revision (default: the short commit, -dirty for a modified tree)")
	flag.StringVar(&c.Source, "source", "https://github.com/fleetroll/fleetroll", "the source's address, for the image's label")
	flag.StringVar(&created, "created", "", "the image's creation time, RFC 3339 (default: $SOURCE_DATE_EPOCH, else the commit's time)")
	flag.StringVar(&platforms, "platforms", "linux/amd64,linux/arm64", "the platforms, comma-separated")
	flag.StringVar(&c.CACerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "the CA certificates the image carries (for HTTPS callbacks)")
	flag.StringVar(&c.Out, "out", "dist", "where the artefacts go")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if err := settle(ctx, &c, platforms, created); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(2)
	}
	if err := run(ctx, c, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

// settle fills in what the flags left out from git.
func settle(ctx context.Context, c *config, platforms, created string) error {
	for _, p := range strings.Split(platforms, ",") {
		goos, arch, ok := strings.Cut(strings.TrimSpace(p), "/")
		if !ok || goos == "" || arch == "" {
			return fmt.Errorf("-platforms: %q is not OS/ARCH", p)
		}
		c.Platforms = append(c.Platforms, v1.Platform{OS: goos, Architecture: arch})
	}
	var err error
	if c.Version == "" {
		if c.Version, err = git(ctx, "describe", "--tags", "--always", "--dirty"); err != nil {
			return fmt.Errorf("-version: %w", err)
		}
	}
	if c.Revision == "" {
		if c.Revision, err = git(ctx, "rev-parse", "--short=12", "HEAD"); err != nil {
			return fmt.Errorf("-revision: %w", err)
		}
		if _, err := git(ctx, "diff", "--quiet", "HEAD"); err != nil {
			c.Revision += "-dirty"
		}
	}
	switch {
	case created != "":
		if c.Created, err = time.Parse(time.RFC3339, created); err != nil {
			return fmt.Errorf("-created: %w", err)
		}
	case os.Getenv("SOURCE_DATE_EPOCH") != "":
		s, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
		c.Created = time.Unix(s, 0)
	default:
		out, err := git(ctx, "log", "-1", "--format=%ct")
		if err != nil {
			return fmt.Errorf("-created: %w", err)
		}
		s, err := strconv.ParseInt(out, 10, 64)
		if err != nil {
			return fmt.Errorf("-created: the commit's time %q: %w", out, err)
		}
		c.Created = time.Unix(s, 0)
	}
	c.Created = c.Created.UTC()
	return nil
}

func git(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "git", args...).Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// run builds every artefact of c.
func run(ctx context.Context, c config, log io.Writer) error {
	if err := os.MkdirAll(c.Out, 0o755); err != nil {
		return err
	}
	ca, err := os.ReadFile(c.CACerts)
	if err != nil {
		return fmt.Errorf("-ca-certs: %w", err)
	}
	var adds []mutate.IndexAddendum
	sums := []string{}
	for _, p := range c.Platforms {
		bin := c.binary(p)
		if err := buildBinary(ctx, c, p, bin); err != nil {
			return err
		}
		fmt.Fprintf(log, "release: %s\n", bin)
		exe, err := os.ReadFile(bin)
		if err != nil {
			return err
		}
		sums = append(sums, sum(exe, filepath.Base(bin)))
		img, err := platformImage(c, p, exe, ca)
		if err != nil {
			return fmt.Errorf("the %s/%s image: %w", p.OS, p.Architecture, err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	idx = mutate.Annotations(idx, labels(c)).(v1.ImageIndex)
	if err := os.RemoveAll(c.layoutDir()); err != nil {
		return err
	}
	lp, err := layout.Write(c.layoutDir(), empty.Index)
	if err != nil {
		return fmt.Errorf("the image layout: %w", err)
	}
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "fleetroll:" + c.Version})); err != nil {
		return fmt.Errorf("the image layout: %w", err)
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "release: %s (index %s)\n", c.layoutDir(), d)
	if err := archiveDir(c.layoutDir(), c.archive(), c.Created); err != nil {
		return fmt.Errorf("the image archive: %w", err)
	}
	fmt.Fprintf(log, "release: %s\n", c.archive())
	tb, err := os.ReadFile(c.archive())
	if err != nil {
		return err
	}
	sums = append(sums, sum(tb, filepath.Base(c.archive())))
	return os.WriteFile(filepath.Join(c.Out, "SHA256SUMS"), []byte(strings.Join(sums, "")), 0o644)
}

func sum(b []byte, name string) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:]) + "  " + name + "\n"
}

// buildBinary builds a static, stamped fleetroll for p.
func buildBinary(ctx context.Context, c config, p v1.Platform, out string) error {
	abs, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	ldflags := fmt.Sprintf("-s -w -X main.version=%s -X main.revision=%s", c.Version, c.Revision)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ldflags, "-o", abs, "./cmd/fleetroll")
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build for %s/%s: %w\n%s", p.OS, p.Architecture, err, stderr.String())
	}
	return nil
}

// labels are the image's OCI labels (and the index's annotations).
func labels(c config) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "fleetroll",
		"org.opencontainers.image.description": "safe rolling restarts and releases of fleet services",
		"org.opencontainers.image.version":     c.Version,
		"org.opencontainers.image.revision":    c.Revision,
		"org.opencontainers.image.source":      c.Source,
		"org.opencontainers.image.licenses":    "Apache-2.0",
		"org.opencontainers.image.created":     c.Created.Format(time.RFC3339),
	}
}

// platformImage is the image of one platform: one layer with the binary at
// /usr/local/bin/fleetroll, the CA certificates and a user fleetroll
// (65532) to run as; it runs fleetroll serve.
func platformImage(c config, p v1.Platform, exe, ca []byte) (v1.Image, error) {
	files := []file{
		{name: "etc/", mode: 0o755},
		{name: "etc/group", mode: 0o644, data: []byte("fleetroll:x:65532:\n")},
		{name: "etc/passwd", mode: 0o644, data: []byte("fleetroll:x:65532:65532:fleetroll:/nonexistent:/sbin/nologin\n")},
		{name: "etc/ssl/", mode: 0o755},
		{name: "etc/ssl/certs/", mode: 0o755},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: ca},
		{name: "usr/", mode: 0o755},
		{name: "usr/local/", mode: 0o755},
		{name: "usr/local/bin/", mode: 0o755},
		{name: "usr/local/bin/fleetroll", mode: 0o755, data: exe},
	}
	raw, err := tarFiles(files, c.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, MediaType: types.OCILayer, History: v1.History{
		Created:   v1.Time{Time: c.Created},
		CreatedBy: "contrib/release: the fleetroll binary, CA certificates, user 65532",
		Comment:   "fleetroll " + c.Version + " (revision " + c.Revision + ")",
	}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: c.Created}
	cf.Config.Entrypoint = []string{"fleetroll"}
	cf.Config.Cmd = []string{"serve"}
	cf.Config.Env = []string{"PATH=/usr/local/bin"}
	cf.Config.User = "65532:65532"
	cf.Config.ExposedPorts = map[string]struct{}{"8080/tcp": {}}
	cf.Config.Labels = labels(c)
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	return mutate.Annotations(img, labels(c)).(v1.Image), nil
}

type file struct {
	name string // a directory's ends in /
	mode int64
	data []byte
}

// tarFiles is a tar archive of files, owned by root, all of time t.
func tarFiles(files []file, t time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: t, Typeflag: tar.TypeReg, Size: int64(len(f.data)), Format: tar.FormatPAX}
		if strings.HasSuffix(f.name, "/") {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// archiveDir writes the files under dir into one tar archive at out, in
// name order, all of time t (an OCI layout as an oci-archive).
func archiveDir(dir, out string, t time.Time) error {
	var files []file
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			files = append(files, file{name: rel + "/", mode: 0o755})
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files = append(files, file{name: rel, mode: 0o644, data: b})
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	b, err := tarFiles(files, t)
	if err != nil {
		return err
	}
	return os.WriteFile(out, b, 0o644)
}

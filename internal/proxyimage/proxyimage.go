// Package proxyimage builds, for tests, an image that runs the shipped
// proxy unit (contrib/proxy/units/my-service-proxy.service) where no nginx
// image can be pulled: the host's nginx, /bin/sh, cat, mkdir and sleep, the
// shared libraries they load (as ldd lists them), and a passwd and group
// for nginx's workers. confd is not in it: the unit mounts it.
package proxyimage

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Programs are the host's programs the image holds, by their path in the
// image; each is looked up on the host's PATH by its base name.
var Programs = []string{"/usr/sbin/nginx", "/bin/sh", "/bin/cat", "/bin/mkdir", "/bin/sleep"}

const passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n"
const group = "root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\nwww-data:x:33:\n"

// ldd's lines name a library by path: "libc.so.6 => /lib/…/libc.so.6
// (0x…)" or, for the loader, "/lib64/ld-linux-x86-64.so.2 (0x…)".
var lddPath = regexp.MustCompile(`(?m)(?:=>\s+|^\s+)(/\S+)\s+\(0x`)

// Libraries are the files ldd says the programs load, each once, sorted.
func Libraries(ctx context.Context, programs ...string) ([]string, error) {
	var libs []string
	for _, p := range programs {
		out, err := exec.CommandContext(ctx, "ldd", p).Output()
		if err != nil {
			// ldd fails on a static program: it loads nothing.
			if strings.Contains(string(out), "not a dynamic executable") {
				continue
			}
			return nil, fmt.Errorf("ldd %s: %w (%s)", p, err, out)
		}
		if strings.Contains(string(out), "=> not found") {
			return nil, fmt.Errorf("ldd %s: a library is missing:\n%s", p, out)
		}
		for _, m := range lddPath.FindAllStringSubmatch(string(out), -1) {
			if !slices.Contains(libs, m[1]) {
				libs = append(libs, m[1])
			}
		}
	}
	slices.Sort(libs)
	return libs, nil
}

// Build makes the image from the host's files.
func Build(ctx context.Context) (v1.Image, error) {
	files := map[string][]byte{"/etc/passwd": []byte(passwd), "/etc/group": []byte(group)}
	modes := map[string]int64{}
	var hostPaths []string
	for _, p := range Programs {
		host, err := exec.LookPath(path.Base(p))
		if err != nil {
			return nil, fmt.Errorf("the host's %s: %w", path.Base(p), err)
		}
		b, err := os.ReadFile(host) // through symlinks (/bin/sh -> dash)
		if err != nil {
			return nil, err
		}
		files[p], modes[p] = b, 0o755
		hostPaths = append(hostPaths, host)
	}
	libs, err := Libraries(ctx, hostPaths...)
	if err != nil {
		return nil, err
	}
	var libDirs []string
	for _, l := range libs {
		b, err := os.ReadFile(l)
		if err != nil {
			return nil, err
		}
		files[l], modes[l] = b, 0o755
		if d := filepath.Dir(l); !slices.Contains(libDirs, d) {
			libDirs = append(libDirs, d)
		}
	}
	layer, err := tarLayer(files, modes, "/tmp")
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	// Without ld.so.cache, the loader is told where the libraries are.
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH=" + strings.Join(libDirs, ":")}
	return mutate.ConfigFile(img, cf)
}

// tarLayer is a layer of the files (mode 0644 unless modes says), their
// parent directories, and the empty directories dirs.
func tarLayer(files map[string][]byte, modes map[string]int64, dirs ...string) (v1.Layer, error) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	var allDirs []string
	add := func(d string) {
		for ; d != "/" && d != "."; d = path.Dir(d) {
			if !slices.Contains(allDirs, d) {
				allDirs = append(allDirs, d)
			}
		}
	}
	for _, n := range names {
		add(path.Dir(n))
	}
	for _, d := range dirs {
		add(d)
	}
	slices.Sort(allDirs) // a parent sorts before its children
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, d := range allDirs {
		mode := int64(0o755)
		if d == "/tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(d, "/") + "/", Mode: mode, Typeflag: tar.TypeDir, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	for _, n := range names {
		mode := modes[n]
		if mode == 0 {
			mode = 0o644
		}
		b := files[n]
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(n, "/"), Mode: mode, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
}

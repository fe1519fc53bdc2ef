// Command image builds the demo service (contrib/demo) as a container image
// without a Docker engine and pushes it to a registry: the statically built
// binary as one layer, and optionally a layer of incompressible data of a
// given size (a heavy image, for the pre-pull benchmark). It prints the
// pushed image pinned by digest.
//
//	go run ./contrib/image -image 127.0.0.1:15099/demo/web:v2 -version v2 [-pad-mb 50]
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	ref := flag.String("image", "", "REGISTRY/REPOSITORY:TAG to push")
	version := flag.String("version", "dev", "the version the demo service reports")
	pad := flag.Int("pad-mb", 0, "add a layer of this many MB of random (incompressible) data")
	flag.Parse()
	if err := run(*ref, *version, *pad); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(ref, version string, padMB int) error {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("-image: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "fleetroll-image")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "my-service")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.defaultVersion="+version, "-o", bin, "./contrib/demo")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build the demo service: %w", err)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	layers := []v1.Layer{}
	l, err := fileLayer("my-service", b, 0o755)
	if err != nil {
		return err
	}
	layers = append(layers, l)
	if padMB > 0 {
		data := make([]byte, padMB<<20)
		_, _ = rand.Read(data)
		l, err := fileLayer("pad", data, 0o644)
		if err != nil {
			return err
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Entrypoint = []string{"/my-service"}
	cf.Config.User = "65532:65532"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	if err := remote.Write(tag, img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("push %s: %w", tag, err)
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Println(tag.Context().Name() + "@" + d.String())
	return nil
}

// fileLayer is a layer holding one file at the root.
func fileLayer(name string, data []byte, mode int64) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
}

#!/usr/bin/env bash
# Makes a builder image without any registry: a static busybox for RUN, CA
# certificates, and this machine's Go toolchain (/usr/local/go, static).
#   contrib/container/builder.sh [IMAGE]     (default localhost/fleetroll-builder)
# Then: podman build --build-arg BUILDER_IMAGE=localhost/fleetroll-builder \
#         --build-arg GOPROXY=off --build-arg GOFLAGS=-mod=mod \
#         --volume "$(go env GOMODCACHE):/go/pkg/mod:ro" -t fleetroll .
set -euo pipefail
image=${1:-localhost/fleetroll-builder}
goroot=$(go env GOROOT)
busybox=$(command -v busybox) || { echo "builder: install busybox-static" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage" "$stage.tar"' EXIT
mkdir -p "$stage/bin" "$stage/etc/ssl/certs" "$stage/tmp" "$stage/go/pkg/mod"
chmod 1777 "$stage/tmp"
cp "$busybox" "$stage/bin/busybox"
for applet in $("$busybox" --list); do
  [[ $applet == busybox ]] || ln -sf busybox "$stage/bin/$applet"
done
cp /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/"
# One archive: the stage, then the toolchain as usr/local/go.
tar -C "$stage" -cf "$stage.tar" .
tar -C "$(dirname "$goroot")" -rf "$stage.tar" --transform "s,^$(basename "$goroot"),usr/local/go," "$(basename "$goroot")"
podman import \
  --change 'ENV PATH=/usr/local/go/bin:/bin' \
  --change 'ENV GOROOT=/usr/local/go' \
  --change 'ENV GOMODCACHE=/go/pkg/mod' \
  --change 'ENV GOCACHE=/tmp/gocache' \
  --change 'ENV HOME=/tmp' \
  "$stage.tar" "$image" >/dev/null
echo "$image"

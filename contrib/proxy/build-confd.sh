#!/usr/bin/env bash
# Builds confd v0.16.0 from the Go module proxy into $1 (default ./confd),
# statically (CGO_ENABLED=0): it runs on any host and in any image, such as
# the proxy's nginx container (contrib/proxy/units/my-service-proxy.service);
# on Container Linux, put it at /opt/bin/confd.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$(realpath -m "${1:-confd}")
cd "$here/confd-build"
CGO_ENABLED=0 go build -mod=mod -trimpath -o "$out" github.com/kelseyhightower/confd
echo "$out"

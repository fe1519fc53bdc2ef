#!/usr/bin/env bash
# Builds confd v0.16.0 from the Go module proxy into $1 (default ./confd).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$(realpath -m "${1:-confd}")
cd "$here/confd-build"
go build -mod=mod -o "$out" github.com/kelseyhightower/confd
echo "$out"

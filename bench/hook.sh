#!/usr/bin/env bash
# Prints webhook answer latency (p50/p99) and fleetroll serve's peak RSS under
# a burst of 2000 Docker Hub pushes, 50 in flight, all on loopback.
#   bench/hook.sh [-n 2000] [-c 50]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
exec go run ./bench/hook -repo "$repo" "$@"

#!/usr/bin/env bash
# Prints each instance's downtime and the rollout's time for v1 -> v2 with
# fleetroll deploy's pre-pull and with each instance pulling as it starts, for
# images with a 50 MB and a 300 MB layer of random data, on a local cluster of
# three machines with their own container storage and a bandwidth-limited
# link to the registry (bench/prepull).
#   bench/prepull.sh [-sizes 50,300] [-rate 100mbit] [-keep]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
contrib/cluster/deps.sh
exec go run ./bench/prepull -repo "$repo" "$@"

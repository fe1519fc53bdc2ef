#!/usr/bin/env bash
# Failed requests and latency during a rollout under load, fleetroll (drain +
# health gate) next to the naive stop/start loop, in one run on a local
# 3-machine cluster of its own (started and removed by the run).
#   bench/load.sh [-rate 200] [-requests 5000] [-slow-every 8] [-slow 600ms] [-keep]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
contrib/cluster/deps.sh
exec go run ./bench/load -repo "$repo" "$@"

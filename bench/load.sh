#!/usr/bin/env bash
# Failed requests and latency during a rollout under load, fleetroll (drain +
# health gate) next to the naive stop/start loop, in one run on a local
# 3-machine cluster of its own (started and removed by the run).
# The issue's run at scale: 12 instances, 3 down at once, then blue-green:
#   bench/load.sh -instances 12 -max-unavailable 3 -blue-green
#   bench/load.sh [-rate 200] [-requests 5000] [-slow-every 8] [-slow 600ms] [-instances 3] [-max-unavailable 1] [-blue-green] [-keep]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
contrib/cluster/deps.sh
exec go run ./bench/load -repo "$repo" "$@"

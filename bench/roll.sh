#!/usr/bin/env bash
# Prints fleetroll's wall time for a 3-instance roll (grace 0) next to the
# naive fleetctl-style loop's, and fleet's median stop/start latency per unit,
# measured in one run on the local real cluster (started if needed).
#   bench/roll.sh [-rounds N] [-naive-poll 5s]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
contrib/cluster/deps.sh
exec go run ./bench/roll -repo "$repo" "$@"

#!/usr/bin/env bash
# Prints fleetroll's wall time for a 3-instance roll (grace 0) next to the
# naive loop's (internal/naive), and fleet's stop/start latency per unit
# (median, every phase, the share at or under 3 s), measured in one run on the
# local real cluster (started if needed).
# (bench/roll.sh before issue 24; with -nudge, rolls with and without nudging,
# interleaved.)
#   bench/nudge.sh [-rounds N] [-naive-poll 1s] [-nudge 250ms,500ms] [-machines 3]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
contrib/cluster/deps.sh
exec go run ./bench/nudge -repo "$repo" "$@"

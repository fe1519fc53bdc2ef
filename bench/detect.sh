#!/usr/bin/env bash
# Prints how soon a crashing release is seen and every instance is back on
# the previous release, with fleetroll deploy --on-failure rollback and a
# minimum healthy time of 20 s, for instances that crash 3 s and 15 s after
# their start, on a one-machine and a three-machine cluster, each of its own
# (bench/detect); each goal with its figure, exit 1 when one is missed.
# Under 6 minutes.
#   bench/detect.sh [-machines 1,3] [-after 3s,15s] [-min-healthy-time 20s] [-keep]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
contrib/cluster/deps.sh
exec go run ./bench/detect -repo "$repo" "$@"

#!/usr/bin/env bash
# Prints the wall time of rolls in batches (--max-unavailable) for several
# numbers of instances, the most instances down at once from systemd's own
# timestamps, and the fleet API calls per unit, on the local real cluster
# (started if needed). The issue's run: 3 machines, b = 1, 3, 10, then
# blue-green:
#   bench/batch.sh -machines 3 -batches 1,3,10 -blue-green
#   bench/batch.sh [-sizes 3,10,30] [-batches 1,10] [-machines 1] [-watch] [-blue-green]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
contrib/cluster/deps.sh
exec go run ./bench/batch -repo "$repo" "$@"

#!/usr/bin/env bash
# Prints fleet's stop and start phases as fleetroll records them, over 20
# rolls of 3 instances at grace 0 (--min-healthy-time 0s) on a one-machine
# and a three-machine cluster, each of its own (bench/roll): per phase kind
# the count, p50, p99, maximum and how many took over 3 s and 6 s, each slow
# phase's diagnosis, the median roll; each goal of issue 24 with PASS or
# FAIL, exit 1 when one is missed. fleet runs with its debug log; the logs
# are kept under -logs. About 15 minutes.
#   bench/roll.sh [-machines 1,3] [-rolls 20] [-logs DIR] [-keep]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
contrib/cluster/deps.sh
exec go run ./bench/roll -repo "$repo" "$@"

#!/usr/bin/env bash
# Prints fleetroll's detection lag (fleet's state write, seen by an etcd
# watch, to fleetroll's reaction) with waits woken by etcd watches and by
# polling alone, over interleaved rounds on the local real cluster (started
# if needed), with the wall time per roll and fleet API calls per unit.
#   bench/watch.sh [-rounds 10] [-poll 500ms]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
contrib/cluster/deps.sh
exec go run ./bench/watch -repo "$repo" "$@"

#!/usr/bin/env bash
# Attacks fleetroll serve (queue in etcd) on a one-machine cluster of its own,
# each attack from its own loopback address, all at once: a flood of 20 000
# distinct pushes, 100 pushes with 900 KB fields, 4 000 event streams,
# 20 000 wrong logins; then one honest push. Prints what each attack got,
# the receiver's peak RSS and goroutines, etcd's keys before and after, and
# each goal with its figure (exit 1 when one is missed). About 2 minutes.
#   bench/hostile.sh [-pushes 20000] [-big 100] [-streams 4000] [-logins 20000] [-keep]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
contrib/cluster/deps.sh
exec go run ./bench/hostile -repo "$repo" "$@"

#!/usr/bin/env bash
# The demo: start the local real fleet cluster, launch my-service@8901..8903,
# "publish a new image" (bump the version the instances read at start), run
# fleetroll restart my-service, and show each instance before and after.
# Then releases (contrib/demo-release.sh): fleetroll deploy of an image pinned
# by digest to web@8911..8913, run by podman from the shipped unit.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cluster=contrib/cluster/cluster.sh

contrib/cluster/deps.sh
$cluster up
eval "$($cluster env)"
$cluster launch-demo 8901-8903

show() {
  local p
  printf '  %-6s %-8s %-8s %s\n' PORT VERSION PID STARTED
  for p in 8901 8902 8903; do
    curl -fsS "http://127.0.0.1:$p/" | python3 -c \
      'import json,sys; d=json.load(sys.stdin); print("  %-6s %-8s %-8s %s" % (d["port"], d["version"], d["pid"], d["started"]))' \
      || printf '  %-6s DOWN\n' "$p"
  done
}

old=$(cat "$FLEETROLL_CLUSTER_DIR/demo-version")
new="v$(( ${old#v} + 1 ))"
echo "$new" >"$FLEETROLL_CLUSTER_DIR/demo-version"
echo
echo "Before (a new version $new is published; the instances run $old):"
before=$(show)
echo "$before"
echo
go build -o "$FLEETROLL_CLUSTER_DIR/bin/fleetroll" ./cmd/fleetroll
echo "\$ fleetroll restart my-service --endpoint $FLEETCTL_ENDPOINT --grace 1s"
# As an operator types it: fleetroll finds fleet's own etcd at its default
# endpoint, and takes the lock, writes its intent and records the rollout.
env -u FLEETROLL_ETCD_ENDPOINTS "$FLEETROLL_CLUSTER_DIR/bin/fleetroll" restart my-service --endpoint "$FLEETCTL_ENDPOINT" --grace 1s
echo
echo "\$ fleetroll status my-service --limit 1"
status=$(env -u FLEETROLL_ETCD_ENDPOINTS "$FLEETROLL_CLUSTER_DIR/bin/fleetroll" status my-service --limit 1)
echo "$status"
if ! grep -q succeeded <<<"$status"; then
  echo "fleetroll status lists no rollout of my-service: the history is off." >&2
  exit 1
fi
echo
echo "After:"
after=$(show)
echo "$after"
echo
changed=$(paste <(echo "$before" | awk 'NR>1{print $3}') <(echo "$after" | awk 'NR>1{print $3, $2}') |
  awk -v v="$new" '$1 != $2 && $3 == v' | wc -l)
if [[ $changed -ne 3 ]]; then
  echo "Only $changed of 3 instances run $new with a new PID." >&2
  exit 1
fi
echo "All 3 instances restarted one at a time: new PIDs, new start times, version $new."

# Second act: deploy a release pinned by digest (docs/releases.md).
contrib/demo-release.sh
echo "The cluster keeps running; stop it with: $cluster down"

#!/usr/bin/env bash
# The demo's second act, releases: a local registry, the demo service as a
# container image (built without a Docker engine by contrib/image), the
# shipped instance unit (units/my-service@.service) run by podman as
# web@8911..8913, and "fleetroll deploy" of a digest: pre-pulled, written to
# etcd, then one instance at a time. Run by contrib/demo.sh on its cluster.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cluster=contrib/cluster/cluster.sh
eval "$($cluster env)"
STATE=$FLEETROLL_CLUSTER_DIR
REG=127.0.0.1:15099
IMAGE=$REG/demo/web
PORTS=(8911 8912 8913)
fleetroll=$STATE/bin/fleetroll

if ! curl -fsS "http://$REG/v2/" >/dev/null 2>&1; then
  mkdir -p "$STATE/registry"
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' \
    "$STATE/registry" "$REG" >"$STATE/registry.yml"
  setsid docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 </dev/null &
  echo $! >"$STATE/demo-registry.pid"
  for _ in $(seq 100); do curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
fi

# podman as the container engine, for the instances and the pre-pull units.
printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$REG" >"$STATE/registries.conf"
engine="Environment=DOCKER=/usr/bin/podman
Environment=CONTAINERS_CONF=$repo/contrib/container/containers.conf
Environment=CONTAINERS_REGISTRIES_CONF=$STATE/registries.conf
Environment=ETCD=$FLEETROLL_ETCD_ENDPOINTS"
mkdir -p "$XDG_RUNTIME_DIR/systemd/user/web@.service.d" "$XDG_RUNTIME_DIR/systemd/user/fleetroll-pull@.service.d"
printf '[Service]\n%s\nEnvironment=IMAGE=%s:v1\nEnvironment=NAME=web\nEnvironment=RELEASE_KEY=/fleetroll/releases/web/current\nEnvironment=RUNDIR=%s\n' \
  "$engine" "$IMAGE" "$STATE/run/web" >"$XDG_RUNTIME_DIR/systemd/user/web@.service.d/10-demo.conf"
printf '[Service]\n%s\n' "$engine" >"$XDG_RUNTIME_DIR/systemd/user/fleetroll-pull@.service.d/10-demo.conf"
# systemd reads drop-ins at a reload; units it loaded before them (a cluster
# brought back up) see them only after one.
$cluster systemctl daemon-reload

# The next version: v1 on the first run, one more on each run after.
old=$(cat "$STATE/web-version" 2>/dev/null || echo v0)
new="v$(( ${old#v} + 1 ))"
if [[ $old == v0 ]]; then
  go run ./contrib/image -image "$IMAGE:v1" -version v1 >/dev/null
  old=v1 new=v2
fi
pinned=$(go run ./contrib/image -image "$IMAGE:$new" -version "$new")
echo "$new" >"$STATE/web-version"

# The containers they run, for cluster.sh down (they outlive a killed systemd).
printf 'web-%s\n' "${PORTS[@]}" >"$STATE/containers"
# The instances (the first run launches them on IMAGE=:v1, before any release).
go run ./contrib/cluster/submit -endpoint "$FLEETCTL_ENDPOINT" -service web -no-conflicts \
  -ports "${PORTS[0]}-${PORTS[2]}" units/my-service@.service >/dev/null

export CONTAINERS_CONF=$repo/contrib/container/containers.conf CONTAINERS_REGISTRIES_CONF=$STATE/registries.conf
show() {
  local p v
  printf '  %-6s %-8s %-15s %s\n' PORT VERSION STARTED IMAGE
  for p in "${PORTS[@]}"; do
    v=$(curl -fsS "http://127.0.0.1:$p/" 2>/dev/null |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print("%-8s %-15s" % (d["version"], d["started"][11:23]))' 2>/dev/null) ||
      v="DOWN     -              "
    printf '  %-6s %s %s\n' "$p" "$v" "$(podman inspect --format '{{.ImageName}}' "web-$p" 2>/dev/null || echo -)"
  done
}

# systemd says running as soon as podman runs; wait until each answers.
for p in "${PORTS[@]}"; do
  for _ in $(seq 300); do curl -fsS -o /dev/null "http://127.0.0.1:$p/" 2>/dev/null && break; sleep 0.2; done
done

echo
echo "Releases: web@8911..8913 run the shipped instance unit with podman. Before ($new is pushed as $pinned):"
show
echo
echo "\$ fleetroll deploy web --image $pinned --grace 1s"
"$fleetroll" deploy web --image "$pinned" --endpoint "$FLEETCTL_ENDPOINT" --etcd-endpoints "$FLEETROLL_ETCD_ENDPOINTS" --grace 1s
echo
echo "After:"
after=$(show)
echo "$after"
echo
"$fleetroll" status web --etcd-endpoints "$FLEETROLL_ETCD_ENDPOINTS" --limit 1
moved=$(echo "$after" | awk -v v="$new" -v img="$pinned" 'NR>1 && $2 == v && $4 == img' | wc -l)
if [[ $moved -ne 3 ]]; then
  echo "Only $moved of 3 web instances run $pinned." >&2
  exit 1
fi
echo "All 3 web instances run the pinned release $new."

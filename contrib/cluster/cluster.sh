#!/usr/bin/env bash
# The local real fleet cluster: etcd (v2 API on), a systemd --user instance
# as the machine's init, and fleet v1.0.0's own server built from
# contrib/cluster/fleetd. Everything it starts logs and keeps its PID under
# one state directory.
#
#   cluster.sh up                 start what is not running (idempotent)
#   cluster.sh down               stop everything it started, remove the state
#   cluster.sh status             what runs, the fleet API's machines
#   cluster.sh env                shell exports to talk to the cluster
#   cluster.sh launch-demo PORTS  build the demo service and launch
#                                 my-service@PORT for PORTS (8901,8902 or 8901-8903)
#   cluster.sh systemctl ARGS...  systemctl --user against the cluster's systemd
#
# Settings (environment): FLEETROLL_CLUSTER_DIR (default /tmp/fleetroll-cluster),
# FLEETROLL_ETCD_PORT (2379; the peer port is the next one), FLEETROLL_FLEET_PORT (49153).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
STATE=${FLEETROLL_CLUSTER_DIR:-/tmp/fleetroll-cluster}
ETCD_PORT=${FLEETROLL_ETCD_PORT:-2379}
FLEET_PORT=${FLEETROLL_FLEET_PORT:-49153}
ETCD_URL=http://127.0.0.1:$ETCD_PORT
FLEET_URL=http://127.0.0.1:$FLEET_PORT
RUNDIR=$STATE/run
export XDG_RUNTIME_DIR=$RUNDIR
export DBUS_SESSION_BUS_ADDRESS=unix:path=$RUNDIR/bus

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

alive() { # NAME: the process of that pid file runs
  local f=$STATE/$1.pid
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

start_bg() { # NAME LOG COMMAND...: start detached, record the pid
  local name=$1 logf=$2; shift 2
  setsid "$@" >"$logf" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}

check_deps() {
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  [[ -x /lib/systemd/systemd ]] || missing+=(systemd)
  command -v busctl >/dev/null || missing+=(systemd)
  [[ -e /usr/lib/systemd/user/dbus.socket ]] || missing+=(dbus-user-session)
  command -v curl >/dev/null || missing+=(curl)
  command -v go >/dev/null || die "go is not on PATH"
  if ((${#missing[@]})); then
    die "missing packages: ${missing[*]} (run contrib/cluster/deps.sh)"
  fi
}

systemd_ready() {
  local st
  # Not is-system-running: it says "offline" once /run/systemd/system is gone.
  st=$(systemctl --user show -p SystemState --value 2>/dev/null) || true
  [[ $st == running || $st == degraded ]] && busctl --user status >/dev/null 2>&1
}

start_systemd() {
  if alive systemd && systemd_ready; then return; fi
  alive systemd && kill "$(cat "$STATE/systemd.pid")" 2>/dev/null || true
  rm -rf "$RUNDIR"
  mkdir -p "$RUNDIR"
  chmod 0700 "$RUNDIR"
  # systemd --user exits at once unless the host looks booted with systemd;
  # the directory is only read at start.
  local created=
  if [[ ! -d /run/systemd/system ]]; then
    mkdir -p /run/systemd/system
    created=1
  fi
  # Each cluster's systemd gets a cgroup subtree of its own: two instances
  # in one subtree take each other's units (and D-Bus) for their own.
  local cg h dirs=()
  cg=fleetroll-$(basename "$STATE")
  for h in systemd unified pids cpu; do
    [[ -d /sys/fs/cgroup/$h ]] || continue
    mkdir -p "/sys/fs/cgroup/$h/$cg"
    dirs+=("/sys/fs/cgroup/$h/$cg")
  done
  printf '%s\n' "${dirs[@]}" >"$STATE/cgroups"
  start_bg systemd "$STATE/systemd.log" /bin/sh -c \
    'for d in "$@"; do echo $$ >"$d/cgroup.procs" || exit 1; done; exec /lib/systemd/systemd --user' \
    sh "${dirs[@]}"
  local ok=0
  wait_for 30 "systemd --user" systemd_ready || ok=1
  [[ -n $created ]] && rmdir /run/systemd/system 2>/dev/null || true
  ((ok == 0)) || die "systemd --user did not start; see $STATE/systemd.log"
  log "systemd --user running (pid $(cat "$STATE/systemd.pid"))"
}

start_etcd() {
  if alive etcd && curl -fsS "$ETCD_URL/v2/keys" >/dev/null 2>&1; then return; fi
  mkdir -p "$STATE/etcd"
  start_bg etcd "$STATE/etcd.log" etcd --name fleetroll --data-dir "$STATE/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "fleetroll=http://127.0.0.1:$((ETCD_PORT + 1))" \
    --enable-v2=true
  wait_for 30 "etcd on $ETCD_URL" curl -fsS "$ETCD_URL/v2/keys" || die "etcd did not start; see $STATE/etcd.log"
  log "etcd running on $ETCD_URL (v2 API on)"
}

build() {
  mkdir -p "$STATE/bin"
  (cd "$here/fleetd" && go build -o "$STATE/bin/fleetd" .) || die "building fleetd failed"
  (cd "$repo" && go build -o "$STATE/bin/my-service" ./contrib/demo) || die "building the demo service failed"
}

fleet_ready() {
  curl -fsS "$FLEET_URL/fleet/v1/machines" | grep -q '"id"'
}

start_fleet() {
  if alive fleetd-supervisor && wait_for 30 "fleet API on $FLEET_URL" fleet_ready; then return; fi
  alive fleetd-supervisor && kill "$(cat "$STATE/fleetd-supervisor.pid")" 2>/dev/null || true
  alive fleetd && kill "$(cat "$STATE/fleetd.pid")" 2>/dev/null || true
  mkdir -p "$STATE/units"
  # Supervised like fleet.service (Restart=always): fleetd v1.0.0 panics
  # when etcd stays away past its heartbeat monitor, and comes back on its
  # own. fleetd.pid is the fleetd of the moment; the supervisor's pid is in
  # fleetd-supervisor.pid.
  start_bg fleetd-supervisor "$STATE/fleetd.log" /bin/bash -c '
    state=$1; shift
    trap "kill \$(cat \"$state/fleetd.pid\") 2>/dev/null; exit 0" TERM INT
    while :; do
      "$@" &
      echo $! >"$state/fleetd.pid"
      wait $!
      echo "fleetd exited ($?), restarting in 1s" >&2
      sleep 1
    done' supervisor "$STATE" "$STATE/bin/fleetd" -etcd-servers "$ETCD_URL" \
    -listen "127.0.0.1:$FLEET_PORT" -socket "$STATE/fleet.sock" -units-dir "$STATE/units" \
    -public-ip 127.0.0.1
  wait_for 60 "fleet API on $FLEET_URL" fleet_ready || die "fleet did not start; see $STATE/fleetd.log"
  log "fleet running: API on $FLEET_URL and unix://$STATE/fleet.sock"
}

up() {
  check_deps
  mkdir -p "$STATE"
  [[ -f $STATE/demo-version ]] || echo v1 >"$STATE/demo-version"
  build
  start_systemd
  start_etcd
  start_fleet
}

stop_pid() { # NAME
  local f=$STATE/$1.pid pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  # Stop the units first, while their systemd still runs.
  if alive systemd; then
    systemctl --user stop 'my-service@*.service' >/dev/null 2>&1 || true
  fi
  stop_pid fleetd-supervisor
  stop_pid fleetd
  stop_pid systemd
  stop_pid etcd
  # Anything left in the state directory's services (a unit's own children).
  pkill -f "^$STATE/bin/" 2>/dev/null || true
  if [[ -f $STATE/cgroups ]]; then
    local d
    while read -r d; do rmdir "$d" 2>/dev/null || true; done <"$STATE/cgroups"
  fi
  rm -rf "$STATE"
  log "stopped and removed $STATE"
}

status() {
  local n
  for n in systemd etcd fleetd-supervisor fleetd; do
    if alive $n; then echo "$n: running (pid $(cat "$STATE/$n.pid"))"; else echo "$n: not running"; fi
  done
  if fleet_ready; then
    echo "fleet API: $FLEET_URL"
    curl -fsS "$FLEET_URL/fleet/v1/state"; echo
  fi
}

envs() {
  cat <<ENV
export FLEETROLL_CLUSTER_DIR=$STATE
export FLEETCTL_ENDPOINT=$FLEET_URL
export FLEETROLL_ETCD_ENDPOINTS=$ETCD_URL
export XDG_RUNTIME_DIR=$RUNDIR
export DBUS_SESSION_BUS_ADDRESS=$DBUS_SESSION_BUS_ADDRESS
ENV
}

launch_demo() {
  [[ $# -eq 1 ]] || die "usage: cluster.sh launch-demo PORTS"
  fleet_ready || die "the cluster is not up (cluster.sh up)"
  (cd "$repo" && go run ./contrib/cluster/submit -endpoint "$FLEET_URL" \
    -env "STATE=$STATE" -ports "$1" "$repo/contrib/demo/my-service@.service")
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  env) envs ;;
  launch-demo) shift; launch_demo "$@" ;;
  systemctl) shift; exec systemctl --user "$@" ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

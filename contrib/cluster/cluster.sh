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
#   cluster.sh systemctl ARGS...  systemctl --user against a machine's systemd
#                                 (FLEETROLL_MACHINE, default 1)
#   cluster.sh lose-machine I     kill machine I at once: its fleetd, its systemd
#                                 and every unit process (up brings it back)
#   cluster.sh exec CMD...        run CMD in the hub's network namespace, where
#                                 the machines' addresses are reachable
#
# Settings (environment): FLEETROLL_CLUSTER_DIR (default /tmp/fleetroll-cluster),
# FLEETROLL_ETCD_PORT (2379; the peer port is the next one), FLEETROLL_FLEET_PORT
# (49153), FLEETROLL_MACHINES (1), FLEETROLL_FLEETD_DEBUG (set: fleet's debug
# log in fleetd.log, every line stamped to the microsecond).
#
# One machine runs on the host's loopback, with public IP 127.0.0.1. With N > 1
# machines, machine I has a network namespace of its own, joined to a hub
# namespace by a veth pair on a bridge (10.77.0.1 in the hub, 10.77.0.(10+I) on
# machine I), its own /etc/machine-id (bind-mounted in its mount namespace), its
# own systemd --user, cgroup subtree and fleetd, under $STATE/mI. etcd stays on
# the host's loopback and is relayed through the unix socket $STATE/etcd.sock
# to 127.0.0.1:ETCD_PORT inside every namespace; the fleet API of machine 1 is
# relayed to 127.0.0.1:FLEET_PORT on the host and in the hub.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
STATE=${FLEETROLL_CLUSTER_DIR:-/tmp/fleetroll-cluster}
ETCD_PORT=${FLEETROLL_ETCD_PORT:-2379}
FLEET_PORT=${FLEETROLL_FLEET_PORT:-49153}
MACHINES=${FLEETROLL_MACHINES:-1}
ETCD_URL=http://127.0.0.1:$ETCD_PORT
FLEET_URL=http://127.0.0.1:$FLEET_PORT
NAME=$(basename "$STATE")
NS=fr-$NAME # network namespace names: $NS-hub, $NS-m1, ...
SUBNET=10.77.0

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $MACHINES =~ ^[1-9]$ ]] || die "FLEETROLL_MACHINES=$MACHINES: want 1 to 9"
# A multi-machine cluster remembers its size, so that down and status need
# no setting.
if [[ -f $STATE/machines ]]; then MACHINES=$(cat "$STATE/machines"); fi

mdir() { if ((MACHINES == 1)); then echo "$STATE"; else echo "$STATE/m$1"; fi; }
# mpre I: machine I's prefix for pid file names under $STATE ("" or "mI/").
mpre() { if ((MACHINES == 1)); then echo ""; else echo "m$1/"; fi; }
mip() { if ((MACHINES == 1)); then echo 127.0.0.1; else echo "$SUBNET.$((10 + $1))"; fi; }
# machine_env I: the environment that talks to machine I's systemd.
machine_env() {
  export FLEETROLL_MACHINE=$1
  export XDG_RUNTIME_DIR=$(mdir "$1")/run
  export DBUS_SESSION_BUS_ADDRESS=unix:path=$XDG_RUNTIME_DIR/bus
}
machine_env "${FLEETROLL_MACHINE:-1}"

# in_machine I CMD...: CMD as a process of machine I: in its network
# namespace, seeing its machine ID. One machine is the host itself.
in_machine() {
  local i=$1; shift
  if ((MACHINES == 1)); then exec "$@"; fi
  # Not "ip netns exec": it remounts /sys, which hides the cgroup hierarchies
  # systemd needs.
  exec nsenter --net="/run/netns/$NS-m$i" unshare --mount --propagation private \
    /bin/sh -c 'mount --bind "$0" /etc/machine-id && exec "$@"' "$(mdir "$i")/machine-id" "$@"
}

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
  if [[ -n ${lockfd:-} ]]; then
    # Not the caller's lock (start_machine's): a daemon would hold it.
    setsid "$@" >"$logf" 2>&1 </dev/null {lockfd}>&- &
  else
    setsid "$@" >"$logf" 2>&1 </dev/null &
  fi
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
  command -v ip >/dev/null || missing+=(iproute2)
  command -v go >/dev/null || die "go is not on PATH"
  if ((${#missing[@]})); then
    die "missing packages: ${missing[*]} (run contrib/cluster/deps.sh)"
  fi
}

# The namespaces of a multi-machine cluster: a hub with a bridge, and one
# namespace per machine with a veth pair onto it.
start_net() {
  ((MACHINES > 1)) || return 0
  local i
  if [[ ! -e /run/netns/$NS-hub ]]; then
    ip netns add "$NS-hub"
    ip -n "$NS-hub" link set lo up
    ip -n "$NS-hub" link add br0 type bridge
    ip -n "$NS-hub" addr add "$SUBNET.1/24" dev br0
    ip -n "$NS-hub" link set br0 up
  fi
  for i in $(seq "$MACHINES"); do
    [[ -e /run/netns/$NS-m$i ]] && continue
    ip netns add "$NS-m$i"
    ip -n "$NS-m$i" link set lo up
    ip -n "$NS-hub" link add "m$i" type veth peer name eth0 netns "$NS-m$i"
    ip -n "$NS-hub" link set "m$i" master br0 up
    ip -n "$NS-m$i" addr add "$(mip "$i")/24" dev eth0
    ip -n "$NS-m$i" link set eth0 up
  done
}

# relay NAME LISTEN TO [NETNS]: keep a relay (contrib/cluster/relay) running.
relay() {
  local name=$1 from=$2 to=$3 netns=${4:-}
  # Alive, and a relay: a pid file left by a cluster that was not taken down
  # can name a process that reused the pid.
  if alive "$name" && grep -q "bin/relay" "/proc/$(cat "$STATE/$name.pid")/cmdline" 2>/dev/null; then
    return 0
  fi
  local in=()
  [[ -n $netns ]] && in=(ip netns exec "$netns")
  start_bg "$name" "$STATE/$name.log" "${in[@]}" "$STATE/bin/relay" -listen "$from" -to "$to"
}

start_relays() {
  ((MACHINES > 1)) || return 0
  local i
  relay etcd-relay "unix:$STATE/etcd.sock" "tcp:127.0.0.1:$ETCD_PORT"
  wait_for 30 "the etcd relay" test -S "$STATE/etcd.sock" ||
    die "the etcd relay did not start: $(cat "$STATE/etcd-relay.log" 2>/dev/null)"
  relay hub-etcd-relay "tcp:127.0.0.1:$ETCD_PORT" "unix:$STATE/etcd.sock" "$NS-hub"
  relay fleet-relay "tcp:127.0.0.1:$FLEET_PORT" "unix:$STATE/m1/fleet.sock"
  relay hub-fleet-relay "tcp:127.0.0.1:$FLEET_PORT" "unix:$STATE/m1/fleet.sock" "$NS-hub"
  for i in $(seq "$MACHINES"); do
    mkdir -p "$(mdir "$i")"
    relay "m$i/etcd-relay" "tcp:127.0.0.1:$ETCD_PORT" "unix:$STATE/etcd.sock" "$NS-m$i"
  done
}

systemd_ready() { # I
  local st
  # Not is-system-running: it says "offline" once /run/systemd/system is gone.
  st=$(machine_env "$1"; systemctl --user show -p SystemState --value 2>/dev/null) || true
  [[ $st == running || $st == degraded ]] && (machine_env "$1"; busctl --user status >/dev/null 2>&1)
}

# The cgroup directories of machine I's systemd: two instances in one
# subtree take each other's units (and D-Bus) for their own.
cgroups_of() {
  local h cg=fleetroll-$NAME
  ((MACHINES > 1)) && cg+=-m$1
  for h in systemd unified pids cpu; do
    [[ -d /sys/fs/cgroup/$h ]] && echo "/sys/fs/cgroup/$h/$cg"
  done
  return 0
}

start_systemd() { # I
  local i=$1 d m
  m=$(mdir "$i")
  local p
  p=$(mpre "$i")
  if alive "${p}systemd" && systemd_ready "$i"; then return; fi
  alive "${p}systemd" && kill "$(cat "$STATE/${p}systemd.pid")" 2>/dev/null || true
  rm -rf "$m/run"
  mkdir -p "$m/run"
  chmod 0700 "$m/run"
  if ((MACHINES > 1)) && [[ ! -f $m/machine-id ]]; then
    od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$m/machine-id"
    echo >>"$m/machine-id"
  fi
  # systemd --user exits at once unless the host looks booted with systemd;
  # the directory is only read at start. Clusters that start at once (the
  # tests start four) take turns here, so that none removes it while
  # another's systemd has yet to read it.
  local lockfd created=
  exec {lockfd}>"${TMPDIR:-/tmp}/fleetroll-cluster-systemd.lock"
  flock "$lockfd"
  if [[ ! -d /run/systemd/system ]]; then
    mkdir -p /run/systemd/system
    created=1
  fi
  cgroups_of "$i" >"$m/cgroups"
  while read -r d; do mkdir -p "$d"; done <"$m/cgroups"
  (machine_env "$i"; start_bg "${p}systemd" "$m/systemd.log" /bin/sh -c \
    'while read -r d; do echo $$ >"$d/cgroup.procs" || exit 1; done <"$0"; exec "$@"' "$m/cgroups" \
    "$here/cluster.sh" in-machine "$i" /lib/systemd/systemd --user)
  local ok=0
  wait_for 30 "systemd --user of machine $i" systemd_ready "$i" || ok=1
  [[ -n $created ]] && rmdir /run/systemd/system 2>/dev/null || true
  flock -u "$lockfd"
  exec {lockfd}>&-
  ((ok == 0)) || die "systemd --user did not start; see $m/systemd.log"
  # Units read the machine's address as CoreOS's /etc/environment gives it.
  (machine_env "$i"; systemctl --user set-environment "COREOS_PUBLIC_IPV4=$(mip "$i")")
  log "machine $i: systemd --user running (pid $(cat "$STATE/${p}systemd.pid"))"
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
  if ((MACHINES > 1)); then
    (cd "$repo" && go build -o "$STATE/bin/relay" ./contrib/cluster/relay) || die "building the relay failed"
  fi
}

# machine_api I PATH: GET PATH from machine I's fleet API (its unix socket).
machine_api() {
  curl -fsS -m 5 --unix-socket "$(mdir "$1")/fleet.sock" "http://fleet$2"
}

fleet_ready() { # I: machine I's fleetd answers and fleet lists it
  machine_api "$1" /fleet/v1/machines | grep -q "\"primaryIP\":\"$(mip "$1")\""
}

all_machines_listed() {
  [[ $(machine_api 1 /fleet/v1/machines | grep -o '"primaryIP"' | wc -l) -ge $MACHINES ]]
}

start_fleet() { # I
  local i=$1 m p
  m=$(mdir "$i")
  p=$(mpre "$i")
  if alive "${p}fleetd-supervisor" && wait_for 30 "fleet on machine $i" fleet_ready "$i"; then return; fi
  alive "${p}fleetd-supervisor" && kill "$(cat "$STATE/${p}fleetd-supervisor.pid")" 2>/dev/null || true
  alive "${p}fleetd" && kill "$(cat "$STATE/${p}fleetd.pid")" 2>/dev/null || true
  mkdir -p "$m/units"
  local listen=()
  ((MACHINES == 1)) && listen=(-listen "127.0.0.1:$FLEET_PORT")
  ((MACHINES > 1)) && listen=(-listen "" -metadata "machine=m$i")
  # Supervised like fleet.service (Restart=always): fleetd v1.0.0 panics
  # when etcd stays away past its heartbeat monitor, and comes back on its
  # own. fleetd.pid is the fleetd of the moment; the supervisor's pid is in
  # fleetd-supervisor.pid.
  (machine_env "$i"; start_bg "${p}fleetd-supervisor" "$m/fleetd.log" /bin/bash -c '
    pidf=$1; shift
    trap "kill \$(cat \"$pidf\") 2>/dev/null; exit 0" TERM INT
    while :; do
      "$@" &
      echo $! >"$pidf"
      wait $!
      echo "fleetd exited ($?), restarting in 1s" >&2
      sleep 1
    done' supervisor "$m/fleetd.pid" "$here/cluster.sh" in-machine "$i" "$STATE/bin/fleetd" \
    -etcd-servers "$ETCD_URL" "${listen[@]}" -socket "$m/fleet.sock" -units-dir "$m/units" \
    -public-ip "$(mip "$i")" ${FLEETROLL_FLEETD_DEBUG:+-debug})
  wait_for 60 "fleet on machine $i" fleet_ready "$i" || die "fleet did not start; see $m/fleetd.log"
  log "machine $i: fleet running, API on unix://$m/fleet.sock"
}

# stale: the state directory is here but nothing of its cluster runs (etcd,
# every machine's systemd and fleet supervisor): it stopped without down (a
# reboot, a killed session). Its units' processes and containers may still
# hold their ports.
stale() {
  [[ -d $STATE ]] || return 1
  alive etcd && return 1
  local i p
  for i in $(seq "$MACHINES"); do
    p=$(mpre "$i")
    alive "${p}systemd" && return 1
    alive "${p}fleetd-supervisor" && return 1
  done
  return 0
}

# remove_containers: the containers the demo's units ran (names listed in
# $STATE/containers), which outlive their unit when its systemd is killed.
remove_containers() {
  [[ -s $STATE/containers ]] && command -v podman >/dev/null || return 0
  # shellcheck disable=SC2046
  CONTAINERS_CONF=$repo/contrib/container/containers.conf podman rm -f -t 0 $(cat "$STATE/containers") >/dev/null 2>&1 || true
}

up() {
  check_deps
  if stale; then
    log "$STATE holds a cluster that stopped without down: removing what it left first"
    down
  fi
  mkdir -p "$STATE"
  ((MACHINES > 1)) && echo "$MACHINES" >"$STATE/machines"
  [[ -f $STATE/demo-version ]] || echo v1 >"$STATE/demo-version"
  build
  start_net
  start_etcd
  start_relays
  local i
  for i in $(seq "$MACHINES"); do
    mkdir -p "$(mdir "$i")"
    start_systemd "$i"
    start_fleet "$i"
  done
  wait_for 60 "$MACHINES machines in fleet" all_machines_listed || die "fleet lists fewer than $MACHINES machines"
  wait_for 30 "the fleet API on $FLEET_URL" curl -fsS "$FLEET_URL/fleet/v1/machines" ||
    die "the fleet API does not answer on $FLEET_URL"
  log "fleet API on $FLEET_URL ($MACHINES machine(s))"
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

# kill_cgroups I: SIGKILL every process left in machine I's cgroup subtree.
kill_cgroups() {
  local m d
  m=$(mdir "$1")
  [[ -f $m/cgroups ]] || return 0
  while read -r d; do
    [[ -d $d ]] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done <"$m/cgroups"
}

lose_machine() { # I
  local i=$1 p
  [[ $i =~ ^[0-9]+$ ]] && ((i >= 1 && i <= MACHINES)) || die "lose-machine: no machine $i"
  p=$(mpre "$i")
  local n
  for n in fleetd-supervisor fleetd systemd; do
    [[ -f $STATE/$p$n.pid ]] && kill -KILL "$(cat "$STATE/$p$n.pid")" 2>/dev/null || true
  done
  kill_cgroups "$i"
  log "machine $i lost: fleetd, systemd and its units killed"
}

down() {
  local i p m d
  for i in $(seq "$MACHINES"); do
    m=$(mdir "$i")
    p=$(mpre "$i")
    # Stop the units first, while their systemd still runs.
    if alive "${p}systemd"; then
      (machine_env "$i"; systemctl --user stop 'my-service@*.service' 'web@*.service' >/dev/null 2>&1) || true
    fi
    stop_pid "${p}fleetd-supervisor"
    stop_pid "${p}fleetd"
    stop_pid "${p}systemd"
    stop_pid "${p}etcd-relay"
    kill_cgroups "$i"
    if [[ -f $m/cgroups ]]; then
      while read -r d; do
        [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
      done <"$m/cgroups"
    fi
  done
  remove_containers
  for p in fleet-relay hub-fleet-relay hub-etcd-relay etcd-relay demo-registry; do stop_pid "$p"; done
  stop_pid etcd
  # Anything left in the state directory's services (a unit's own children).
  pkill -f "^$STATE/bin/" 2>/dev/null || true
  if ((MACHINES > 1)); then
    for i in $(seq "$MACHINES"); do ip netns del "$NS-m$i" 2>/dev/null || true; done
    ip netns del "$NS-hub" 2>/dev/null || true
  fi
  # Mounts left under the state directory (a container engine's storage).
  awk -v d="$STATE/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$STATE"
  log "stopped and removed $STATE"
}

status() {
  local n i p
  for n in etcd etcd-relay fleet-relay; do
    alive $n && echo "$n: running (pid $(cat "$STATE/$n.pid"))"
  done
  for i in $(seq "$MACHINES"); do
    p=$(mpre "$i")
    for n in systemd fleetd-supervisor fleetd; do
      if alive "$p$n"; then echo "machine $i $n: running (pid $(cat "$STATE/$p$n.pid"))"; else echo "machine $i $n: not running"; fi
    done
  done
  if curl -fsS "$FLEET_URL/fleet/v1/machines" >/dev/null 2>&1; then
    echo "fleet API: $FLEET_URL"
    curl -fsS "$FLEET_URL/fleet/v1/machines"; echo
    curl -fsS "$FLEET_URL/fleet/v1/state"; echo
  fi
}

envs() {
  cat <<ENV
export FLEETROLL_CLUSTER_DIR=$STATE
export FLEETCTL_ENDPOINT=$FLEET_URL
export FLEETROLL_ETCD_ENDPOINTS=$ETCD_URL
export XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR
export DBUS_SESSION_BUS_ADDRESS=$DBUS_SESSION_BUS_ADDRESS
ENV
}

launch_demo() {
  [[ $# -eq 1 ]] || die "usage: cluster.sh launch-demo PORTS"
  curl -fsS "$FLEET_URL/fleet/v1/machines" >/dev/null 2>&1 || die "the cluster is not up (cluster.sh up)"
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
  lose-machine) shift; [[ $# -eq 1 ]] || die "usage: cluster.sh lose-machine I"; lose_machine "$1" ;;
  exec)
    shift
    ((MACHINES > 1)) || exec "$@"
    exec ip netns exec "$NS-hub" "$@" ;;
  in-machine) shift; i=$1; shift; in_machine "$i" "$@" ;;
  *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2 ;;
esac

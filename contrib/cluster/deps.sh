#!/usr/bin/env bash
# Installs the Debian packages the local cluster needs, when missing.
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
[[ -e /usr/lib/systemd/user/dbus.socket ]] || need+=(dbus-user-session)
command -v busctl >/dev/null || need+=(systemd)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  echo "deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The package's own etcd service is not ours; the cluster runs its own.

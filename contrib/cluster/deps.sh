#!/usr/bin/env bash
# Installs the Debian packages the local cluster needs, when missing.
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
[[ -e /usr/lib/systemd/user/dbus.socket ]] || need+=(dbus-user-session)
command -v busctl >/dev/null || need+=(systemd)
command -v curl >/dev/null || need+=(curl)
# make release: the CA bundle its image carries; the manual page's test
# renders it with groff (man-db's formatter).
[[ -e /etc/ssl/certs/ca-certificates.crt ]] || need+=(ca-certificates)
command -v groff >/dev/null || need+=(groff-base)
# Network namespaces of a multi-machine cluster (nsenter and unshare are in
# util-linux, which every Debian has).
command -v ip >/dev/null || need+=(iproute2)
# Containers without a Docker engine (the container proof): podman with runc,
# a registry that sends notifications, nginx for the proxy, and a static
# busybox for a builder image made without any registry.
if [[ ${FLEETROLL_DEPS:-all} == all ]]; then
  # podman as tested here, with the helpers it recommends.
  command -v podman >/dev/null || need+=(podman uidmap slirp4netns fuse-overlayfs)
  command -v runc >/dev/null || need+=(runc)
  command -v docker-registry >/dev/null || need+=(docker-registry)
  command -v nginx >/dev/null || need+=(nginx-light)
  [[ -x /bin/busybox ]] && /bin/busybox --list >/dev/null 2>&1 || need+=(busybox-static)
  # The status page's browser test: headless Chromium, and a font for its
  # screenshot.
  command -v chromium >/dev/null || need+=(chromium fonts-dejavu-core)
fi
if ((${#need[@]})); then
  echo "deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The package's own etcd service is not ours; the cluster runs its own.

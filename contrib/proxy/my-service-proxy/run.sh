#!/bin/sh
# The proxy's container runs this from the prefix directory PROXY_DIR
# (contrib/proxy/units/my-service-proxy.service): confd in the background,
# started again whenever it ends, and nginx as the container's main process.
# confd reloads nginx with kill -HUP $(cat nginx.pid), which works because
# both run in the one container (its processes' namespace). The image needs
# nginx, /bin/sh, cat, mkdir and sleep; confd is mounted at /opt/bin/confd.
set -eu
cd "$PROXY_DIR"
mkdir -p tmp
nginx -t -q -p "$PROXY_DIR/" -c nginx.conf
# The pid file an earlier container left names none of this one's
# processes: emptied, so that confd waits for the new nginx's.
: >nginx.pid
(
	until [ -s nginx.pid ]; do sleep 1; done
	while :; do
		/opt/bin/confd -watch -backend etcd -node "$ETCD" -confdir "$PROXY_DIR/confd" || :
		echo "run.sh: confd ended; starting it again in 1 s" >&2
		sleep 1
	done
) &
exec nginx -p "$PROXY_DIR/" -c nginx.conf -g 'daemon off;'

#!/bin/sh
# A container engine stand-in for the tests and benchmarks of releases that
# need no registry and no image: the shipped instance unit
# (units/my-service@.service) and fleetroll's pull and prune units run it as
# DOCKER. An "image" is any REPOSITORY@sha256:HEX; running it runs the demo
# service ($ENGINE_DIR/my-service, or $STATE/bin/my-service) with the flags
# written in $ENGINE_DIR/args/HEX, if that file exists (for example
# "-exit-after 5s": a release that crashes 5 s after its start). Every run
# appends "UNIX-TIME PORT IMAGE" to $ENGINE_DIR/runs; pulls and removals
# succeed and are logged to $ENGINE_DIR/pulls and $ENGINE_DIR/removed.
set -eu
dir=${ENGINE_DIR:?names the engine directory}
case "${1:-}" in
  image) exit 0 ;; # inspect: every image is here
  pull) echo "$(date +%s.%N) $(cat /etc/machine-id 2>/dev/null || echo -) $2" >>"$dir/pulls"; exit 0 ;;
  rmi) shift; echo "$(date +%s.%N) $*" >>"$dir/removed"; exit 0 ;;
  rm | stop) exit 0 ;; # the instance's process is systemd's to stop
  run)
    shift
    name=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --name) name=$2; shift 2 ;;
        --*) shift ;;
        *) break ;;
      esac
    done
    image=$1
    shift
    hex=${image##*@sha256:}
    extra=""
    if [ -f "$dir/args/$hex" ]; then extra=$(cat "$dir/args/$hex"); fi
    echo "$(date +%s.%N) ${name##*-} $image" >>"$dir/runs"
    bin="$dir/my-service"
    [ -x "$bin" ] || bin="${STATE:?}/bin/my-service"
    # shellcheck disable=SC2086 # the flags are words
    exec "$bin" "$@" $extra
    ;;
esac
echo "engine.sh: $* is not one of image, pull, rmi, rm, stop, run" >&2
exit 2

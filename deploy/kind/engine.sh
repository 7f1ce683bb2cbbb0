#!/usr/bin/env bash
# The container engine for the kind setup.
#
#   engine.sh start   a Docker daemon that answers: the one running, or one started here
#   engine.sh stop    stops only a daemon this script started
#
# Where no daemon answers, `start` installs Debian's docker.io if dockerd is absent and
# starts dockerd in the background. On a host whose capability bounding set lacks
# CAP_SYS_RESOURCE (some sandboxed CI machines), runc cannot start the privileged
# containers kind needs; dockerd then runs every container through a small runtime
# wrapper that drops that one capability from the container's lists before calling runc.
# A host with the full set gets plain runc.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=/run/lifeline-engine
PIDFILE=$STATE/dockerd.pid
WRAPPER=$STATE/runc-without-sys-resource
LOGFILE=${LIFELINE_ENGINE_LOG:-/tmp/lifeline-dockerd.log}

# Bit 24 of the bounding set is CAP_SYS_RESOURCE.
host_lacks_sys_resource() {
  local bounding
  bounding=$(awk '$1 == "CapBnd:" {print $2}' /proc/self/status)
  (((16#$bounding >> 24 & 1) == 0))
}

write_wrapper() {
  local runc
  runc=$(command -v runc) || die "runc is not installed (Debian's docker.io depends on it)"
  cat >"$WRAPPER" <<WRAPPER
#!/bin/sh
# Written by deploy/kind/engine.sh: removes CAP_SYS_RESOURCE, which this host cannot
# grant, from a container's (create, run) or an exec's (--process) capability lists,
# then runs runc with the same arguments.
set -e
drop='|= (if . == null then . else with_entries(.value |= map(select(. != "CAP_SYS_RESOURCE"))) end)'
bundle=
process=
command=
prev=
for arg in "\$@"; do
  case "\$prev" in
    --bundle | -b) bundle=\$arg ;;
    --process | -p) process=\$arg ;;
  esac
  case "\$arg" in
    --bundle=*) bundle=\${arg#--bundle=} ;;
    --process=*) process=\${arg#--process=} ;;
    create | run) [ -n "\$command" ] || command=\$arg ;;
  esac
  prev=\$arg
done
edit() {
  jq "\$1" "\$2" >"\$2.lifeline" && mv "\$2.lifeline" "\$2"
}
if [ -n "\$command" ]; then
  config="\${bundle:-.}/config.json"
  [ ! -f "\$config" ] || edit ".process.capabilities \$drop" "\$config"
fi
[ -z "\$process" ] || [ ! -f "\$process" ] || edit ".capabilities \$drop" "\$process"
exec $runc "\$@"
WRAPPER
  chmod 0755 "$WRAPPER"
}

install_engine() {
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  command -v jq >/dev/null 2>&1 || apt_install jq
}

start() {
  if docker info >/dev/null 2>&1; then
    log "a Docker daemon answers: using it"
    return 0
  fi
  ((EUID == 0)) || die "no Docker daemon answers, and only root may start one here"
  install_engine
  mkdir -p "$STATE"
  local args=(--host unix:///var/run/docker.sock)
  if host_lacks_sys_resource; then
    write_wrapper
    args+=(--add-runtime "lifeline-runc=$WRAPPER" --default-runtime lifeline-runc)
    log "this host cannot grant CAP_SYS_RESOURCE: containers run through $WRAPPER"
  fi
  log "starting dockerd (log: $LOGFILE)"
  # setsid: the daemon outlives this script and ignores its terminal's signals.
  setsid dockerd "${args[@]}" >"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local i
  for ((i = 0; i < 60; i++)); do
    if docker info >/dev/null 2>&1; then
      log "dockerd is up (pid $(cat "$PIDFILE"))"
      return 0
    fi
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { tail -20 "$LOGFILE" >&2; die "dockerd exited"; }
    sleep 1
  done
  tail -20 "$LOGFILE" >&2
  die "dockerd did not answer within 60 s"
}

stop() {
  if [[ ! -f $PIDFILE ]]; then
    log "no Docker daemon was started here: nothing to stop"
    return 0
  fi
  local pid i
  pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    for ((i = 0; i < 30; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -rf "$STATE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: engine.sh start|stop" ;;
esac

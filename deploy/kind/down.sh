#!/usr/bin/env bash
# Deletes what up.sh made: the kind clusters, the etcd container, the load-balancer
# routes, cloud-provider-kind, the kind network when up.sh created it, the empty
# /lib/modules kind's nodes leave on a host without one, and the Docker daemon when
# engine.sh started it. Images and build caches stay, so the next up.sh is quick.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  require docker
  if ! docker info >/dev/null 2>&1; then
    log "no Docker daemon answers: nothing to delete"
    return 0
  fi
  local name existing prefix
  ensure_kind
  existing=$(kind get clusters 2>/dev/null || true)
  for name in "$MANAGEMENT" "${MEMBERS[@]}"; do
    if grep -qx "$name" <<<"$existing"; then
      kind delete cluster --name "$name"
    else
      log "cluster $name does not exist"
    fi
  done
  docker rm -f "$ETCD_CONTAINER" "$CLOUD_PROVIDER_KIND_CONTAINER" >/dev/null 2>&1 || true
  # etcd kept its data in memory; its certificates name its address on this network.
  rm -rf "$STATE_DIR/etcd"
  if docker network inspect kind >/dev/null 2>&1; then
    network_addresses
    prefix=${LB_PREFIX%.*}
    # Host routes up.sh and e2e.sh added (load-balancer addresses, Lifeline pods):
    # every route through a gateway on the kind network.
    ip -4 route show | awk -v p="$prefix." '$2 == "via" && index($3, p) == 1 {print $1}' \
      | while read -r dst; do ip route del "$dst" 2>/dev/null || true; done
    if [[ -z $(docker network inspect kind -f '{{range .Containers}}{{.Name}} {{end}}') ]]; then
      docker network rm kind >/dev/null
      log "kind network removed"
    fi
  fi
  # kind mounts /lib/modules into its nodes; on a host without it dockerd created an
  # empty directory. Remove it only when empty.
  if [[ -d /lib/modules ]]; then rmdir /lib/modules 2>/dev/null || true; fi
  local saved
  for saved in "$STATE_DIR"/sysctl/*; do
    [[ -f $saved ]] || continue
    sysctl -qw "$(basename "$saved")=$(cat "$saved")"
    log "$(basename "$saved") set back to $(cat "$saved")"
    rm -f "$saved"
  done
  bash "$KIND_DIR/engine.sh" stop
  log "deleted"
}

main "$@"

#!/usr/bin/env bash
# Deletes the kind clusters and the cloud-provider-kind container up.sh created.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  require kind docker
  local name existing
  existing=$(kind get clusters 2>/dev/null || true)
  for name in "$MANAGEMENT" "${MEMBERS[@]}"; do
    if grep -qx "$name" <<<"$existing"; then
      kind delete cluster --name "$name"
    else
      log "cluster $name does not exist"
    fi
  done
  # Load balancer containers of deleted clusters are cleaned up by cloud-provider-kind
  # itself while it runs; stop it last.
  docker rm -f "$CLOUD_PROVIDER_KIND_CONTAINER" >/dev/null 2>&1 || true
  log "deleted"
}

main "$@"

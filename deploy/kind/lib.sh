# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this
# Shared by up.sh, e2e.sh and down.sh: names, messages, prerequisite checks and a
# bounded wait. Sourced, not run.

# Clusters: one management cluster running Lifeline, two members running the workload.
MANAGEMENT=lifeline-management
MEMBERS=(lifeline-member-a lifeline-member-b)
# The MemberCluster names in manifests/management/lifeline-demo.yaml, in MEMBERS order.
MEMBER_NAMES=(member-a member-b)
NAMESPACE=lifeline-system
IMAGE=lifeline:kind
GLOBAL_NAME=hello.global.example.com
# cloud-provider-kind gives LoadBalancer Services an address on the kind network. One
# container serves every kind cluster on the machine.
CLOUD_PROVIDER_KIND_IMAGE=${CLOUD_PROVIDER_KIND_IMAGE:-registry.k8s.io/cloud-provider-kind/cloud-controller-manager:v0.6.0}
CLOUD_PROVIDER_KIND_CONTAINER=lifeline-cloud-provider-kind

KIND_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$KIND_DIR/../.." && pwd)

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Fails with one message naming every missing command.
require() {
  local missing=() cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  ((${#missing[@]} == 0)) || die "missing prerequisites: ${missing[*]} (see README.md, \"Run on kind\")"
}

require_docker_daemon() {
  docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer (is it running, and may you use it?)"
}

ctx() { printf 'kind-%s' "$1"; }

# wait_until SECONDS DESCRIPTION COMMAND...: runs COMMAND every 2 s until it succeeds,
# failing after SECONDS.
wait_until() {
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds; i += 2)); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    sleep 2
  done
  die "timed out after ${seconds}s waiting for $what"
}

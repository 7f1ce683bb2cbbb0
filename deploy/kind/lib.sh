# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this
# Shared by up.sh, e2e.sh and down.sh: names, messages, prerequisite checks and a
# bounded wait. Sourced, not run.

# Clusters: one management cluster running Lifeline, two members running the workload.
MANAGEMENT=lifeline-management
MEMBERS=(lifeline-member-a lifeline-member-b)
# The MemberCluster names in manifests/management/lifeline-demo.yaml, in MEMBERS order.
MEMBER_NAMES=(member-a member-b)
NAMESPACE=lifeline-system
# Requests in flight each member API server admits (--max-requests-inflight).
MEMBER_MAX_INFLIGHT=${LIFELINE_KIND_MEMBER_INFLIGHT:-20}
IMAGE=lifeline:kind
HELLO_IMAGE=lifeline-hello:kind
GLOBAL_NAME=hello.global.example.com
# Where a registry is reachable, cloud-provider-kind gives LoadBalancer Services an
# address on the kind network (one container serves every kind cluster on the machine);
# elsewhere up.sh gives them addresses of its own (see load_balancers in up.sh).
CLOUD_PROVIDER_KIND_IMAGE=${CLOUD_PROVIDER_KIND_IMAGE:-registry.k8s.io/cloud-provider-kind/cloud-controller-manager:v0.6.0}
CLOUD_PROVIDER_KIND_CONTAINER=lifeline-cloud-provider-kind

KIND_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$KIND_DIR/../.." && pwd)
# kind itself, installed from the Go module proxy when absent (see ensure_kind).
KIND_VERSION=v0.33.0
# One Kubernetes version for the tests and the clusters: the one tests/control-plane pins.
go_mod_version() { awk -v m="$1" '$1 == m { print $2; exit }' "$REPO_ROOT/tests/control-plane/go.mod"; }
kubernetes_version() { go_mod_version k8s.io/kubernetes; }
# etcd in the offline node image is the version go.mod pins, so the clusters' kubeadm
# configuration names its tag. (CoreDNS and pause are named as kubeadm asks: see
# node-image.sh.)
ETCD_TAG="$(go_mod_version go.etcd.io/etcd/server/v3 | sed 's/^v//')-0"
ETCD_IMAGE=registry.k8s.io/etcd:$ETCD_TAG

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
  ((${#missing[@]} == 0)) || die "missing prerequisites: ${missing[*]} (see docs/kind.md)"
}

# apt_install PACKAGE...: installs Debian packages a script needs, where it can.
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1 || ((EUID != 0)); then
    die "missing: $* (install them, or run as root on Debian)"
  fi
  log "installing Debian's $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null >/dev/null \
    || { apt-get update -q </dev/null >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null >/dev/null; }
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

# The kind network: created by up.sh with this subnet when absent. Docker assigns node
# addresses from the lower half; etcd and the load-balancer addresses sit at the top.
KIND_SUBNET=${LIFELINE_KIND_SUBNET:-172.30.0.0/16}
KIND_IP_RANGE=${KIND_SUBNET%.*.*/*}.0.0/17
ETCD_CONTAINER=lifeline-kind-etcd

# Sets ETCD_ADDRESS and LB_PREFIX from the kind network's IPv4 subnet (a /16).
network_addresses() {
  local subnet
  subnet=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' | tr ' ' '\n' | grep -m1 '\.') \
    || die "the kind network has no IPv4 subnet"
  [[ $subnet == */16 ]] || die "the kind network's subnet $subnet is not a /16 (delete it, or set LIFELINE_KIND_SUBNET)"
  LB_PREFIX=${subnet%.*.*/*}.255
  ETCD_ADDRESS=$LB_PREFIX.2
}

# What the scripts build and keep: certificates, the etcd password, kind itself.
STATE_DIR=${LIFELINE_KIND_STATE:-$REPO_ROOT/target/kind}
CACHE=${LIFELINE_KIND_CACHE:-/var/cache/lifeline-kind}
MIRROR=${LIFELINE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# debootstrap_root DIR PACKAGES LOG: a fresh Debian bookworm (minbase) with PACKAGES in
# DIR, debootstrap's output in $CACHE/LOG. The caller marks DIR complete once it has
# set it up, so an interrupted build starts again.
debootstrap_root() {
  local root=$1 packages=$2 logfile=$CACHE/$3
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  log "debootstrap of Debian bookworm with $packages into $root"
  rm -rf "$root"
  mkdir -p "$CACHE"
  debootstrap --variant=minbase --include="$packages" bookworm "$root" "$MIRROR" >"$logfile" 2>&1 \
    || { tail -20 "$logfile" >&2; die "debootstrap failed (log: $logfile)"; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
}
export PATH="$STATE_DIR/bin:$REPO_ROOT/target/control-plane:$PATH"

# The nodes of a cluster, by role.
control_plane_node() { printf '%s-control-plane' "$1"; }
worker_nodes() { kind get nodes --name "$1" | grep -- '-worker' | sort; }
all_nodes() {
  local cluster
  for cluster in "$MANAGEMENT" "${MEMBERS[@]}"; do kind get nodes --name "$cluster"; done
}
# lb_address_of CLUSTER NAMESPACE SERVICE: its load-balancer address, or nothing yet.
lb_address_of() {
  kubectl --context "$(ctx "$1")" -n "$2" get service "$3" -o jsonpath='{.status.loadBalancer.ingress[0].ip}'
}
node_ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }

# static_image NAME BINARY: an image of one static binary from target/control-plane,
# with an /etc/passwd naming root and nonroot (65532).
static_image() {
  local name=$1 binary=$2 dir
  dir=$(mktemp -d)
  mkdir -p "$dir/usr/local/bin" "$dir/etc" "$dir/tmp" "$dir/var/lib"
  chmod 1777 "$dir/tmp"
  cp "$REPO_ROOT/target/control-plane/$binary" "$dir/usr/local/bin/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$dir/etc/group"
  tar -C "$dir" -c . | docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    -c "ENTRYPOINT [\"/usr/local/bin/$binary\"]" - "$name" >/dev/null
  rm -rf "$dir"
}

# load_image IMAGE CLUSTER: into every node's containerd, unless that node already has
# this build of it (a marker in the node names the image ID it loaded last). kind load
# docker-image does the same, but asks crictl, which the offline node lacks.
load_image() {
  local image=$1 cluster=$2 id node marker
  id=$(docker image inspect -f '{{.Id}}' "$image")
  marker=/var/lib/lifeline-loaded/${image//[:\/]/_}
  for node in $(kind get nodes --name "$cluster"); do
    [[ $(docker exec "$node" cat "$marker" 2>/dev/null) == "$id" ]] && continue
    docker save "$image" | docker exec -i "$node" ctr -n k8s.io images import --no-unpack - >/dev/null
    docker exec "$node" sh -c "mkdir -p ${marker%/*} && echo $id >$marker"
  done
}

ensure_kind() {
  if [[ $(kind version 2>/dev/null) == "kind $KIND_VERSION "* ]]; then
    return 0
  fi
  require go
  log "installing kind $KIND_VERSION into $STATE_DIR/bin"
  GOFLAGS='' GOBIN="$STATE_DIR/bin" go install "sigs.k8s.io/kind@$KIND_VERSION"
}

#!/usr/bin/env bash
# Creates a management and two member kind clusters, installs Lifeline (the `single`
# overlay) in the management cluster and an example workload in each member, and
# registers the members. Safe to re-run: existing clusters are reused and manifests
# re-applied. Undo with down.sh.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

create_clusters() {
  local name existing
  existing=$(kind get clusters 2>/dev/null || true)
  for name in "$MANAGEMENT" "${MEMBERS[@]}"; do
    if grep -qx "$name" <<<"$existing"; then
      log "cluster $name exists"
    else
      log "creating cluster $name"
      kind create cluster --name "$name" --wait 120s
    fi
  done
}

start_load_balancer_provider() {
  if [[ -n $(docker ps -q --filter "name=^${CLOUD_PROVIDER_KIND_CONTAINER}$") ]]; then
    log "cloud-provider-kind is running"
    return
  fi
  docker rm -f "$CLOUD_PROVIDER_KIND_CONTAINER" >/dev/null 2>&1 || true
  log "starting cloud-provider-kind ($CLOUD_PROVIDER_KIND_IMAGE)"
  docker run -d --name "$CLOUD_PROVIDER_KIND_CONTAINER" --network kind \
    -v /var/run/docker.sock:/var/run/docker.sock \
    "$CLOUD_PROVIDER_KIND_IMAGE" >/dev/null
}

build_image() {
  log "building $IMAGE (a release build: several minutes the first time)"
  docker build -f "$REPO_ROOT/deploy/Dockerfile" -t "$IMAGE" "$REPO_ROOT"
  kind load docker-image "$IMAGE" --name "$MANAGEMENT"
}

# The member's read-only ServiceAccount token, once the token controller has filled it in.
member_token() {
  kubectl --context "$(ctx "$1")" -n "$NAMESPACE" get secret lifeline-member-reader-token \
    -o jsonpath='{.data.token}' | base64 -d
}

lb_address() {
  kubectl --context "$(ctx "$1")" -n demo get service hello \
    -o jsonpath='{.status.loadBalancer.ingress[0].ip}'
}

has_lb_address() { [[ -n $(lb_address "$1") ]]; }
has_token() { [[ -n $(member_token "$1") ]]; }

# A kubeconfig for Lifeline inside the management cluster: the member's API server at
# its address on the kind network, authenticated as lifeline-member-reader.
member_kubeconfig() {
  local cluster=$1 internal server ca token
  internal=$(kind get kubeconfig --internal --name "$cluster")
  server=$(awk '$1 == "server:" {print $2; exit}' <<<"$internal")
  ca=$(awk '$1 == "certificate-authority-data:" {print $2; exit}' <<<"$internal")
  token=$(member_token "$cluster")
  [[ -n $server && -n $ca && -n $token ]] || die "incomplete credentials for $cluster"
  cat <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: $cluster
    cluster:
      server: $server
      certificate-authority-data: $ca
users:
  - name: lifeline-member-reader
    user:
      token: $token
contexts:
  - name: $cluster
    context: {cluster: $cluster, user: lifeline-member-reader}
current-context: $cluster
KUBECONFIG
}

install_members() {
  local cluster context
  for cluster in "${MEMBERS[@]}"; do
    context=$(ctx "$cluster")
    log "member $cluster: RBAC, reader token, example workload"
    kubectl --context "$context" apply -f "$REPO_ROOT/deploy/rbac/member-cluster.yaml"
    kubectl --context "$context" apply -f "$KIND_DIR/manifests/member/reader-token.yaml"
    kubectl --context "$context" apply -f "$KIND_DIR/manifests/member/hello.yaml"
  done
  for cluster in "${MEMBERS[@]}"; do
    context=$(ctx "$cluster")
    kubectl --context "$context" -n demo rollout status deployment/hello --timeout=180s
    wait_until 120 "a LoadBalancer address for hello in $cluster" has_lb_address "$cluster"
    wait_until 60 "the reader token in $cluster" has_token "$cluster"
    log "member $cluster: hello at $(lb_address "$cluster")"
  done
}

apply_secret() {
  kubectl --context "$(ctx "$MANAGEMENT")" -n "$NAMESPACE" create secret generic "$@" \
    --dry-run=client -o yaml | kubectl --context "$(ctx "$MANAGEMENT")" apply -f -
}

install_management() {
  local context i file existed
  context=$(ctx "$MANAGEMENT")
  log "management: namespace, admin token, credential key, member kubeconfigs"
  kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl --context "$context" apply -f -
  if ! kubectl --context "$context" -n "$NAMESPACE" get secret lifeline-admin-token >/dev/null 2>&1; then
    apply_secret lifeline-admin-token --from-literal=token="$(head -c 32 /dev/urandom | base64)"
  fi
  if ! kubectl --context "$context" -n "$NAMESPACE" get secret lifeline-credential-key >/dev/null 2>&1; then
    apply_secret lifeline-credential-key --from-literal=key="$(head -c 32 /dev/urandom | base64)"
  fi
  file=$(mktemp)
  # shellcheck disable=SC2064 # the path is fixed now, on purpose
  trap "rm -f '$file'" EXIT
  for i in "${!MEMBERS[@]}"; do
    member_kubeconfig "${MEMBERS[$i]}" >"$file"
    apply_secret "${MEMBER_NAMES[$i]}-kubeconfig" --from-file=kubeconfig="$file"
  done

  log "management: Lifeline (deploy/overlays/single with image $IMAGE)"
  existed=false
  if kubectl --context "$context" -n "$NAMESPACE" get deployment/lifeline >/dev/null 2>&1; then
    existed=true
  fi
  kubectl --context "$context" apply -k "$KIND_DIR/manifests/management"
  if $existed; then
    # Same tag, new image: restart so a re-run deploys what was just built.
    kubectl --context "$context" -n "$NAMESPACE" rollout restart deployment/lifeline
  fi
  kubectl --context "$context" wait --for condition=established --timeout=60s \
    crd/failoverpolicies.lifeline.dev crd/memberclusters.lifeline.dev
  kubectl --context "$context" apply -f "$KIND_DIR/manifests/management/lifeline-demo.yaml"
  kubectl --context "$context" -n "$NAMESPACE" rollout status deployment/lifeline --timeout=180s
}

main() {
  require kind kubectl docker base64 awk
  require_docker_daemon
  create_clusters
  start_load_balancer_provider
  build_image
  install_members
  install_management
  log "ready: run deploy/kind/e2e.sh (and deploy/kind/down.sh to delete everything)"
}

main "$@"

#!/usr/bin/env bash
# Creates a management cluster (one control-plane node, three workers) and two member
# clusters (one control-plane node, one worker each), an etcd for Lifeline's store
# beside them, installs Lifeline in the management cluster from deploy/ (the `ha`
# overlay: three replicas on etcd) and the hello workload in each member, and registers
# the members with their real RBAC. Safe to re-run: what exists is reused and the
# manifests re-applied. Undo with down.sh.
#
# What a registry-less machine lacks is chosen by detection, each with a message:
#   - the container engine: engine.sh starts one where none answers;
#   - the node image: kindest/node at the pinned Kubernetes version, else one built
#     here (node-image.sh);
#   - pod networking: kind's own where the node image has it, else routes between the
#     nodes' pod subnets and a ptp CNI configuration written here;
#   - LoadBalancer addresses: cloud-provider-kind where it can be pulled, else
#     addresses from the top of the kind network, routed by the host and every node to
#     a worker of the Service's cluster, where kube-proxy takes them.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Eight nodes' kubelets and containerds watch many files: the kernel's default of 128
# inotify instances per user stops the later ones starting ("kubelet is not healthy").
# Raised as kind's documentation advises; down.sh puts back what it found.
raise_inotify_limits() {
  local key want current
  for key in fs.inotify.max_user_instances:512 fs.inotify.max_user_watches:524288; do
    want=${key#*:}
    key=${key%%:*}
    current=$(sysctl -n "$key")
    if ((current < want)) && ((EUID != 0)); then
      log "warning: $key is $current; kind advises $want (sysctl -w $key=$want as root)"
    elif ((current < want)); then
      mkdir -p "$STATE_DIR/sysctl"
      [[ -f $STATE_DIR/sysctl/$key ]] || echo "$current" >"$STATE_DIR/sysctl/$key"
      sysctl -qw "$key=$want"
      log "$key raised from $current to $want"
    fi
  done
}

choose_node_image() {
  local published
  published="kindest/node:$(kubernetes_version)"
  if [[ -n ${KIND_NODE_IMAGE:-} ]]; then
    NODE_IMAGE=$KIND_NODE_IMAGE
  elif docker image inspect "$published" >/dev/null 2>&1 || timeout 120 docker pull -q "$published" >/dev/null 2>&1; then
    NODE_IMAGE=$published
  else
    log "$published cannot be pulled: building a node image here"
    NODE_IMAGE=$(bash "$KIND_DIR/node-image.sh")
  fi
  # kind installs its own CNI from this manifest; a node built here has none.
  if docker run --rm --entrypoint cat "$NODE_IMAGE" /kind/manifests/default-cni.yaml >/dev/null 2>&1; then
    OWN_CNI=false
  else
    OWN_CNI=true
  fi
  log "node image $NODE_IMAGE (pod network: $([[ $OWN_CNI == true ]] && echo 'routes and ptp from up.sh' || echo "kind's"))"
}

# The kind network, created here (when absent) with an explicit subnet so that etcd
# and the load-balancer addresses can have fixed addresses above what docker assigns.
ensure_network() {
  if ! docker network inspect kind >/dev/null 2>&1; then
    log "creating the kind network $KIND_SUBNET"
    docker network create -d bridge --subnet "$KIND_SUBNET" --ip-range "$KIND_IP_RANGE" \
      -o com.docker.network.bridge.enable_ip_masquerade=true kind >/dev/null
  fi
}

cluster_config() {
  local cluster=$1 workers=$2 index=$3 i
  cat <<CONFIG
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  podSubnet: 10.$((20 + index)).0.0/16
  disableDefaultCNI: $OWN_CNI
nodes:
  - role: control-plane
    image: $NODE_IMAGE
CONFIG
  for ((i = 0; i < workers; i++)); do
    printf '  - role: worker\n    image: %s\n' "$NODE_IMAGE"
  done
  # Kubernetes >= 1.35 refuses cgroup v1 hosts unless told otherwise.
  cat <<CONFIG
kubeadmConfigPatches:
  - |
    kind: KubeletConfiguration
    failCgroupV1: false
CONFIG
  if [[ $OWN_CNI == true ]]; then
    # The node built here carries etcd at the version tests/control-plane pins.
    cat <<CONFIG
  - |
    kind: ClusterConfiguration
    etcd:
      local:
        imageTag: "$ETCD_TAG"
CONFIG
  fi
  if [[ $cluster != "$MANAGEMENT" ]]; then
    # Members' API servers get a small budget of requests in flight, as a busy
    # production API server has relative to its load, so that e2e.sh's telemetry storm
    # saturates it on a two-core machine.
    cat <<CONFIG
  - |
    kind: ClusterConfiguration
    apiServer:
      extraArgs:
        max-requests-inflight: "$MEMBER_MAX_INFLIGHT"
        max-mutating-requests-inflight: "$((MEMBER_MAX_INFLIGHT / 2))"
CONFIG
  fi
}

create_clusters() {
  local existing name index=0 workers config
  existing=$(kind get clusters 2>/dev/null || true)
  mkdir -p "$STATE_DIR"
  for name in "$MANAGEMENT" "${MEMBERS[@]}"; do
    index=$((index + 1))
    if grep -qx "$name" <<<"$existing"; then
      log "cluster $name exists"
      continue
    fi
    workers=1
    [[ $name == "$MANAGEMENT" ]] && workers=3
    config=$STATE_DIR/$name.kind.yaml
    cluster_config "$name" "$workers" "$index" >"$config"
    log "creating cluster $name (1 control-plane node, $workers worker(s))"
    kind create cluster --name "$name" --config "$config"
  done
}

# Pod networking between the nodes of one cluster: each node's pod subnet is routed to
# that node from every other node, and each node's pods get addresses from its own
# subnet (ptp + host-local). Traffic leaving a pod's subnet is masqueraded.
install_pod_network() {
  local cluster=$1 context node cidr other
  context=$(ctx "$cluster")
  declare -A cidrs=()
  wait_until 120 "pod subnets for every node of $cluster" all_nodes_have_cidr "$context"
  while read -r node cidr; do
    cidrs[$node]=$cidr
  done < <(kubectl --context "$context" get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR}{"\n"}{end}')
  for node in "${!cidrs[@]}"; do
    docker exec -i "$node" sh -c 'mkdir -p /etc/cni/net.d && cat >/etc/cni/net.d/10-lifeline.conflist' <<CNI
{
  "cniVersion": "0.4.0",
  "name": "lifeline-kind",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "${cidrs[$node]}"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
    for other in "${!cidrs[@]}"; do
      [[ $other == "$node" ]] && continue
      docker exec "$node" ip route replace "${cidrs[$other]}" via "$(node_ip "$other")"
    done
  done
}

all_nodes_have_cidr() {
  ! kubectl --context "$1" get nodes -o jsonpath='{range .items[*]}{.spec.podCIDR}{"\n"}{end}' | grep -qx ''
}

wait_for_nodes() {
  local cluster
  for cluster in "$MANAGEMENT" "${MEMBERS[@]}"; do
    kubectl --context "$(ctx "$cluster")" wait --for=condition=Ready nodes --all --timeout=300s >/dev/null
    kubectl --context "$(ctx "$cluster")" -n kube-system rollout status deployment/coredns --timeout=300s >/dev/null
  done
  log "every node is Ready and CoreDNS runs in every cluster"
}

# --- etcd: Lifeline's store, a container on the kind network beside the clusters, so
# --- that no cluster's control plane is on its path. TLS both ways, and users.

etcd_certificates() {
  local dir=$STATE_DIR/etcd
  [[ -f $dir/client.pem ]] && return
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj /CN=lifeline-kind-etcd-ca -keyout ca-key.pem -out ca.pem 2>/dev/null
    issue() {
      local name=$1 cn=$2 ext=$3
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$cn" \
        -keyout "$name-key.pem" -out "$name.csr" 2>/dev/null
      openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
        -extfile <(printf '%s\n' "$ext") -out "$name.pem" 2>/dev/null
      rm -f "$name.csr"
    }
    issue server lifeline-etcd "basicConstraints=CA:FALSE
subjectAltName=DNS:lifeline-etcd,DNS:etcd-0.etcd,DNS:etcd-1.etcd,DNS:etcd-2.etcd,IP:$ETCD_ADDRESS,IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth"
    issue root root "basicConstraints=CA:FALSE
extendedKeyUsage=clientAuth"
    issue client lifeline "basicConstraints=CA:FALSE
extendedKeyUsage=clientAuth"
    head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >password
    chmod 0644 ./*.pem
  )
}

etcdctl_root() {
  local dir=$STATE_DIR/etcd
  etcdctl --endpoints "https://$ETCD_ADDRESS:2379" --cacert "$dir/ca.pem" --cert "$dir/root.pem" \
    --key "$dir/root-key.pem" --dial-timeout 3s "$@"
}

start_etcd() {
  # etcdctl sets up etcd's users, at the etcd version the node image carries.
  bash "$REPO_ROOT/tests/control-plane/build.sh" etcdctl >&2
  etcd_certificates
  if [[ -z $(docker ps -q --filter "name=^${ETCD_CONTAINER}$") ]]; then
    docker rm -f "$ETCD_CONTAINER" >/dev/null 2>&1 || true
    log "starting etcd ($ETCD_IMAGE) at $ETCD_ADDRESS"
    docker run -d --name "$ETCD_CONTAINER" --network kind --ip "$ETCD_ADDRESS" --restart unless-stopped \
      -v "$STATE_DIR/etcd:/certs:ro" --tmpfs /var/lib/etcd "$ETCD_IMAGE" \
      --name lifeline-etcd --data-dir /var/lib/etcd \
      --listen-client-urls https://0.0.0.0:2379 --advertise-client-urls "https://$ETCD_ADDRESS:2379" \
      --cert-file /certs/server.pem --key-file /certs/server-key.pem \
      --trusted-ca-file /certs/ca.pem --client-cert-auth >/dev/null
  fi
  wait_until 60 "etcd at $ETCD_ADDRESS" etcdctl_root endpoint health
  if ! etcdctl_root auth status 2>/dev/null | grep -q 'Authentication Status: true'; then
    log "etcd: users root and lifeline (read-write under /lifeline), authentication on"
    etcdctl_root user add root --new-user-password "$(head -c 24 /dev/urandom | base64)" >/dev/null
    etcdctl_root user grant-role root root >/dev/null
    etcdctl_root role add lifeline >/dev/null
    etcdctl_root role grant-permission lifeline --prefix=true readwrite /lifeline >/dev/null
    etcdctl_root user add lifeline --new-user-password "$(cat "$STATE_DIR/etcd/password")" >/dev/null
    etcdctl_root user grant-role lifeline lifeline >/dev/null
    etcdctl_root auth enable >/dev/null
  fi
}

# apply_rolling CONTEXT NAMESPACE DEPLOYMENT < MANIFESTS: applies them; a Deployment
# that was already there is restarted, so that a re-run serves the image just built
# under the same tag (a new one starts with it anyway).
apply_rolling() {
  local context=$1 namespace=$2 deployment=$3 existed=false
  kubectl --context "$context" -n "$namespace" get deployment "$deployment" >/dev/null 2>&1 && existed=true
  kubectl --context "$context" apply -f - >/dev/null
  if $existed; then
    kubectl --context "$context" -n "$namespace" rollout restart deployment "$deployment" >/dev/null
  fi
}

# --- members

# The member's read-only ServiceAccount token, once the token controller has filled it in.
member_token() {
  kubectl --context "$(ctx "$1")" -n "$NAMESPACE" get secret lifeline-member-reader-token \
    -o jsonpath='{.data.token}' | base64 -d
}
has_token() { [[ -n $(member_token "$1") ]]; }

# A kubeconfig for Lifeline inside the management cluster: the member's API server at
# its address on the kind network, authenticated as lifeline-member-reader.
member_kubeconfig() {
  local cluster=$1 internal server ca token
  internal=$(kind get kubeconfig --internal --name "$cluster")
  # The address, not the container's name: pods resolve names through cluster DNS,
  # which knows nothing of docker's.
  server="https://$(node_ip "$(control_plane_node "$cluster")"):6443"
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
    load_image "$HELLO_IMAGE" "$cluster"
    log "member $cluster: RBAC, reader token, hello"
    kubectl --context "$context" apply -f "$REPO_ROOT/deploy/rbac/member-cluster.yaml" >/dev/null
    kubectl --context "$context" apply -f "$KIND_DIR/manifests/member/reader-token.yaml" >/dev/null
    apply_rolling "$context" demo hello \
      < <(sed "s/@CLUSTER@/$cluster/" "$KIND_DIR/manifests/member/hello.yaml")
  done
  for cluster in "${MEMBERS[@]}"; do
    context=$(ctx "$cluster")
    kubectl --context "$context" -n demo rollout status deployment/hello --timeout=180s >/dev/null
    wait_until 60 "the reader token in $cluster" has_token "$cluster"
  done
}

# --- load balancers

# route_everywhere ADDRESS NODE: the host and every node send ADDRESS to NODE.
route_everywhere() {
  local address=$1 via node
  via=$(node_ip "$2")
  ip route replace "$address/32" via "$via"
  for node in $(all_nodes); do
    [[ $node == "$2" ]] && continue
    docker exec "$node" ip route replace "$address/32" via "$via"
  done
}

# assign CLUSTER NAMESPACE SERVICE ADDRESS: the Service's load-balancer address, and
# routes to the cluster's first worker, whose kube-proxy forwards it to the endpoints.
assign() {
  local cluster=$1 namespace=$2 service=$3 address=$4 worker
  worker=$(worker_nodes "$cluster" | head -1)
  kubectl --context "$(ctx "$cluster")" -n "$namespace" patch service "$service" --subresource=status --type=merge \
    -p "{\"status\":{\"loadBalancer\":{\"ingress\":[{\"ip\":\"$address\",\"ipMode\":\"VIP\"}]}}}" >/dev/null
  route_everywhere "$address" "$worker"
  log "load balancer: $cluster $namespace/$service at $address (via $worker)"
}

start_cloud_provider_kind() {
  if [[ -n $(docker ps -q --filter "name=^${CLOUD_PROVIDER_KIND_CONTAINER}$") ]]; then
    return 0
  fi
  docker rm -f "$CLOUD_PROVIDER_KIND_CONTAINER" >/dev/null 2>&1 || true
  log "starting cloud-provider-kind ($CLOUD_PROVIDER_KIND_IMAGE)"
  docker run -d --name "$CLOUD_PROVIDER_KIND_CONTAINER" --network kind \
    -v /var/run/docker.sock:/var/run/docker.sock "$CLOUD_PROVIDER_KIND_IMAGE" >/dev/null
}

has_lb() { [[ -n $(lb_address_of "$@") ]]; }

load_balancers() {
  local i
  if docker image inspect "$CLOUD_PROVIDER_KIND_IMAGE" >/dev/null 2>&1 \
    || timeout 120 docker pull -q "$CLOUD_PROVIDER_KIND_IMAGE" >/dev/null 2>&1; then
    start_cloud_provider_kind
  else
    log "$CLOUD_PROVIDER_KIND_IMAGE cannot be pulled: load-balancer addresses from $LB_PREFIX.0/24"
    for i in "${!MEMBERS[@]}"; do
      assign "${MEMBERS[$i]}" demo hello "$LB_PREFIX.$((11 + i))"
    done
    assign "$MANAGEMENT" "$NAMESPACE" lifeline-dns "$LB_PREFIX.10"
  fi
  for i in "${!MEMBERS[@]}"; do
    wait_until 120 "a load-balancer address for hello in ${MEMBERS[$i]}" has_lb "${MEMBERS[$i]}" demo hello
  done
  wait_until 120 "a load-balancer address for lifeline-dns" has_lb "$MANAGEMENT" "$NAMESPACE" lifeline-dns
}

# Each member's CoreDNS forwards the global zone to Lifeline's load-balancer address
# (deploy/coredns/Corefile.global), so its pods resolve global names as usual.
forward_member_coredns() {
  local cluster context corefile dns
  dns=$(lb_address_of "$MANAGEMENT" "$NAMESPACE" lifeline-dns)
  corefile=$(mktemp)
  for cluster in "${MEMBERS[@]}"; do
    context=$(ctx "$cluster")
    kubectl --context "$context" -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}' >"$corefile"
    if ! grep -q "^global.example.com:53" "$corefile"; then
      sed "s/LIFELINE_DNS_IP/$dns/" "$REPO_ROOT/deploy/coredns/Corefile.global" >>"$corefile"
      kubectl --context "$context" -n kube-system create configmap coredns --from-file=Corefile="$corefile" \
        --dry-run=client -o yaml | kubectl --context "$context" apply -f - >/dev/null
      kubectl --context "$context" -n kube-system rollout restart deployment/coredns >/dev/null
      log "member $cluster: CoreDNS forwards global.example.com to $dns"
    fi
    kubectl --context "$context" -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
  done
  rm -f "$corefile"
}

# --- management

apply_secret() {
  kubectl --context "$(ctx "$MANAGEMENT")" -n "$NAMESPACE" create secret generic "$@" \
    --dry-run=client -o yaml | kubectl --context "$(ctx "$MANAGEMENT")" apply -f - >/dev/null
}

install_management() {
  local context i file etcd=$STATE_DIR/etcd
  context=$(ctx "$MANAGEMENT")
  load_image "$IMAGE" "$MANAGEMENT"
  log "management: namespace and secrets (admin token, credential key, etcd, member kubeconfigs)"
  kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl --context "$context" apply -f - >/dev/null
  if ! kubectl --context "$context" -n "$NAMESPACE" get secret lifeline-admin-token >/dev/null 2>&1; then
    apply_secret lifeline-admin-token --from-literal=token="$(head -c 32 /dev/urandom | base64)"
  fi
  if ! kubectl --context "$context" -n "$NAMESPACE" get secret lifeline-credential-key >/dev/null 2>&1; then
    apply_secret lifeline-credential-key --from-literal=key="$(head -c 32 /dev/urandom | base64)"
  fi
  apply_secret lifeline-etcd-client --from-file=ca.pem="$etcd/ca.pem" \
    --from-file=client.pem="$etcd/client.pem" --from-file=client-key.pem="$etcd/client-key.pem"
  apply_secret lifeline-etcd-auth --from-file=password="$etcd/password"
  file=$(mktemp)
  for i in "${!MEMBERS[@]}"; do
    member_kubeconfig "${MEMBERS[$i]}" >"$file"
    apply_secret "${MEMBER_NAMES[$i]}-kubeconfig" --from-file=kubeconfig="$file"
  done
  rm -f "$file"

  log "management: Lifeline (deploy/overlays/ha, image $IMAGE, etcd at $ETCD_ADDRESS)"
  apply_rolling "$context" "$NAMESPACE" lifeline \
    < <(kubectl kustomize "$KIND_DIR/manifests/management" | sed "s/@ETCD_ADDRESS@/$ETCD_ADDRESS/g")
  kubectl --context "$context" wait --for condition=established --timeout=60s \
    crd/failoverpolicies.lifeline.dev crd/memberclusters.lifeline.dev >/dev/null
  kubectl --context "$context" apply -f "$KIND_DIR/manifests/management/lifeline-demo.yaml" >/dev/null
  kubectl --context "$context" -n "$NAMESPACE" rollout status deployment/lifeline --timeout=300s >/dev/null
}

main() {
  require docker kubectl base64 awk openssl jq go
  local started=$SECONDS
  bash "$KIND_DIR/engine.sh" start
  ensure_kind
  raise_inotify_limits
  choose_node_image
  ensure_network
  network_addresses
  create_clusters
  if [[ $OWN_CNI == true ]]; then
    local cluster
    for cluster in "$MANAGEMENT" "${MEMBERS[@]}"; do install_pod_network "$cluster"; done
  fi
  wait_for_nodes
  bash "$KIND_DIR/images.sh"
  start_etcd
  install_members
  install_management
  load_balancers
  forward_member_coredns
  log "ready in $((SECONDS - started)) s: run deploy/kind/e2e.sh (and deploy/kind/down.sh to delete everything)"
}

main "$@"

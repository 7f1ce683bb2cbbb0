#!/usr/bin/env bash
# The end-to-end checks on the clusters up.sh made, each printing its figures:
#   1. policies and members Ready; hello.global.example.com answers member-a's address
#      from the host (the load-balancer address of Lifeline's DNS) and from a pod in
#      each member (through its CoreDNS);
#   2. member-a's workload scaled to zero: answers move to member-b; scaled back: they
#      return after the hold-down;
#   3. the incident: member-a's control-plane node paused while its worker serves:
#      answers stay; then its worker paused too: answers move, decided from the data
#      plane alone;
#   4. the management cluster's control plane paused: every Lifeline replica keeps
#      answering, and a drain written straight to etcd (lifeline ctl --etcd) moves
#      traffic;
#   5. a replica's controller container killed (SIGKILL, as the OOM killer does) and a
#      replica deleted: answers never stop on the others, nor on the killed
#      container's own pod, whose DNS runs in a container of its own;
#   6. the telemetry storm: pods in member-a list every ConfigMap in a loop, first
#      without Lifeline's FlowSchema, then with it; Lifeline's reader lists member-a's
#      EndpointSlices meanwhile, and DNS answers throughout. With the FlowSchema none of
#      the reader's lists may be refused.
# Every wait is bounded; whatever fails, paused nodes are resumed and the drain cleared.
# The last line says PASS or FAIL.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PAUSED=()
DRAINED=false
LIFELINE=$STATE_DIR/bin/lifeline
MGMT=$(ctx "$MANAGEMENT")

cleanup() {
  local node
  for node in "${PAUSED[@]}"; do docker unpause "$node" >/dev/null 2>&1 || true; done
  if $DRAINED; then ctl_etcd clear member-a >/dev/null 2>&1 || true; fi
}

fail() {
  printf 'FAIL: %s\n' "$*"
  cleanup
  PAUSED=()
  DRAINED=false
  log "diagnostics"
  kubectl --context "$MGMT" -n "$NAMESPACE" get failoverpolicies,memberclusters,pods -o wide >&2 || true
  kubectl --context "$MGMT" -n "$NAMESPACE" logs deployment/lifeline --all-containers --prefix --tail=40 >&2 || true
  exit 1
}

pause_node() {
  docker pause "$1" >/dev/null
  PAUSED+=("$1")
}
unpause_all() {
  local node
  for node in "${PAUSED[@]}"; do docker unpause "$node" >/dev/null; done
  PAUSED=()
}

# answer SERVER PORT: the A records served for the global name, sorted, space-separated.
# query SERVER PORT: dig's output for the global name's A records. dig asks again
# after a second without a reply, as a stub resolver does, and says so in a ";;" line.
query() {
  dig @"$1" -p "$2" +short +time=1 +tries=2 "$GLOBAL_NAME" A 2>&1 || true
}
# The addresses in a query's output, sorted, space-separated; empty without a reply.
addresses() { grep -v '^;;' <<<"$1" | sort | paste -sd' ' -; }
answer() { addresses "$(query "$1" "$2")"; }

# expect_answer SECONDS WANT STEP: waits until the load-balanced DNS answers exactly
# WANT; prints the time it took.
expect_answer() {
  local seconds=$1 want=$2 step=$3 start got
  start=$SECONDS
  while ((SECONDS - start < seconds)); do
    got=$(answer "$DNS" 53)
    if [[ $got == "$want" ]]; then
      printf 'ok   %-58s %s after %ds\n' "$step" "$want" $((SECONDS - start))
      return 0
    fi
    sleep 0.5
  done
  fail "$step: expected $want within ${seconds}s, last answer was '${got:-<none>}'"
}

# hold_answer SECONDS WANT STEP SERVER:PORT...: queries every server every 0.5 s for
# SECONDS; every query must be answered WANT, within dig's one retry. Prints how many
# were, and how many needed the retry (the first datagram went unanswered).
hold_answer() {
  local seconds=$1 want=$2 step=$3 start raw got server queries=0 bad=0 retried=0
  shift 3
  start=$SECONDS
  while ((SECONDS - start < seconds)); do
    for server in "$@"; do
      raw=$(query "${server%:*}" "${server##*:}")
      got=$(addresses "$raw")
      queries=$((queries + 1))
      [[ $raw != *"timed out"* ]] || retried=$((retried + 1))
      if [[ $got != "$want" ]]; then
        bad=$((bad + 1))
        printf '     %s answered %s\n' "$server" "'${got:-<none>}'"
      fi
    done
    sleep 0.5
  done
  ((bad == 0)) || fail "$step: $bad of $queries queries were not answered $want"
  printf 'ok   %-58s %d/%d queries answered %s (%d after a retry)\n' "$step" "$queries" "$queries" "$want" "$retried"
}

ctl_etcd() {
  local etcd=$STATE_DIR/etcd
  USER=kind-e2e LIFELINE_ETCD_PASSWORD=$(cat "$etcd/password") "$LIFELINE" ctl --etcd "https://$ETCD_ADDRESS:2379" \
    --etcd-ca "$etcd/ca.pem" --etcd-cert "$etcd/client.pem" --etcd-key "$etcd/client-key.pem" \
    --etcd-user lifeline "$@"
}

# The lifeline binary of the image, for ctl from the host.
extract_lifeline() {
  local container
  container=$(docker create "$IMAGE")
  mkdir -p "$STATE_DIR/bin"
  docker cp "$container:/lifeline" "$LIFELINE" >/dev/null
  docker rm "$container" >/dev/null
}

check_ready() {
  local ready
  kubectl --context "$MGMT" -n "$NAMESPACE" wait --for=condition=Ready failoverpolicy/hello --timeout=180s >/dev/null \
    || fail "the hello policy is not Ready"
  kubectl --context "$MGMT" -n "$NAMESPACE" get failoverpolicies,memberclusters
  ready=$(kubectl --context "$MGMT" -n "$NAMESPACE" get deployment lifeline -o jsonpath='{.status.readyReplicas}')
  printf 'ok   %-58s %s of 3\n' "Lifeline replicas ready" "${ready:-0}"
  [[ ${ready:-0} == 3 ]] || fail "Lifeline has ${ready:-0} ready replicas, not 3"
}

# Each member's pods resolve the global name through their CoreDNS.
check_member_pods() {
  local cluster got i
  for cluster in "${MEMBERS[@]}"; do
    for ((i = 0; i < 60; i++)); do
      got=$(kubectl --context "$(ctx "$cluster")" -n demo exec deployment/hello -- \
        hello -resolve "$GLOBAL_NAME." 2>/dev/null | paste -sd' ' -) || true
      [[ $got == "$A" ]] && break
      sleep 2
    done
    [[ $got == "$A" ]] || fail "a pod in $cluster resolved '${got:-<nothing>}', not $A"
    printf 'ok   %-58s %s after %ds\n' "a pod in $cluster resolves through CoreDNS" "$got" $((i * 2))
  done
}

scale_hello() {
  kubectl --context "$(ctx "$1")" -n demo scale deployment/hello --replicas="$2" >/dev/null
}

# The pod addresses of Lifeline's replicas, as SERVER:5353 words, and a host route to
# each replica's node so the host reaches them directly.
replica_servers() {
  local ip node
  while read -r _ ip node; do
    ip route replace "$ip/32" via "$(node_ip "$node")"
    printf '%s:5353 ' "$ip"
  done < <(kubectl --context "$MGMT" -n "$NAMESPACE" get pods -l app.kubernetes.io/component=controller \
    -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName}{"\n"}{end}')
}

# --- the telemetry storm

STORM_SECONDS=${STORM_SECONDS:-30}

# reader_lists CLUSTER SECONDS OUT: LISTs member EndpointSlices once a second as
# Lifeline's reader (its token, its FlowSchema when present), one "code seconds" line
# per request into OUT.
reader_lists() {
  local cluster=$1 seconds=$2 out=$3 server token ca start
  server="https://$(node_ip "$(control_plane_node "$cluster")"):6443"
  token=$(kubectl --context "$(ctx "$cluster")" -n "$NAMESPACE" get secret lifeline-member-reader-token \
    -o jsonpath='{.data.token}' | base64 -d)
  ca=$(mktemp)
  kubectl config view --raw -o jsonpath="{.clusters[?(@.name==\"$(ctx "$cluster")\")].cluster.certificate-authority-data}" \
    | base64 -d >"$ca"
  start=$SECONDS
  while ((SECONDS - start < seconds)); do
    curl -s -o /dev/null --max-time 20 --cacert "$ca" -H "Authorization: Bearer $token" \
      -w '%{http_code} %{time_total}\n' "$server/apis/discovery.k8s.io/v1/endpointslices?limit=500" >>"$out" || true
    sleep 1
  done
  rm -f "$ca"
}

# storm_round LABEL: one storm in member-a; prints the storm's totals, the reader's
# lists and the DNS answers during it. Sets READER_REFUSED.
storm_round() {
  local label=$1 context reader pid totals ok median max
  context=$(ctx "${MEMBERS[0]}")
  kubectl --context "$context" -n telemetry delete job storm --ignore-not-found --wait=true >/dev/null
  sed "s/@SECONDS@/$STORM_SECONDS/" "$KIND_DIR/manifests/member/storm.yaml" | kubectl --context "$context" apply -f - >/dev/null
  reader=$(mktemp)
  reader_lists "${MEMBERS[0]}" "$STORM_SECONDS" "$reader" &
  pid=$!
  hold_answer "$STORM_SECONDS" "$A" "storm $label: DNS answers" "$DNS:53"
  wait "$pid"
  kubectl --context "$context" -n telemetry wait --for=condition=Complete job/storm --timeout=120s >/dev/null \
    || fail "the storm job did not complete"
  totals=$(kubectl --context "$context" -n telemetry logs -l job-name=storm --tail=-1 2>/dev/null \
    | awk -F'[ =]' '/storm: ok=/ {for (i = 1; i <= NF; i++) if ($i == "ok" || $i == "throttled" || $i == "failed") t[$i] += $(i + 1)}
      END {printf "%d ok, %d throttled, %d failed", t["ok"], t["throttled"], t["failed"]}')
  ok=$(awk '$1 == 200' "$reader" | wc -l)
  READER_REFUSED=$(awk '$1 != 200' "$reader" | wc -l)
  median=$(awk '{print $2}' "$reader" | sort -n | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "-"}')
  max=$(awk '{print $2}' "$reader" | sort -n | tail -1)
  printf 'ok   %-58s storm LISTs %s\n' "storm $label: the telemetry pods" "$totals"
  printf 'ok   %-58s %d ok, %d refused or failed; median %s s, max %s s\n' \
    "storm $label: Lifeline's reader lists" "$ok" "$READER_REFUSED" "$median" "${max:--}"
  rm -f "$reader"
}

storm() {
  local context
  context=$(ctx "${MEMBERS[0]}")
  kubectl --context "$context" create namespace telemetry --dry-run=client -o yaml | kubectl --context "$context" apply -f - >/dev/null
  # What the telemetry agent lists: 200 ConfigMaps of 16 KiB.
  if [[ $(kubectl --context "$context" -n telemetry get configmaps -o name | grep -c '/bulk-') -lt 200 ]]; then
    local i payload
    payload=$(head -c 12288 /dev/urandom | base64 -w0)
    for ((i = 0; i < 200; i++)); do
      printf -- '---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: bulk-%d, namespace: telemetry}\ndata: {payload: "%s"}\n' "$i" "$payload"
    done | kubectl --context "$context" apply -f - >/dev/null
  fi
  kubectl --context "$context" delete flowschema lifeline --ignore-not-found >/dev/null
  printf '...  member-a API server: --max-requests-inflight=%d; FlowSchema lifeline removed\n' "$MEMBER_MAX_INFLIGHT"
  storm_round "without FlowSchema"
  kubectl --context "$context" apply -f "$REPO_ROOT/deploy/rbac/member-cluster.yaml" >/dev/null
  printf '...  FlowSchema lifeline applied\n'
  storm_round "with FlowSchema"
  ((READER_REFUSED == 0)) || fail "with its FlowSchema, $READER_REFUSED of Lifeline's reader lists were refused"
  kubectl --context "$context" -n telemetry delete job storm --ignore-not-found >/dev/null
}

main() {
  require kubectl dig sort paste docker curl
  trap cleanup EXIT
  network_addresses
  A=$(lb_address_of "${MEMBERS[0]}" demo hello)
  B=$(lb_address_of "${MEMBERS[1]}" demo hello)
  DNS=$(lb_address_of "$MANAGEMENT" "$NAMESPACE" lifeline-dns)
  [[ -n $A && -n $B && -n $DNS ]] || fail "load-balancer addresses missing (run up.sh first)"
  printf 'member-a hello at %s, member-b hello at %s, Lifeline DNS at %s\n' "$A" "$B" "$DNS"
  extract_lifeline

  # 1. Steady state.
  check_ready
  expect_answer 120 "$A" "steady: the host's query answers member-a"
  check_member_pods

  # 2. Failover and paced failback. The policy: probes every 2 s, down after 2 failures,
  # up after 2 successes, then a 10 s hold-down and a 10 s ramp.
  scale_hello "${MEMBERS[0]}" 0
  expect_answer 60 "$B" "member-a scaled to zero: member-b serves"
  scale_hello "${MEMBERS[0]}" 1
  kubectl --context "$(ctx "${MEMBERS[0]}")" -n demo rollout status deployment/hello --timeout=120s >/dev/null
  expect_answer 120 "$A" "member-a back: member-a serves again (hold-down 10 s)"

  # 3. The incident: member-a's API server is gone, its workload is not.
  local cp_a worker_a
  cp_a=$(control_plane_node "${MEMBERS[0]}")
  worker_a=$(worker_nodes "${MEMBERS[0]}" | head -1)
  pause_node "$cp_a"
  printf '...  %s paused (member-a has no API server)\n' "$cp_a"
  hold_answer 20 "$A" "member-a's API dark, its worker serving: no move" "$DNS:53"
  pause_node "$worker_a"
  printf '...  %s paused too (member-a serves nothing)\n' "$worker_a"
  expect_answer 60 "$B" "member-a's data plane gone: member-b serves"
  unpause_all
  expect_answer 180 "$A" "member-a resumed: member-a serves again"

  # 4. The management cluster's control plane is gone.
  local servers cp_m
  read -r -a servers <<<"$(replica_servers)"
  ((${#servers[@]} == 3)) || fail "expected 3 Lifeline replicas, found ${#servers[@]}"
  cp_m=$(control_plane_node "$MANAGEMENT")
  pause_node "$cp_m"
  printf '...  %s paused (the management API is gone)\n' "$cp_m"
  hold_answer 15 "$A" "management API dark: every replica answers" "${servers[@]}" "$DNS:53"
  ctl_etcd drain member-a --for 10m --author kind-e2e --reason "kind e2e: drain with the management API down" 2>/dev/null \
    || fail "lifeline ctl --etcd drain failed"
  DRAINED=true
  printf '...  member-a drained through lifeline ctl --etcd\n'
  expect_answer 60 "$B" "drain written to etcd: member-b serves"
  ctl_etcd clear member-a 2>/dev/null || fail "lifeline ctl --etcd clear failed"
  DRAINED=false
  expect_answer 60 "$A" "drain cleared: member-a serves again"
  unpause_all
  kubectl --context "$MGMT" wait --for=condition=Ready nodes --all --timeout=180s >/dev/null

  # 5. A replica's controller container killed, then a replica deleted.
  local victim victim_node victim_ip others s
  read -r victim victim_node victim_ip < <(kubectl --context "$MGMT" -n "$NAMESPACE" get pods \
    -l app.kubernetes.io/component=controller \
    -o jsonpath='{.items[0].metadata.name} {.items[0].spec.nodeName} {.items[0].status.podIP}{"\n"}')
  docker exec "$victim_node" pkill -KILL -f 'lifeline run' || fail "no controller process on $victim_node"
  printf '...  the controller container of %s killed with SIGKILL\n' "$victim"
  hold_answer 15 "$A" "a controller killed: every replica, its own pod too, answers" "${servers[@]}" "$DNS:53"
  kubectl --context "$MGMT" -n "$NAMESPACE" delete pod "$victim" --wait=false >/dev/null
  printf '...  pod %s deleted\n' "$victim"
  others=()
  for s in "${servers[@]}"; do [[ ${s%:*} == "$victim_ip" ]] || others+=("$s"); done
  hold_answer 15 "$A" "a replica deleted: the others answer" "${others[@]}" "$DNS:53"
  kubectl --context "$MGMT" -n "$NAMESPACE" rollout status deployment/lifeline --timeout=180s >/dev/null

  # 6. The telemetry storm.
  storm
  printf 'PASS: %s on kind: failover, failback, the incident, a dark management API, a killed controller, a storm\n' "$GLOBAL_NAME"
}

main "$@"

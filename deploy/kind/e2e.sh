#!/usr/bin/env bash
# The failover smoke test on the clusters up.sh made: hello.global.example.com answers
# member-a's address; with member-a's workload scaled to zero it moves to member-b;
# scaled back, it returns to member-a after the hold-down and ramp. Every wait is
# bounded; the last line says PASS or FAIL.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LOCAL_PORT=${LOCAL_PORT:-15353}
FORWARD_PID=

cleanup() {
  if [[ -n $FORWARD_PID ]]; then
    kill "$FORWARD_PID" 2>/dev/null || true
  fi
}

fail() {
  printf 'FAIL: %s\n' "$*"
  log "diagnostics"
  kubectl --context "$(ctx "$MANAGEMENT")" -n "$NAMESPACE" get failoverpolicies,memberclusters -o wide >&2 || true
  kubectl --context "$(ctx "$MANAGEMENT")" -n "$NAMESPACE" logs deployment/lifeline --all-containers --prefix --tail=40 >&2 || true
  exit 1
}

# Lifeline's DNS through a port-forward to the pod's TCP listener (port-forward carries
# TCP only, hence dig +tcp). The pod, not the Service: the Service has UDP and TCP
# ports both numbered 53.
forward_dns() {
  kubectl --context "$(ctx "$MANAGEMENT")" -n "$NAMESPACE" port-forward deployment/lifeline \
    "$LOCAL_PORT:5353" >/dev/null 2>&1 &
  FORWARD_PID=$!
  local i
  for ((i = 0; i < 15; i++)); do
    if dig @127.0.0.1 -p "$LOCAL_PORT" +tcp +time=1 +tries=1 "$GLOBAL_NAME" >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  fail "no DNS answer through the port-forward on 127.0.0.1:$LOCAL_PORT"
}

# The A records served for the global name, sorted, space-separated.
answer() {
  dig @127.0.0.1 -p "$LOCAL_PORT" +tcp +short +time=2 +tries=1 "$GLOBAL_NAME" A 2>/dev/null \
    | sort | paste -sd' ' -
}

lb_address() {
  kubectl --context "$(ctx "$1")" -n demo get service hello \
    -o jsonpath='{.status.loadBalancer.ingress[0].ip}'
}

# expect_answer SECONDS WANT STEP: waits until the answer is exactly WANT.
expect_answer() {
  local seconds=$1 want=$2 step=$3 start got i
  start=$SECONDS
  for ((i = 0; i < seconds; i++)); do
    got=$(answer)
    if [[ $got == "$want" ]]; then
      printf 'ok   %-44s %s after %ds\n' "$step" "$want" $((SECONDS - start))
      return 0
    fi
    sleep 1
  done
  fail "$step: expected $want within ${seconds}s, last answer was '${got:-<none>}'"
}

scale_hello() {
  kubectl --context "$(ctx "$1")" -n demo scale deployment/hello --replicas="$2" >/dev/null
}

main() {
  require kubectl dig sort paste
  trap cleanup EXIT
  local a b
  a=$(lb_address "${MEMBERS[0]}")
  b=$(lb_address "${MEMBERS[1]}")
  [[ -n $a && -n $b ]] || fail "member LoadBalancer addresses missing (run up.sh first)"
  printf 'member-a hello at %s, member-b hello at %s\n' "$a" "$b"

  forward_dns
  expect_answer 120 "$a" "steady state: member-a serves"
  scale_hello "${MEMBERS[0]}" 0
  printf '...  member-a scaled to zero\n'
  expect_answer 60 "$b" "failover: member-b serves"
  scale_hello "${MEMBERS[0]}" 1
  kubectl --context "$(ctx "${MEMBERS[0]}")" -n demo rollout status deployment/hello --timeout=120s >/dev/null
  printf '...  member-a scaled back to one\n'
  # Hold-down 10 s, then a two-step ramp over 10 s (manifests/management/lifeline-demo.yaml).
  expect_answer 120 "$a" "failback: member-a serves again"
  printf 'PASS: %s failed over and back\n' "$GLOBAL_NAME"
}

main "$@"

#!/usr/bin/env bash
# Builds real Kubernetes and etcd binaries at the versions go.mod pins, into
# target/control-plane/. With no arguments: kube-apiserver and etcd, which the
# control-plane tests start. With names (`build.sh kubelet kubeadm ...`): those, for the
# kind node image (deploy/kind/node-image.sh). One module, one version for everything.
#
# Nothing is rebuilt when the binaries match go.mod, go.sum, this script and the Go
# toolchain; Go's own build cache (GOCACHE) makes a rebuild after a change cheap.
# Machines without Go skip it: the tests that need these binaries then say so and skip.
# A machine that already has envtest binaries can set KUBEBUILDER_ASSETS instead.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${LIFELINE_CONTROL_PLANE_DIR:-$root/target/control-plane}"

if ! command -v go >/dev/null; then
  echo "control-plane: go is not installed; the real control-plane tests will skip" >&2
  exit 0
fi

# One place for the versions: read them back from go.mod.
k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$here/go.mod")"
if [[ -z "$k8s_version" || -z "$etcd_version" ]]; then
  echo "control-plane: cannot read the kubernetes and etcd versions from $here/go.mod" >&2
  exit 1
fi

components=("$@")
((${#components[@]})) || components=(kube-apiserver etcd)
want="$(
  {
    go version
    cat "$here/go.mod" "$here/go.sum" "$0" "$here"/*/*.go
  } | sha256sum | cut -d' ' -f1
)"
# Each binary has a stamp of its own: a set asked for later rebuilds only what it adds.
stale=()
for c in "${components[@]}"; do
  if [[ ! -x "$out/$c" || ! -f "$out/.stamp-$c" || "$(cat "$out/.stamp-$c")" != "$want" ]]; then
    stale+=("$c")
  fi
done
if ((${#stale[@]} == 0)); then
  echo "control-plane: ${components[*]} ($k8s_version, etcd $etcd_version) are current in $out"
  exit 0
fi

mkdir -p "$out"
major="${k8s_version#v}"
major="${major%%.*}"
minor="${k8s_version#v*.}"
minor="${minor%%.*}"
version_pkg=k8s.io/component-base/version
k8s_ldflags="-s -w \
  -X $version_pkg.gitVersion=$k8s_version \
  -X $version_pkg.gitMajor=$major \
  -X $version_pkg.gitMinor=$minor \
  -X $version_pkg.gitTreeState=clean \
  -X $version_pkg.buildDate=1970-01-01T00:00:00Z \
  -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"

cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
started=$SECONDS
packages=()
for c in "${stale[@]}"; do
  rm -f "$out/.stamp-$c"
  case "$c" in
    etcd | coredns) ;;
    etcdctl) packages+=(go.etcd.io/etcd/etcdctl/v3) ;;
    pause | hello) packages+=("lifeline.dev/control-plane/$c") ;;
    kube-apiserver | kube-controller-manager | kube-scheduler | kube-proxy | kubeadm | kubectl | kubelet)
      packages+=("k8s.io/kubernetes/cmd/$c") ;;
    *)
      echo "control-plane: unknown component $c" >&2
      exit 2
      ;;
  esac
done
new="$out/.new"
rm -rf "$new"
mkdir -p "$new"
if ((${#packages[@]})); then
  echo "control-plane: building ${packages[*]##*/} $k8s_version into $out"
  # One go build for all of them: the packages they share compile once.
  go build -trimpath -ldflags "$k8s_ldflags" -o "$new/" "${packages[@]}"
fi
if [[ " ${stale[*]} " == *" etcd "* ]]; then
  echo "control-plane: building etcd $etcd_version into $out"
  go build -trimpath -ldflags "-s -w" -o "$new/etcd" go.etcd.io/etcd/server/v3
fi
if [[ " ${stale[*]} " == *" coredns "* ]]; then
  # CoreDNS at the version this Kubernetes release's kubeadm deploys, built from its
  # own module (its dependencies are not ours to pin).
  coredns_version="$(awk -F'"' '$1 ~ /CoreDNSVersion = / { print $2; exit }' \
    "$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/cmd/kubeadm/app/constants/constants.go")"
  echo "control-plane: building coredns $coredns_version into $out"
  (cd "$new" && GOFLAGS='' GOBIN="$new" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$coredns_version")
fi
for c in "${stale[@]}"; do
  # go build names the etcdctl package's binary after its module path's last element.
  [[ $c != etcdctl || -e "$new/etcdctl" ]] || mv -f "$new/v3" "$new/etcdctl"
  mv -f "$new/$c" "$out/$c"
  echo "$want" >"$out/.stamp-$c"
done
rmdir "$new"
echo "control-plane: built ${stale[*]} in $((SECONDS - started)) s"

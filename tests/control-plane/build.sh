#!/usr/bin/env bash
# Builds the real control-plane binaries that the control-plane tests start:
# kube-apiserver and etcd, at the versions go.mod pins, into target/control-plane/.
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

stamp="$out/.stamp"
want="$(
  {
    go version
    cat "$here/go.mod" "$here/go.sum" "$0"
  } | sha256sum | cut -d' ' -f1
)"
if [[ -x "$out/kube-apiserver" && -x "$out/etcd" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "control-plane: kube-apiserver $k8s_version and etcd $etcd_version are current in $out"
  exit 0
fi

mkdir -p "$out"
rm -f "$stamp"
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
  -X $version_pkg.buildDate=1970-01-01T00:00:00Z"

cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
started=$SECONDS
echo "control-plane: building kube-apiserver $k8s_version into $out"
go build -trimpath -ldflags "$k8s_ldflags" -o "$out/kube-apiserver.new" k8s.io/kubernetes/cmd/kube-apiserver
echo "control-plane: building etcd $etcd_version into $out"
go build -trimpath -ldflags "-s -w" -o "$out/etcd.new" go.etcd.io/etcd/server/v3
mv -f "$out/kube-apiserver.new" "$out/kube-apiserver"
mv -f "$out/etcd.new" "$out/etcd"
echo "$want" >"$stamp"
echo "control-plane: built in $((SECONDS - started)) s"
"$out/kube-apiserver" --version
"$out/etcd" --version | head -1

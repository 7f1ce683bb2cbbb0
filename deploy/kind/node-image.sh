#!/usr/bin/env bash
# Builds a kind node image with no registry: Kubernetes at the version
# tests/control-plane/go.mod pins (one version for the tests and the clusters), from Go
# modules and Debian packages only. Prints the image's name on stdout.
#
#   1. Kubernetes, etcd, CoreDNS and pause binaries: tests/control-plane/build.sh.
#   2. A Debian bookworm root filesystem with systemd, containerd and runc
#      (debootstrap), set up as kind's base image is, with kind's own node files taken
#      from the sigs.k8s.io/kind module: the base image.
#   3. An image per control-plane component, tagged with the name kubeadm asks for.
#   4. The node: the base image plus kubelet, kubeadm and kubectl, with every component
#      image imported into its containerd.
#
# Each step is skipped when what it makes is current (images are tagged with a hash of
# their inputs); Go's build cache and a kept debootstrap root make a rebuild cheap.
# Where a registry is reachable, up.sh uses kind's published node image instead.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN=$REPO_ROOT/target/control-plane
NODE_FILES=$KIND_DIR/node
BASE_PACKAGES=systemd,systemd-sysv,dbus,containerd,runc,iptables,nftables,iproute2,ca-certificates,conntrack,ethtool,kmod,jq,pigz,bash,containernetworking-plugins,mount,util-linux,procps,libseccomp2,e2fsprogs
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd coredns pause)

hash_of() { sha256sum | cut -c1-12; }

build_binaries() {
  bash "$REPO_ROOT/tests/control-plane/build.sh" kubelet kubeadm kubectl "${COMPONENTS[@]}" >&2
}

kind_module_dir() {
  (cd "$REPO_ROOT/tests/control-plane" && GOFLAGS='' go mod download -json "sigs.k8s.io/kind@$KIND_VERSION") \
    | jq -r .Dir
}

# The root filesystem, configured as kind's base image configures its own.
configure_rootfs() {
  local root=$1 kind_files=$2
  install -m 0755 "$kind_files"/usr/local/bin/* "$root/usr/local/bin/"
  mkdir -p "$root/kind/bin" "$root/etc/containerd" "$root/etc/kubernetes/manifests" "$root/opt/cni"
  install -m 0755 "$kind_files"/kind/bin/* "$root/kind/bin/"
  install -m 0644 "$kind_files"/etc/crictl.yaml "$root/etc/"
  install -m 0644 "$kind_files"/etc/default/* "$root/etc/default/"
  install -m 0644 "$kind_files"/etc/sysctl.d/* "$root/etc/sysctl.d/"
  mkdir -p "$root/etc/systemd/system/kubelet.service.d"
  install -m 0644 "$kind_files"/etc/systemd/system/*.{service,slice} "$root/etc/systemd/system/"
  install -m 0644 "$kind_files"/etc/systemd/system/kubelet.service.d/* "$root/etc/systemd/system/kubelet.service.d/"
  install -m 0644 "$NODE_FILES"/kubelet-cgroups.conf "$root/etc/systemd/system/kubelet.service.d/20-lifeline-cgroups.conf"
  # kind's unit runs /usr/local/bin/containerd; Debian installs it in /usr/bin. CNI
  # plugins: Debian's in /usr/lib/cni, where containerd looks in /opt/cni/bin.
  ln -sf /usr/bin/containerd "$root/usr/local/bin/containerd"
  ln -sfn /usr/lib/cni "$root/opt/cni/bin"
  # kind's containerd configuration, with two changes for this build: the sandbox
  # image is the pause this script builds, and containerd never asks for a negative
  # oom_score_adj, which hosts that run kind nested or sandboxed refuse (EACCES).
  sed -e "s|sandbox_image = .*|sandbox_image = \"$PAUSE_IMAGE\"|" \
    -e 's|restrict_oom_score_adj = false|restrict_oom_score_adj = true|' \
    "$kind_files/etc/containerd/config.toml" >"$root/etc/containerd/config.toml"
  chroot "$root" ctr oci spec \
    | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
    | jq 'del(.process.rlimits)' >"$root/etc/containerd/cri-base.json"
  find "$root/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$root"/lib/systemd/system/multi-user.target.wants/* "$root"/etc/systemd/system/*.wants/* \
    "$root"/lib/systemd/system/local-fs.target.wants/* "$root"/lib/systemd/system/sockets.target.wants/*udev* \
    "$root"/lib/systemd/system/sockets.target.wants/*initctl* "$root"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >>"$root/etc/systemd/journald.conf"
  systemctl --root="$root" enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
  systemctl --root="$root" mask systemd-binfmt.service >/dev/null 2>&1
}

build_base() {
  local kind_files key root
  kind_files="$(kind_module_dir)/images/base/files"
  [[ -d $kind_files ]] || die "kind's node files are not in the sigs.k8s.io/kind@$KIND_VERSION module"
  key=$( {
    echo "$BASE_PACKAGES $MIRROR $KIND_VERSION $PAUSE_IMAGE"
    declare -f configure_rootfs
    cat "$NODE_FILES"/*
  } | hash_of)
  BASE_IMAGE=lifeline-kind-base:$key
  if image_exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE is current"
    return
  fi
  root=$CACHE/rootfs-$key
  if [[ ! -f $root/.complete ]]; then
    debootstrap_root "$root" "$BASE_PACKAGES" debootstrap.log
    configure_rootfs "$root" "$kind_files"
    touch "$root/.complete"
  fi
  log "importing $BASE_IMAGE"
  tar -C "$root" --exclude=./.complete -c . \
    | docker import -c 'ENV container=docker' -c 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' - "$BASE_IMAGE" >/dev/null
  # Older roots are not needed once their image exists.
  find "$CACHE" -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$key" -exec rm -rf {} +
}

build_components() {
  local c dir
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    static_image "registry.k8s.io/$c:$K8S_VERSION" "$c"
  done
  static_image "$ETCD_IMAGE" etcd
  static_image "$COREDNS_IMAGE" coredns
  static_image "$PAUSE_IMAGE" pause
  # kube-proxy programs iptables: it runs on the node's Debian root.
  dir=$(mktemp -d)
  cp "$BIN/kube-proxy" "$dir/"
  printf 'FROM %s\nCOPY kube-proxy /usr/local/bin/kube-proxy\nENTRYPOINT ["/usr/local/bin/kube-proxy"]\n' "$BASE_IMAGE" >"$dir/Dockerfile"
  docker build -q -t "registry.k8s.io/kube-proxy:$K8S_VERSION" "$dir" >/dev/null
  rm -rf "$dir"
}

component_images() {
  printf '%s\n' "registry.k8s.io/kube-apiserver:$K8S_VERSION" "registry.k8s.io/kube-controller-manager:$K8S_VERSION" \
    "registry.k8s.io/kube-scheduler:$K8S_VERSION" "registry.k8s.io/kube-proxy:$K8S_VERSION" \
    "$ETCD_IMAGE" "$COREDNS_IMAGE" "$PAUSE_IMAGE"
}

build_node() {
  local key container
  key=$( {
    echo "$BASE_IMAGE"
    cat "$BIN"/.stamp-kubelet "$BIN"/.stamp-kubeadm "$BIN"/.stamp-kubectl
    for c in "${COMPONENTS[@]}"; do cat "$BIN/.stamp-$c"; done
    declare -f build_node static_image build_components
  } | hash_of)
  NODE_IMAGE_BUILT=lifeline-kind-node:$K8S_VERSION-$key
  if image_exists "$NODE_IMAGE_BUILT"; then
    log "node image $NODE_IMAGE_BUILT is current"
    return
  fi
  build_components
  log "assembling $NODE_IMAGE_BUILT"
  container=lifeline-kind-node-build
  docker rm -f "$container" >/dev/null 2>&1 || true
  docker run -d --name "$container" --privileged --entrypoint=sleep "$BASE_IMAGE" infinity >/dev/null
  docker cp "$BIN/kubelet" "$container:/usr/bin/kubelet"
  docker cp "$BIN/kubeadm" "$container:/usr/bin/kubeadm"
  docker cp "$BIN/kubectl" "$container:/usr/bin/kubectl"
  docker exec "$container" sh -c "echo $K8S_VERSION >/kind/version"
  docker exec -d "$container" containerd
  wait_until 30 "containerd in the build container" docker exec "$container" ctr version
  # shellcheck disable=SC2046 # one word per image name
  docker save $(component_images) \
    | docker exec -i "$container" ctr -n k8s.io images import --label=io.cri-containerd.pinned=pinned --no-unpack - >/dev/null
  docker exec "$container" pkill containerd || true
  sleep 1
  docker commit -c 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' -c 'ENV container=docker' \
    "$container" "$NODE_IMAGE_BUILT-assembled" >/dev/null
  docker rm -f "$container" >/dev/null
  # systemd stops on SIGRTMIN+3; a commit cannot set the stop signal, a build can.
  printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$NODE_IMAGE_BUILT-assembled" \
    | docker build -q -t "$NODE_IMAGE_BUILT" - >/dev/null
  docker rmi "$NODE_IMAGE_BUILT-assembled" >/dev/null
}

main() {
  require docker go jq sha256sum
  require_docker_daemon
  ((EUID == 0)) || die "building the node image needs root (debootstrap, chroot)"
  K8S_VERSION=$(kubernetes_version)
  build_binaries
  # CoreDNS and pause under the names this kubeadm asks for (build.sh builds CoreDNS at
  # that version too).
  local wanted
  wanted=$("$BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION")
  COREDNS_IMAGE=$(grep -m1 '/coredns:' <<<"$wanted") || die "kubeadm names no CoreDNS image"
  PAUSE_IMAGE=$(grep -m1 '/pause:' <<<"$wanted") || die "kubeadm names no pause image"
  build_base
  build_node
  printf '%s\n' "$NODE_IMAGE_BUILT"
}

main "$@"

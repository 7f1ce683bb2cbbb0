#!/usr/bin/env bash
# Builds the two images the kind setup runs: lifeline:kind (deploy/Dockerfile) and
# lifeline-hello:kind, the example workload (tests/control-plane/hello).
#
# deploy/Dockerfile takes its base images as build arguments. Where the public
# defaults can be pulled they are used; on a machine with no registry this script first
# builds its own, from Debian packages and this machine's Rust toolchain:
#   lifeline-build:local    Debian bookworm, gcc, and the host's rustc and cargo
#   lifeline-runtime:local  glibc, libgcc_s, CA certificates and a nonroot user
# LIFELINE_BUILD_IMAGE and LIFELINE_RUNTIME_IMAGE choose others.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PUBLIC_BUILD_IMAGE=docker.io/library/rust:1.95-bookworm
PUBLIC_RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
BUILD_PACKAGES=gcc,libc6-dev,ca-certificates
HOST_CA_BUNDLE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
# The Debian root both local base images come from.
ROOT_KEY=$(echo "$BUILD_PACKAGES $MIRROR" | sha256sum | cut -c1-12)

# BuildKit, for the Dockerfile's cache mounts: buildx where installed, else a docker
# CLI old enough to drive the daemon's built-in BuildKit itself (Debian's docker.io).
docker_build() {
  if docker buildx version >/dev/null 2>&1; then
    docker buildx build --load "$@"
    return
  fi
  local cli version
  for cli in $(type -ap docker); do
    version=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null || true)
    if [[ -n $version && ${version%%.*} -lt 23 ]]; then
      DOCKER_BUILDKIT=1 "$cli" build "$@"
      return
    fi
  done
  die "building deploy/Dockerfile needs BuildKit: install docker buildx"
}

pullable() { timeout 60 docker pull -q "$1" >/dev/null 2>&1; }

build_root() {
  [[ -f $1/.complete ]] && return
  debootstrap_root "$1" "$BUILD_PACKAGES" debootstrap-build.log
  touch "$1/.complete"
}

# The build image: the Debian root plus this machine's toolchain (no documentation,
# no sources), with CARGO_HOME and PATH as the public rust image sets them.
local_build_image() {
  local sysroot key root
  require rustc cargo
  sysroot=$(rustc --print sysroot)
  key=$( {
    echo "$ROOT_KEY"
    rustc -vV
    cargo -V
    cat "$HOST_CA_BUNDLE"
  } | sha256sum | cut -c1-12)
  CHOSEN=lifeline-build:local-$key
  image_exists "$CHOSEN" && return
  root=$CACHE/buildroot-$ROOT_KEY
  build_root "$root"
  log "importing $CHOSEN (the host's $(rustc -V))"
  mkdir -p "$root/usr/local/cargo"
  tar -C "$root" --exclude=./.complete -c . \
    | docker import -c 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'ENV CARGO_HOME=/usr/local/cargo' - "$CHOSEN-root" >/dev/null
  # The toolchain joins as a layer of its own: the root stays shared with the runtime.
  local dir
  dir=$(mktemp -d)
  tar -C "$sysroot" --exclude=./share/doc --exclude=./lib/rustlib/src --exclude=./share/man -c . \
    | tar -C "$dir" -x --one-top-level=rust
  # The host's trust store too: the build reaches crates.io as this machine does
  # (through whatever TLS-inspecting proxy it trusts).
  cp "$HOST_CA_BUNDLE" "$dir/ca-certificates.crt"
  printf 'FROM %s\nCOPY rust /usr/local/rust\nCOPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n' \
    "$CHOSEN-root" >"$dir/Dockerfile"
  docker build -q -t "$CHOSEN" "$dir" >/dev/null
  rm -rf "$dir"
  docker rmi "$CHOSEN-root" >/dev/null
}

# The runtime image: what distroless/cc holds, taken from the same Debian root.
local_runtime_image() {
  local root dir lib
  CHOSEN=lifeline-runtime:local-$ROOT_KEY
  image_exists "$CHOSEN" && return
  root=$CACHE/buildroot-$ROOT_KEY
  build_root "$root"
  dir=$(mktemp -d)
  mkdir -p "$dir/lib/x86_64-linux-gnu" "$dir/lib64" "$dir/etc/ssl/certs" "$dir/tmp" "$dir/home/nonroot"
  for lib in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1 \
    libresolv.so.2 libnss_dns.so.2 libnss_files.so.2; do
    cp -L "$root/lib/x86_64-linux-gnu/$lib" "$dir/lib/x86_64-linux-gnu/"
  done
  ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$dir/lib64/ld-linux-x86-64.so.2"
  cp -L "$root/etc/ssl/certs/ca-certificates.crt" "$dir/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$dir/etc/group"
  printf 'hosts: files dns\n' >"$dir/etc/nsswitch.conf"
  chmod 1777 "$dir/tmp"
  chown 65532:65532 "$dir/home/nonroot"
  tar -C "$dir" -c . | docker import -c 'USER 65532:65532' - "$CHOSEN" >/dev/null
  rm -rf "$dir"
}

# base_image PUBLIC BUILDER: the public image where it can be pulled, else BUILDER's
# local one. Sets CHOSEN.
base_image() {
  if pullable "$1"; then
    CHOSEN=$1
  else
    log "$1 cannot be pulled: building one here"
    "$2"
  fi
}

choose_base_images() {
  BUILD_IMAGE=${LIFELINE_BUILD_IMAGE:-}
  RUNTIME_IMAGE=${LIFELINE_RUNTIME_IMAGE:-}
  if [[ -z $BUILD_IMAGE ]]; then
    base_image "$PUBLIC_BUILD_IMAGE" local_build_image
    BUILD_IMAGE=$CHOSEN
  fi
  if [[ -z $RUNTIME_IMAGE ]]; then
    base_image "$PUBLIC_RUNTIME_IMAGE" local_runtime_image
    RUNTIME_IMAGE=$CHOSEN
  fi
}

main() {
  require docker go sha256sum
  require_docker_daemon
  bash "$REPO_ROOT/tests/control-plane/build.sh" hello >&2
  static_image "$HELLO_IMAGE" hello
  choose_base_images
  log "building $IMAGE from $BUILD_IMAGE on $RUNTIME_IMAGE (a release build: minutes the first time)"
  # The build reaches crates.io through the host's network.
  docker_build --network host -f "$REPO_ROOT/deploy/Dockerfile" \
    --build-arg "BUILD_IMAGE=$BUILD_IMAGE" --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" \
    -t "$IMAGE" "$REPO_ROOT"
}

main "$@"

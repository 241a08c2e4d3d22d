#!/usr/bin/env bash
# Runs the tensor-core GEMM tests on a CPU. Debian 12's lavapipe (Mesa 22.3) has no cooperative
# matrices; lavapipe in Mesa 26 offers VK_KHR_cooperative_matrix (8x8x8 f16 -> f32 on
# subgroups of 8 lanes), which `matmul_coop.wgsl` and `matmul_coop128.wgsl` are built for too.
# This script makes a Debian 13 root with trixie-backports' Mesa (debootstrap, once, cached in
# $COOP_ROOT) and runs the given test binaries inside it (chroot), the repository mounted at
# the same path. Needs root and network the first time.
#
#   cargo test --release --no-run --test fp16      # then the binary it prints:
#   bash tools/coop_lavapipe.sh target/release/deps/fp16-HASH [test filter...]
#
# Exit status: the tests'; 3 when the root cannot be made or entered here (no debootstrap,
# network or chroot), so CI can tell a skip from a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
ROOT=${COOP_ROOT:-/var/tmp/xlsr-coop-root}
BIN=${1:?usage: coop_lavapipe.sh TEST_BINARY [ARGS...]}
shift

skip() { echo "coop_lavapipe: $*; cooperative-matrix tests not run" >&2; exit 3; }

if [ ! -e "$ROOT/.ready" ]; then
  command -v debootstrap >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq debootstrap || { apt-get update -qq && apt-get install -y -qq debootstrap; }; } \
      >/dev/null 2>&1 || skip "no debootstrap"
  }
  rm -rf "$ROOT"
  debootstrap --variant=minbase trixie "$ROOT" http://deb.debian.org/debian >/tmp/coop_debootstrap.log 2>&1 \
    || skip "debootstrap failed (see /tmp/coop_debootstrap.log)"
  echo "deb http://deb.debian.org/debian trixie-backports main" >"$ROOT/etc/apt/sources.list.d/backports.list"
  chroot "$ROOT" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t trixie-backports mesa-vulkan-drivers libvulkan1' \
    >/tmp/coop_mesa.log 2>&1 || skip "installing Mesa from trixie-backports failed (see /tmp/coop_mesa.log)"
  touch "$ROOT/.ready"
fi

mkdir -p "$ROOT$REPO"
mounted=()
cleanup() { for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || true; done; }
trap cleanup EXIT
for d in proc sys dev; do
  if ! mountpoint -q "$ROOT/$d" && mount --bind "/$d" "$ROOT/$d" 2>/dev/null; then mounted+=("$ROOT/$d"); fi
done
if ! mountpoint -q "$ROOT$REPO"; then
  if mount --bind "$REPO" "$ROOT$REPO" 2>/dev/null; then
    mounted+=("$ROOT$REPO")
  else
    # No mounts here (a container without the capability): copy what the tests read, the
    # fixtures and the binaries, to the same path inside.
    echo "coop_lavapipe: no bind mount here; copying the test binaries and fixtures in" >&2
    mkdir -p "$ROOT$REPO/target/release"
    cp -a tests "$ROOT$REPO/" && cp -a target/release/xlsr "$ROOT$REPO/target/release/" || skip "cannot copy into $ROOT"
    for f in "$BIN" "$@"; do
      case "$f" in /*) continue ;; esac
      if [ -f "$f" ]; then mkdir -p "$ROOT$REPO/$(dirname "$f")" && cp -a "$f" "$ROOT$REPO/$f"; fi
    done
  fi
fi
chroot "$ROOT" true 2>/dev/null || skip "cannot chroot into $ROOT"

# Say what the driver offers, then run the tests with it.
XDG_RUNTIME_DIR=/tmp chroot "$ROOT" "$REPO/target/release/xlsr" devices 2>/dev/null | grep -i coop || true
set +e
chroot "$ROOT" /usr/bin/env -C "$REPO" XDG_RUNTIME_DIR=/tmp XLSR_TUNE=0 "$BIN" "$@"
status=$?
exit $status

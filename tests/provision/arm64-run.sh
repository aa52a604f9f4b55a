#!/bin/bash
# Run a command inside the arm64 toolchain root (arm64-toolchain.sh), in the current directory,
# with the cross-build environment:
#   CARGO_HOME        $VAMP_ARM64_DIR/cargo-home, its registry seeded once from the host's
#                     (index and .crate files), so a cached run needs no network
#   CARGO_TARGET_DIR  $VAMP_ARM64_TARGET (arm64-lib.sh: one per checkout, outside the repository)
#   CARGO_HTTP_CAINFO the host's CA bundle (copied next to it), for a first fetch
#   the aarch64-linux-gnu linker, LLVM's linker (ld.lld) for the bare-metal targets, and the
#   qemu-user runner (`cargo test --target ...` runs the arm64 test binaries under qemu-aarch64)
# The environment is otherwise empty: nothing of the host's rustup reaches the root.
#   tests/provision/arm64-run.sh cargo build --target aarch64-unknown-linux-gnu --workspace
# Set VAMP_ARM64_ENV to extra NAME=VALUE words (space-separated) to pass more variables.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
# shellcheck source=SCRIPTDIR/arm64-lib.sh
. "$VAMP_PROVISION_DIR/arm64-lib.sh"
VAMP_LOG_TAG=arm64-run

need_root
[[ $# -gt 0 ]] || die "usage: arm64-run.sh CMD [ARGS...]"
[[ -f $VAMP_ARM64_ROOT/usr/bin/cargo ]] || die "no toolchain at $VAMP_ARM64_ROOT: run tests/provision/arm64-toolchain.sh first"

cargo_home="$VAMP_ARM64_DIR/cargo-home"
host_registry="${CARGO_HOME:-$HOME/.cargo}/registry"
if [[ ! -d $cargo_home/registry && -d $host_registry ]]; then
    log "seeding the root's cargo registry from $host_registry (index and .crate files)"
    mkdir -p "$cargo_home/registry"
    for part in index cache; do
        [[ -d $host_registry/$part ]] && cp -a "$host_registry/$part" "$cargo_home/registry/"
    done
fi
mkdir -p "$cargo_home" "$VAMP_ARM64_TARGET"
ca=""
for f in "${CARGO_HTTP_CAINFO:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    if [[ -n $f && -r $f ]]; then
        cp -f "$f" "$VAMP_ARM64_DIR/host-ca.crt"
        ca="$VAMP_ARM64_DIR/host-ca.crt"
        break
    fi
done

read -r -a extra <<<"${VAMP_ARM64_ENV:-}"
exec env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin TERM="${TERM:-dumb}" \
    VAMP_CACHE="$VAMP_CACHE" VAMP_ROOT="$VAMP_ARM64_ROOT" VAMP_QEMU_BIND="${VAMP_QEMU_BIND:-}" \
    "$VAMP_PROVISION_DIR/qemu" --exec env \
    CARGO_HOME="$cargo_home" CARGO_TARGET_DIR="$VAMP_ARM64_TARGET" \
    ${ca:+CARGO_HTTP_CAINFO="$ca"} \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_NONE_LINKER=ld.lld CARGO_TARGET_ARMV7R_NONE_EABIHF_LINKER=ld.lld \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
    "${extra[@]}" "$@"

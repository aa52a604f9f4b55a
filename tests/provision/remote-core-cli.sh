#!/bin/bash
# Build this checkout's remoteproc-vm as a static x86_64 binary for the test guest, where
# remote-core-smoke.sh drives the test remote core with it (dom0's role: the sysfs backend).
# usage: remote-core-cli.sh [PACKAGE:BINARY]...   (default vamp-remoteproc:remoteproc-vm)
#   other binaries of the workspace the same way, in one cargo run (dom0-hub-smoke.sh:
#   vamp-vmm-backend:vhost-user-rpmsg vamp-cli:vamp).
# The initramfs takes static binaries only; glibc links statically with crt-static.
# The cargo target dir is the checkout's own target/ (host builds go to target/{debug,release},
# this one to target/x86_64-unknown-linux-gnu/release): the binary always matches the sources
# the smoke runs from, and checkouts side by side do not overwrite each other's.
# Output (stdout): each binary's path, one a line, in the order asked.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
VAMP_LOG_TAG=remote-core-cli

REPO="$(cd "$VAMP_PROVISION_DIR/../.." && pwd)"
TARGET_DIR="${VAMP_REMOTEPROC_TARGET_DIR:-$REPO/target}"
TRIPLE=x86_64-unknown-linux-gnu
[[ $# -gt 0 ]] || set -- vamp-remoteproc:remoteproc-vm
CARGO_ARGS=()
BINS=()
for wanted in "$@"; do
    [[ $wanted == *:* ]] || die "$wanted: want PACKAGE:BINARY"
    CARGO_ARGS+=(-p "${wanted%%:*}" --bin "${wanted#*:}")
    BINS+=("$TARGET_DIR/$TRIPLE/release/${wanted#*:}")
done
t_start=$(now_ms)

command -v cargo >/dev/null || die "cargo not found (the Rust toolchain is needed)"

build_static() {
    # With an explicit --target, RUSTFLAGS reach only the target crates (not build scripts,
    # nor the firmware images build.rs builds in its own workspace).
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release --manifest-path "$REPO/Cargo.toml" "${CARGO_ARGS[@]}" \
        --target "$TRIPLE" --target-dir "$TARGET_DIR" >&2
    for bin in "${BINS[@]}"; do
        [[ -x $bin ]] || die "no binary at $bin"
        if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
            die "$bin is dynamically linked (crt-static did not take effect)"
        fi
        if readelf -dW "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
            die "$bin needs shared libraries"
        fi
    done
}

step "cargo build --release ${CARGO_ARGS[*]} (static, $TRIPLE)" build_static
for bin in "${BINS[@]}"; do
    log "$bin: $(stat -c %s "$bin") bytes, statically linked"
    echo "$bin"
done
log "done in $(fmt_ms $(($(now_ms) - t_start)))"

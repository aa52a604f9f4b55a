#!/bin/bash
# Build this checkout's remoteproc-vm as a static x86_64 binary for the test guest, where
# remote-core-smoke.sh drives the test remote core with it (dom0's role: the sysfs backend).
# The initramfs takes static binaries only; glibc links statically with crt-static.
# The cargo target dir is the checkout's own target/ (host builds go to target/{debug,release},
# this one to target/x86_64-unknown-linux-gnu/release): the binary always matches the sources
# the smoke runs from, and checkouts side by side do not overwrite each other's.
# Output (stdout): the binary's path.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
VAMP_LOG_TAG=remote-core-cli

REPO="$(cd "$VAMP_PROVISION_DIR/../.." && pwd)"
TARGET_DIR="${VAMP_REMOTEPROC_TARGET_DIR:-$REPO/target}"
TRIPLE=x86_64-unknown-linux-gnu
BIN="$TARGET_DIR/$TRIPLE/release/remoteproc-vm"
t_start=$(now_ms)

command -v cargo >/dev/null || die "cargo not found (the Rust toolchain is needed)"

build_static() {
    # With an explicit --target, RUSTFLAGS reach only the target crates (not build scripts,
    # nor the firmware images build.rs builds in its own workspace).
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release --manifest-path "$REPO/Cargo.toml" -p vamp-remoteproc \
        --bin remoteproc-vm --target "$TRIPLE" --target-dir "$TARGET_DIR" >&2
    [[ -x $BIN ]] || die "no binary at $BIN"
    if readelf -lW "$BIN" | grep -q 'Requesting program interpreter'; then
        die "$BIN is dynamically linked (crt-static did not take effect)"
    fi
    if readelf -dW "$BIN" 2>/dev/null | grep -q '(NEEDED)'; then
        die "$BIN needs shared libraries"
    fi
}

step "cargo build --release -p vamp-remoteproc (static, $TRIPLE)" build_static
log "$BIN: $(stat -c %s "$BIN") bytes, statically linked; done in $(fmt_ms $(($(now_ms) - t_start)))"
echo "$BIN"

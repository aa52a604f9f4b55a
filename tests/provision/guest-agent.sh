#!/bin/bash
# Build tests/guest-agent (vamp-guest-agent) as a static x86_64 binary for the test guest.
# Output: $VAMP_GUEST_DIR/vamp-guest-agent (default $VAMP_CACHE/guest/vamp-guest-agent).
# The cargo target dir is under $VAMP_CACHE so the main workspace build is not disturbed;
# cargo is incremental, so a second run only checks. Set VAMP_AGENT_SKIP_TESTS=1 to skip
# the host unit tests.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
VAMP_LOG_TAG=guest-agent

CRATE_DIR="$(cd "$VAMP_PROVISION_DIR/../guest-agent" && pwd)"
TARGET_DIR="${VAMP_AGENT_TARGET_DIR:-$VAMP_CACHE/guest-agent-target}"
TRIPLE=x86_64-unknown-linux-gnu
OUT="$VAMP_GUEST_DIR/vamp-guest-agent"
t_start=$(now_ms)

command -v cargo >/dev/null || die "cargo not found (the Rust toolchain is needed)"
mkdir -p "$VAMP_GUEST_DIR" "$TARGET_DIR"

unit_tests() {
    # Host unit tests of the pure parts (pattern, ioctl numbers, parsing): plain dynamic build.
    cargo test --quiet --manifest-path "$CRATE_DIR/Cargo.toml" --target-dir "$TARGET_DIR" >&2
}

build_static() {
    # With an explicit --target, RUSTFLAGS reach only the target crates (not build scripts).
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release --manifest-path "$CRATE_DIR/Cargo.toml" \
        --target "$TRIPLE" --target-dir "$TARGET_DIR" >&2
    local bin="$TARGET_DIR/$TRIPLE/release/vamp-guest-agent"
    [[ -x $bin ]] || die "no binary at $bin"
    if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
        die "$bin is dynamically linked (crt-static did not take effect)"
    fi
    if readelf -dW "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
        die "$bin needs shared libraries"
    fi
    if ! cmp -s "$bin" "$OUT"; then
        cp "$bin" "$OUT.tmp"
        mv -f "$OUT.tmp" "$OUT"
    fi
}

if [[ ${VAMP_AGENT_SKIP_TESTS:-0} == 0 ]]; then
    step "cargo test (host)" unit_tests
fi
step "cargo build --release (static, $TRIPLE)" build_static
log "$OUT: $(stat -c %s "$OUT") bytes, statically linked"
log "guest-agent done in $(fmt_ms $(($(now_ms) - t_start)))"
echo "$OUT"

#!/bin/bash
# Build the test remote core module (tests/remote-core/vamp_test_rproc.c, a GPL-2.0 test fixture)
# against the guest kernel's build directory that guest-kernel.sh left.
# Output: $VAMP_GUEST_DIR/vamp_test_rproc.ko (default $VAMP_CACHE/guest/vamp_test_rproc.ko).
# The sources are copied to $VAMP_GUEST_DIR/remote-core so Kbuild's objects stay out of the repo.
# Idempotent: the stamp holds the sources' hash and the kernel's release + config hash.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
VAMP_LOG_TAG=remote-core

MOD_SRC="$(cd "$VAMP_PROVISION_DIR/../remote-core" && pwd)"
BUILD_DIR="$VAMP_GUEST_DIR/build"
WORK="$VAMP_GUEST_DIR/remote-core"
OUT="$VAMP_GUEST_DIR/vamp_test_rproc.ko"
STAMP="$VAMP_GUEST_DIR/remote-core.stamp"
t_start=$(now_ms)

[[ -f $BUILD_DIR/.config ]] || die "no kernel build dir at $BUILD_DIR (run guest-kernel.sh first)"
grep -qx CONFIG_MODULES=y "$BUILD_DIR/.config" || die "the guest kernel has no module support (guest-kernel.sh too old?)"

want="remote-core v1 $(cat "$MOD_SRC/vamp_test_rproc.c" "$MOD_SRC/Kbuild" | sha256sum | cut -c1-16) \
kernel $(cat "$VAMP_GUEST_DIR/kernel-release" 2>/dev/null) $(sha256sum <"$BUILD_DIR/.config" | cut -c1-16)"
if stamp_ok "$STAMP" "$want" && [[ -f $OUT ]]; then
    log "module is up to date"
else
    rm -f "$STAMP"
    kmake() { make -C "$BUILD_DIR" ARCH=x86_64 "$@"; }
    # External modules link against Module.symvers, which only `make modules` writes.
    if [[ ! -f $BUILD_DIR/Module.symvers ]]; then
        step "kernel modules (Module.symvers)" kmake -j"$(nproc)" modules >"$VAMP_GUEST_DIR/remote-core.log" 2>&1 ||
            { tail -n 30 "$VAMP_GUEST_DIR/remote-core.log" >&2; die "make modules failed"; }
    fi
    rm -rf "$WORK"
    mkdir -p "$WORK"
    cp "$MOD_SRC/vamp_test_rproc.c" "$MOD_SRC/Kbuild" "$WORK/"
    step "build vamp_test_rproc.ko" kmake M="$WORK" W=1 modules >>"$VAMP_GUEST_DIR/remote-core.log" 2>&1 ||
        { tail -n 40 "$VAMP_GUEST_DIR/remote-core.log" >&2; die "module build failed (see $VAMP_GUEST_DIR/remote-core.log)"; }
    if grep -q "warning:" "$VAMP_GUEST_DIR/remote-core.log"; then
        grep "warning:" "$VAMP_GUEST_DIR/remote-core.log" >&2
        die "the module builds with warnings"
    fi
    cp "$WORK/vamp_test_rproc.ko" "$OUT.tmp"
    mv -f "$OUT.tmp" "$OUT"
    stamp_write "$STAMP" "$want"
fi
log "vamp_test_rproc.ko: $(stat -c %s "$OUT") bytes; remote-core done in $(fmt_ms $(($(now_ms) - t_start)))"
echo "$OUT"

# shellcheck shell=bash
# Shared helpers for the arm64 lane (sourced after lib.sh): where the sid toolchain root and the
# cross-build caches live, and how to run a command inside that root.
#   $VAMP_ARM64_ROOT             Debian sid root with the cross toolchain (arm64-toolchain.sh)
#   $VAMP_ARM64_DIR/cargo-home   CARGO_HOME used inside the root (registry seeded from the host's)
#   $VAMP_ARM64_TARGET           cargo target dir of the cross builds (kept between runs):
#                                $VAMP_ARM64_DIR/target/<hash of the checkout's path>, one per
#                                checkout, since build scripts record absolute paths (the
#                                firmware's linker script) that another checkout lacks; each
#                                names its checkout in a `checkout` file, so that
#                                arm64_prune_targets can drop those of checkouts that are gone

VAMP_ARM64_ROOT="${VAMP_ARM64_ROOT:-$VAMP_CACHE/arm64-root}"
VAMP_ARM64_DIR="${VAMP_ARM64_DIR:-$VAMP_CACHE/arm64}"
VAMP_ARM64_TARGET="$VAMP_ARM64_DIR/target/$(readlink -f "$VAMP_PROVISION_DIR/../.." | sha256sum | cut -c1-12)"
export VAMP_ARM64_ROOT VAMP_ARM64_DIR VAMP_ARM64_TARGET

# arm64_exec CMD ARGS...: run CMD inside the sid root, in the current directory, through the
# QEMU wrapper's --exec (private mount namespace; binds /proc /sys /dev /tmp $VAMP_CACHE, the
# cwd and $VAMP_QEMU_BIND; the mounts vanish with the command).
arm64_exec() {
    VAMP_ROOT="$VAMP_ARM64_ROOT" "$VAMP_PROVISION_DIR/qemu" --exec "$@"
}

# arm64_prune_targets: note this checkout in its target dir, and remove the target dirs of
# checkouts that no longer exist (each fresh clone that ran the lane left ~2-5 GB behind).
arm64_prune_targets() {
    local dir checkout
    mkdir -p "$VAMP_ARM64_TARGET"
    readlink -f "$VAMP_PROVISION_DIR/../.." >"$VAMP_ARM64_TARGET/checkout"
    for dir in "$VAMP_ARM64_DIR"/target/*/; do
        dir=${dir%/}
        [[ -f $dir/checkout ]] || continue
        checkout=$(<"$dir/checkout")
        if [[ ! -d $checkout ]]; then
            log "removing $dir (the cross builds of $checkout, which is gone)"
            rm -rf "$dir"
        fi
    done
}

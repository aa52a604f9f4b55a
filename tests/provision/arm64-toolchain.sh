#!/bin/bash
# Provision the arm64 cross toolchain: a Debian sid root (debootstrap --variant=minbase) with
# rustc/cargo/clippy, libstd-rust-dev:arm64 (multiarch), gcc-aarch64-linux-gnu, rust-src (for
# -Zbuild-std to bare-metal targets), lld, ARM binutils (code sizes) and QEMU (qemu-user runs the
# arm64 test binaries; qemu-system-arm is the arm64 KVM host for the nested-KVM lane).
# Why sid: rustup here has only the x86-64 target and cannot download others; Debian ships
# the arm64 std and the std sources as packages (test-machine.md, "arm64 and Xen under emulation").
# Output: $VAMP_ARM64_ROOT (default $VAMP_CACHE/arm64-root); run commands in it through
# tests/provision/arm64-run.sh. Idempotent: a stamp makes the second run a quick check.
# Prints the rustc and QEMU versions on stdout.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
# shellcheck source=SCRIPTDIR/arm64-lib.sh
. "$VAMP_PROVISION_DIR/arm64-lib.sh"
VAMP_LOG_TAG=arm64-toolchain

# Bump when the recipe changes: the next run rebuilds the root.
RECIPE="arm64-root v2: minbase sid, arm64 multiarch, rustc cargo rust-clippy libstd-rust-dev:arm64 rust-src lld gcc-aarch64-linux-gnu binutils-arm-none-eabi qemu-user qemu-system-arm"
PACKAGES=(rustc cargo rust-clippy libstd-rust-dev:arm64 rust-src lld gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    binutils-aarch64-linux-gnu binutils-arm-none-eabi qemu-user qemu-system-arm ca-certificates)
STAMP="$VAMP_CACHE/arm64-root.stamp"
BOOTSTRAP_MARK="$VAMP_ARM64_ROOT/.vamp-debootstrap-done"

need_root
t_start=$(now_ms)

do_debootstrap() {
    debootstrap_root sid "$VAMP_ARM64_ROOT" "$VAMP_CACHE/arm64-debootstrap.log"
}

do_install() {
    prepare_root_apt "$VAMP_ARM64_ROOT" sid
    # The mirror may serve a dated snapshot whose Release file reads as expired.
    echo 'Acquire::Check-Valid-Until "false";' >"$VAMP_ARM64_ROOT/etc/apt/apt.conf.d/99vamp-no-valid-until"
    {
        arm64_exec dpkg --add-architecture arm64 &&
            arm64_exec apt-get update -qq &&
            arm64_exec env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" &&
            arm64_exec apt-get clean
    } >"$VAMP_CACHE/arm64-install.log" 2>&1 || die "toolchain install failed, see $VAMP_CACHE/arm64-install.log"
}

check_toolchain() {
    local rustc qemu
    rustc="$(arm64_exec rustc --version)" || die "rustc does not run in the root"
    arm64_exec test -d /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib || die "no arm64 std in the root"
    arm64_exec test -f /usr/lib/rustlib/src/rust/library/Cargo.lock || die "no rust-src in the root"
    qemu="$(arm64_exec qemu-aarch64 --version | head -n1)" || die "qemu-aarch64 does not run in the root"
    echo "$rustc"
    echo "$qemu"
}

if stamp_ok "$STAMP" "$RECIPE" && [[ -f $VAMP_ARM64_ROOT/usr/bin/rustc ]]; then
    log "arm64 toolchain root is up to date ($VAMP_ARM64_ROOT)"
else
    rm -f "$STAMP"
    if [[ ! -f $BOOTSTRAP_MARK ]]; then
        step "debootstrap sid" do_debootstrap
    else
        log "debootstrap already done ($VAMP_ARM64_ROOT)"
    fi
    step "install the arm64 toolchain" do_install
fi
step "check the toolchain" check_toolchain
stamp_write "$STAMP" "$RECIPE"
log "arm64-toolchain done in $(fmt_ms $(($(now_ms) - t_start)))"

#!/bin/bash
# Build the minimal x86_64 guest kernel for vamp's end-to-end tests:
# Debian's linux-source-6.12, `make tinyconfig` + the options below, `make -j2 bzImage`.
# Output: $VAMP_GUEST_DIR/bzImage (default $VAMP_CACHE/guest/bzImage), $VAMP_GUEST_DIR/config.
#
# Source: linux-source-6.12 is fetched with `apt-get download` INSIDE the trixie root that
# qemu-root.sh made (trixie main carries linux-source-6.12). The host is bookworm, whose
# linux-source-6.12 lives only in bookworm-backports, which the host's apt sources do not list;
# going through the trixie root needs no change to the host's apt configuration.
#
# Idempotent: the stamp holds the source package version and the option list, so a second run
# is a quick check; changing an option re-runs config + an incremental build.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
VAMP_LOG_TAG=guest-kernel

SRC_PKG=linux-source-6.12
QEMU="$VAMP_PROVISION_DIR/qemu"
DL_DIR="$VAMP_GUEST_DIR/dl"
SRC_DIR="$VAMP_GUEST_DIR/$SRC_PKG"
BUILD_DIR="$VAMP_GUEST_DIR/build"
STAMP="$VAMP_GUEST_DIR/kernel.stamp"
JOBS="${VAMP_KERNEL_JOBS:-$(nproc)}"

# Options that must end up =y (verified in the final .config; the build fails otherwise).
REQUIRED_Y=(
    # The base fragment (shared/notes/test-machine.md): boots to an initramfs /init on ttyS0.
    64BIT PRINTK EARLY_PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE BLK_DEV_INITRD RD_GZIP
    BINFMT_ELF BINFMT_SCRIPT DEVTMPFS DEVTMPFS_MOUNT PROC_FS SYSFS FUTEX MULTIUSER
    PCI NET VIRTIO_MENU VIRTIO_PCI RPMSG RPMSG_VIRTIO RPMSG_CHAR RPMSG_CTRL RPMSG_NS
    # On virtio-pci the rpmsg receive callback runs in hard-IRQ context and a name-service
    # announcement creates a device there: "BUG: scheduling while atomic" + hang on a plain
    # kernel. PREEMPT_RT threads the interrupt handlers, so announcements work.
    EXPERT PREEMPT_RT
    # virtio-pci on INTx (no MSI in this config, no ACPI): legacy PCI config access
    # (type 1 ports), the interrupt routing that SeaBIOS describes; modern virtio-pci.
    # The MP table gives the IO-APIC routing of the PCI interrupt pins.
    PCI_DIRECT X86_MPPARSE X86_LOCAL_APIC X86_IO_APIC VIRTIO_PCI_LIB
    # Test aid: virtio-rng-pci has a backend built into QEMU, so the boot smoke can prove that
    # a virtio-pci device gets its vqs and INTx interrupts (read /dev/hwrng) without vhost-user.
    HW_RANDOM HW_RANDOM_VIRTIO
    # Convenience: timestamps on the console, POSIX timers for user space.
    PRINTK_TIME POSIX_TIMERS
    # The test remote core (tests/remote-core, built by remote-core.sh): a loadable module
    # that registers a remoteproc, so the guest needs modules, the remoteproc core (with its
    # character device) and debugfs (the core's trace/crash files live there).
    MODULES MODULE_UNLOAD REMOTEPROC REMOTEPROC_CDEV DEBUG_FS
    # dom0-hub-smoke.sh runs the hub (vhost-user-rpmsg) and a native guest inside the guest:
    # vhost-user's UNIX socket, epoll and eventfds, and memfd guest memory (MEMFD_CREATE
    # follows from TMPFS).
    UNIX EPOLL EVENTFD SHMEM TMPFS MEMFD_CREATE
)
# Options that must have an exact value.
REQUIRED_VAL=(
    # A guest panic reboots at once; with QEMU's -no-reboot the test sees an exit, not a hang.
    "PANIC_TIMEOUT=-1"
)
# Options that must be off.
REQUIRED_N=(
    # INTx only: what the notes measured (virtio-pci without MSI).
    PCI_MSI
)

need_root
t_start=$(now_ms)

recipe() {
    local ver=$1
    echo "kernel v2 $SRC_PKG=$ver tinyconfig +${REQUIRED_Y[*]} ${REQUIRED_VAL[*]} -${REQUIRED_N[*]}"
}

# Version of the source package cached in DL_DIR (empty if none).
cached_src_version() {
    local deb
    deb=$(find "$DL_DIR" -maxdepth 1 -name "${SRC_PKG}_*.deb" 2>/dev/null | sort | tail -n1)
    [[ -n $deb ]] || return 0
    dpkg-deb -f "$deb" Version
}

fetch_source() {
    [[ -x $VAMP_ROOT/usr/bin/apt-get ]] || bash "$VAMP_PROVISION_DIR/qemu-root.sh" >/dev/null
    mkdir -p "$DL_DIR"
    if [[ -n $(cached_src_version) ]]; then
        log "source package already downloaded: $(cached_src_version)"
        return 0
    fi
    # The wrapper starts the command in the current directory (bound into the root).
    (
        cd "$DL_DIR"
        "$QEMU" --exec apt-get download -q "$SRC_PKG" >&2 || {
            "$QEMU" --exec apt-get update -qq >&2
            "$QEMU" --exec apt-get download -q "$SRC_PKG" >&2
        }
    ) || die "apt-get download $SRC_PKG failed (in the trixie root)"
    log "downloaded $SRC_PKG $(cached_src_version)"
}

extract_source() {
    local ver deb tmp
    ver=$(cached_src_version)
    if [[ -f $SRC_DIR/.vamp-extracted ]] && [[ "$(cat "$SRC_DIR/.vamp-extracted")" == "$ver" ]]; then
        log "source tree already extracted ($SRC_DIR)"
        return 0
    fi
    deb=$(find "$DL_DIR" -maxdepth 1 -name "${SRC_PKG}_*.deb" | sort | tail -n1)
    rm -rf "$SRC_DIR" "$BUILD_DIR"
    tmp=$(mktemp -d "$VAMP_GUEST_DIR/extract.XXXXXX")
    # The .deb carries /usr/src/linux-source-6.12.tar.xz (top directory linux-source-6.12/).
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" "./usr/src/$SRC_PKG.tar.xz"
    tar -xJf "$tmp/usr/src/$SRC_PKG.tar.xz" -C "$VAMP_GUEST_DIR"
    rm -rf "$tmp"
    [[ -f $SRC_DIR/Makefile ]] || die "unexpected tarball layout: no $SRC_DIR/Makefile"
    echo "$ver" >"$SRC_DIR/.vamp-extracted"
}

kmake() {
    make -C "$SRC_DIR" O="$BUILD_DIR" ARCH=x86_64 \
        KBUILD_BUILD_USER=vamp KBUILD_BUILD_HOST=vamp "$@"
}

configure() {
    local args=() o
    mkdir -p "$BUILD_DIR"
    kmake tinyconfig >"$VAMP_GUEST_DIR/config.log" 2>&1 || die "make tinyconfig failed (see $VAMP_GUEST_DIR/config.log)"
    for o in "${REQUIRED_Y[@]}"; do args+=(--enable "$o"); done
    for o in "${REQUIRED_VAL[@]}"; do args+=(--set-val "${o%%=*}" "${o#*=}"); done
    for o in "${REQUIRED_N[@]}"; do args+=(--disable "$o"); done
    "$SRC_DIR/scripts/config" --file "$BUILD_DIR/.config" "${args[@]}"
    kmake olddefconfig >>"$VAMP_GUEST_DIR/config.log" 2>&1 || die "make olddefconfig failed"
    verify_config "$BUILD_DIR/.config"
}

# Fail loudly unless every required option has its value in the final .config.
verify_config() {
    local cfg=$1 o bad=()
    for o in "${REQUIRED_Y[@]}"; do
        grep -qx "CONFIG_$o=y" "$cfg" || bad+=("CONFIG_$o=y (have: $(grep -E "^(# )?CONFIG_${o}[= ]" "$cfg" || echo absent))")
    done
    for o in "${REQUIRED_VAL[@]}"; do
        grep -qx "CONFIG_$o" "$cfg" || bad+=("CONFIG_$o (have: $(grep -E "^(# )?CONFIG_${o%%=*}[= ]" "$cfg" || echo absent))")
    done
    for o in "${REQUIRED_N[@]}"; do
        grep -q "^CONFIG_$o=" "$cfg" && bad+=("CONFIG_$o off (have: $(grep "^CONFIG_$o=" "$cfg"))")
    done
    if [[ ${#bad[@]} -gt 0 ]]; then
        log "the final .config lacks required options (a dependency is missing?):"
        for o in "${bad[@]}"; do log "  $o"; done
        die "kernel configuration check failed: $cfg"
    fi
    log "all ${#REQUIRED_Y[@]} required =y options, ${#REQUIRED_VAL[@]} values and ${#REQUIRED_N[@]} =n options verified"
}

build() {
    log "make -j$JOBS bzImage (6-9 min on 2 cores; log: $VAMP_GUEST_DIR/build.log)"
    kmake -j"$JOBS" bzImage >"$VAMP_GUEST_DIR/build.log" 2>&1 ||
        { tail -n 30 "$VAMP_GUEST_DIR/build.log" >&2; die "kernel build failed (see $VAMP_GUEST_DIR/build.log)"; }
    cp "$BUILD_DIR/arch/x86/boot/bzImage" "$VAMP_GUEST_DIR/bzImage.tmp"
    mv -f "$VAMP_GUEST_DIR/bzImage.tmp" "$VAMP_GUEST_DIR/bzImage"
    cp "$BUILD_DIR/.config" "$VAMP_GUEST_DIR/config"
    kmake -s kernelrelease >"$VAMP_GUEST_DIR/kernel-release" 2>/dev/null || true
}

apt_ensure make gcc bc flex bison libelf-dev libssl-dev xz-utils perl
mkdir -p "$VAMP_GUEST_DIR"
step "fetch $SRC_PKG" fetch_source
ver=$(cached_src_version)
want=$(recipe "$ver")
if stamp_ok "$STAMP" "$want" && [[ -f $VAMP_GUEST_DIR/bzImage ]]; then
    log "kernel is up to date"
    verify_config "$VAMP_GUEST_DIR/config"
else
    rm -f "$STAMP"
    step "extract source" extract_source
    step "configure (tinyconfig + fragment)" configure
    step "build bzImage" build
    verify_config "$VAMP_GUEST_DIR/config"
    stamp_write "$STAMP" "$want"
fi
log "bzImage: $(stat -c %s "$VAMP_GUEST_DIR/bzImage") bytes, release $(cat "$VAMP_GUEST_DIR/kernel-release" 2>/dev/null || echo '?'), source $SRC_PKG $ver"
log "guest-kernel done in $(fmt_ms $(($(now_ms) - t_start)))"
echo "$VAMP_GUEST_DIR/bzImage"

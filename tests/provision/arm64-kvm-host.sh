#!/bin/bash
# An emulated arm64 KVM host: Debian's arm64 kernel booted by qemu-system-aarch64 (from the
# arm64 toolchain root) on the `virt` machine with virtualization=on, which gives the guest EL2,
# so its kernel offers /dev/kvm (nested KVM under TCG: slow, but a micro-VM runs).
#
#   arm64-kvm-host.sh provision               fetch the kernel and busybox (cached, stamped)
#   arm64-kvm-host.sh run BINARY [ARGS...]    boot the host with BINARY (an aarch64-linux-gnu
#                                             program, dynamically linked) and run it there
#
# `run` builds an initramfs (busybox, the cross glibc, BINARY as /bin/payload), boots, runs
# `payload ARGS` with /proc /sys /dev /dev/shm /tmp mounted, powers off, and exits with the payload's
# exit status (1 if the guest never reported one). The console goes to stdout.
# Cache: $VAMP_ARM64_DIR/kvm-host/ (the kernel Image, busybox, the .debs).
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
# shellcheck source=SCRIPTDIR/arm64-lib.sh
. "$VAMP_PROVISION_DIR/arm64-lib.sh"
VAMP_LOG_TAG=arm64-kvm-host

HOST_DIR="$VAMP_ARM64_DIR/kvm-host"
STAMP="$HOST_DIR/stamp"
RECIPE="arm64-kvm-host v2: newest linux-binary-unsigned-VERSION-arm64 (generic flavour) and busybox-static:arm64 of the root's sid"
# Exit status marker the guest's /init prints.
RC_MARK=VAMP-ARM64-RC

need_root

provision() {
    if stamp_ok "$STAMP" "$RECIPE" && [[ -f $HOST_DIR/Image && -x $HOST_DIR/busybox ]]; then
        log "kernel and busybox are up to date ($HOST_DIR)"
        return 0
    fi
    [[ -f $VAMP_ARM64_ROOT/usr/bin/qemu-system-aarch64 ]] ||
        die "no qemu-system-aarch64 in $VAMP_ARM64_ROOT: run tests/provision/arm64-toolchain.sh first"
    rm -rf "$HOST_DIR"
    mkdir -p "$HOST_DIR/dl"
    local kernel
    # The unsigned binary package holds the plain Image (vmlinuz.unsigned) and has KVM built in.
    kernel=$(arm64_exec apt-cache search --names-only '^linux-binary-unsigned-[0-9][^-]*-arm64$' |
        awk '{ print $1 }' | sort -V | tail -n 1)
    [[ -n $kernel ]] || die "the root's sid lists no linux-binary-unsigned-*-arm64"
    log "fetching $kernel and busybox-static:arm64"
    (cd "$HOST_DIR/dl" && arm64_exec apt-get download -q "$kernel" busybox-static:arm64) \
        >"$HOST_DIR/download.log" 2>&1 || die "download failed, see $HOST_DIR/download.log"
    local deb
    for deb in "$HOST_DIR"/dl/*.deb; do
        dpkg-deb -x "$deb" "$HOST_DIR/x"
    done
    find "$HOST_DIR/x/usr/lib/modules" -name vmlinuz.unsigned -exec cp {} "$HOST_DIR/Image" \;
    cp "$HOST_DIR/x/usr/bin/busybox" "$HOST_DIR/busybox"
    [[ -f $HOST_DIR/Image ]] || die "no vmlinuz.unsigned in $kernel"
    echo "$kernel" >"$HOST_DIR/kernel-package"
    rm -rf "$HOST_DIR/x" "$HOST_DIR/dl"
    stamp_write "$STAMP" "$RECIPE"
}

run() {
    local binary=$1
    shift
    [[ -f $binary ]] || die "no such program: $binary"
    stamp_ok "$STAMP" "$RECIPE" || die "not provisioned: run '$0 provision' first"
    local work
    work=$(mktemp -d /tmp/vamp-arm64-host.XXXXXX)
    # shellcheck disable=SC2064 # expand now: the path is fixed
    trap "rm -rf '$work'" EXIT
    local root=$work/root lib
    mkdir -p "$root"/{bin,lib,proc,sys,dev,tmp}
    cp "$HOST_DIR/busybox" "$root/bin/busybox"
    for lib in ld-linux-aarch64.so.1 libc.so.6 libgcc_s.so.1 libm.so.6; do
        cp -L "$VAMP_ARM64_ROOT/usr/aarch64-linux-gnu/lib/$lib" "$root/lib/"
    done
    cp "$binary" "$root/bin/payload"
    # The payload's arguments, one per line, read back by /init (no shell quoting games).
    printf '%s\n' "$@" >"$root/args"
    cat >"$root/init" <<EOI
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /dev/shm && mount -t tmpfs shm /dev/shm
echo "arm64 KVM host: \$(uname -r), \$(ls /dev/kvm 2>&1), \$(dmesg | grep -o 'VHE mode initialized.*' | head -n 1)"
set --
while IFS= read -r a; do set -- "\$@" "\$a"; done </args
/bin/payload "\$@"
echo "$RC_MARK \$?"
poweroff -f
EOI
    chmod 755 "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"
    local console=$work/console.log rc=0
    # -cpu max with pauth-impdef: pointer authentication the cheap way under TCG.
    # arm64_exec under a timeout ($work is under /tmp, which the wrapper binds).
    timeout 1200 env VAMP_ROOT="$VAMP_ARM64_ROOT" "$VAMP_PROVISION_DIR/qemu" --exec qemu-system-aarch64 \
        -machine virt,virtualization=on,gic-version=3 -cpu max,pauth-impdef=on -accel tcg \
        -smp 2 -m 1024 -nographic -nodefaults -serial stdio -no-reboot \
        -kernel "$HOST_DIR/Image" -initrd "$work/initrd.gz" \
        -append "console=ttyAMA0 rdinit=/init panic=-1 quiet" </dev/null | tee "$console" || rc=$?
    local status
    status=$(sed -n "s/^$RC_MARK \([0-9]*\).*/\1/p" "$console" | tail -n 1)
    if [[ -z $status ]]; then
        log "the arm64 KVM host never reported the payload's exit status (QEMU exit $rc)"
        return 1
    fi
    return "$status"
}

case ${1:-} in
    provision) step "provision the arm64 KVM host" provision ;;
    run)
        shift
        [[ $# -ge 1 ]] || die "usage: $0 run BINARY [ARGS...]"
        run "$@"
        ;;
    *) die "usage: $0 provision | run BINARY [ARGS...]" ;;
esac

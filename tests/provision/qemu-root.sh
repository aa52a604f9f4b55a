#!/bin/bash
# Provision QEMU >= 10.2 (for vhost-user-test-device-pci) on Debian bookworm:
# a Debian trixie root (debootstrap --variant=minbase) with qemu-system-x86 from trixie-backports.
# Output: $VAMP_ROOT (default $VAMP_CACHE/trixie-root); run QEMU through tests/provision/qemu.
# Idempotent: a stamp file makes the second run a quick check. Prints the QEMU version on stdout.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
VAMP_LOG_TAG=qemu-root

# Bump when the recipe changes: the next run rebuilds the root.
RECIPE="trixie-root v1: minbase, trixie+trixie-backports, qemu-system-x86 from trixie-backports"
STAMP="$VAMP_CACHE/trixie-root.stamp"
BOOTSTRAP_MARK="$VAMP_ROOT/.vamp-debootstrap-done"
QEMU="$VAMP_PROVISION_DIR/qemu"

need_root
t_start=$(now_ms)

do_debootstrap() {
    debootstrap_root trixie "$VAMP_ROOT" "$VAMP_CACHE/debootstrap.log"
}

do_qemu_install() {
    prepare_root_apt "$VAMP_ROOT" trixie trixie-backports
    {
        "$QEMU" --exec apt-get update -qq &&
            "$QEMU" --exec env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends -t trixie-backports qemu-system-x86 &&
            "$QEMU" --exec apt-get clean
    } >"$VAMP_CACHE/qemu-install.log" 2>&1 || die "QEMU install failed, see $VAMP_CACHE/qemu-install.log"
}

check_qemu() {
    local ver major minor
    ver="$("$QEMU" --version | head -n1)" || die "QEMU does not run in the root"
    [[ $ver =~ version\ ([0-9]+)\.([0-9]+) ]] || die "cannot parse QEMU version: $ver"
    major=${BASH_REMATCH[1]}
    minor=${BASH_REMATCH[2]}
    if ((major < 10 || (major == 10 && minor < 2))); then
        die "QEMU $major.$minor is too old: vhost-user-test-device-pci needs >= 10.2"
    fi
    # QEMU exits 0 even for an unknown device's help: look at what it prints.
    if "$QEMU" -nodefaults -device vhost-user-test-device-pci,help 2>&1 | grep -q 'virtio-id='; then
        log "vhost-user-test-device-pci: accepted (-device vhost-user-test-device-pci,help lists virtio-id)"
    elif "$QEMU" -nodefaults -device help 2>/dev/null | grep -q '"vhost-user-test-device-pci"'; then
        log "vhost-user-test-device-pci: listed in -device help"
    else
        die "this QEMU has no vhost-user-test-device-pci"
    fi
    echo "$ver"
}

if stamp_ok "$STAMP" "$RECIPE" && [[ -x $VAMP_ROOT/usr/bin/qemu-system-x86_64 ]]; then
    log "trixie root is up to date ($VAMP_ROOT)"
else
    rm -f "$STAMP"
    if [[ ! -f $BOOTSTRAP_MARK ]]; then
        step debootstrap do_debootstrap
    else
        log "debootstrap already done ($VAMP_ROOT)"
    fi
    step "install qemu-system-x86 (trixie-backports)" do_qemu_install
fi
step "check QEMU" check_qemu
stamp_write "$STAMP" "$RECIPE"
log "qemu-root done in $(fmt_ms $(($(now_ms) - t_start)))"

#!/bin/bash
# Provision the whole end-to-end test environment, in order, with per-step and total timing:
#   1. qemu-root.sh      Debian trixie root with QEMU 11.x (trixie-backports)
#   2. guest-kernel.sh   minimal 6.12 PREEMPT_RT guest kernel with the rpmsg drivers
#   3. initramfs.sh      busybox-static for the initramfs images (--fetch-only)
#   4. guest-agent.sh    static vamp-guest-agent for the guest
#   5. remote-core.sh    the test remote core module (tests/remote-core) for that kernel
# Idempotent: a second run only checks stamps (a few seconds).
# Pass --smoke to run boot-smoke.sh at the end.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
VAMP_LOG_TAG=all

smoke=0
for a in "$@"; do
    case $a in
        --smoke) smoke=1 ;;
        *) die "usage: all.sh [--smoke]" ;;
    esac
done

need_root
t0=$(now_ms)
summary=()
run() {
    local name=$1 script=$2 t rc=0
    shift 2
    t=$(now_ms)
    step "$name" bash "$VAMP_PROVISION_DIR/$script" "$@" >/dev/null || rc=$?
    summary+=("$(printf '%-14s %8s%s' "$name" "$(fmt_ms $(($(now_ms) - t)))" "$([[ $rc -eq 0 ]] || echo '  FAILED')")")
    if [[ $rc -ne 0 ]]; then
        printf '%s\n' "${summary[@]}" >&2
        die "$name failed"
    fi
}

run qemu-root qemu-root.sh
run guest-kernel guest-kernel.sh
run busybox initramfs.sh --fetch-only
run guest-agent guest-agent.sh
run remote-core remote-core.sh
if [[ $smoke -eq 1 ]]; then
    run boot-smoke boot-smoke.sh
fi

log "summary (cache: $VAMP_CACHE):"
for l in "${summary[@]}"; do log "  $l"; done
log "  total          $(fmt_ms $(($(now_ms) - t0)))"
echo "QEMU:   $("$VAMP_PROVISION_DIR/qemu" --version | head -n1)"
echo "kernel: $VAMP_GUEST_DIR/bzImage ($(cat "$VAMP_GUEST_DIR/kernel-release" 2>/dev/null || echo '?'))"
echo "agent:  $VAMP_GUEST_DIR/vamp-guest-agent"
echo "rproc:  $VAMP_GUEST_DIR/vamp_test_rproc.ko"
echo "qemu:   $VAMP_PROVISION_DIR/qemu"

#!/bin/bash
# Boot smoke test: boot the guest kernel under TCG with an initramfs whose /init prints
# VAMP-BOOT-OK, lists /sys/bus/virtio/devices and /dev/rpmsg*, runs the guest agent and
# powers off with `reboot -f` (no ACPI; QEMU's -no-reboot turns the reset into exit 0).
#
# It also boots with a virtio-rng-pci device (its backend is built into QEMU) and reads
# /dev/hwrng: that proves virtio-pci discovery, virtqueues and INTx interrupts work in this
# kernel without a vhost-user backend.
#
# The rpmsg tests will add the vhost-user device from shared/notes/test-machine.md instead:
#   -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem
#   -chardev socket,id=c0,path=SOCK
#   -device vhost-user-test-device-pci,chardev=c0,virtio-id=7,num_vqs=2,vq_size=256
# (rpmsg has no config space: config_size stays 0; -m must equal the memfd size.)
#
# Needs: qemu-root.sh, guest-kernel.sh and guest-agent.sh done (all.sh). Output: the
# guest console log in $VAMP_CACHE/smoke/console.log; exit 0 only if the markers appeared.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
VAMP_LOG_TAG=boot-smoke

QEMU="$VAMP_PROVISION_DIR/qemu"
KERNEL="$VAMP_GUEST_DIR/bzImage"
AGENT="$VAMP_GUEST_DIR/vamp-guest-agent"
SMOKE="$VAMP_CACHE/smoke"
TIMEOUT_S="${VAMP_SMOKE_TIMEOUT:-120}"
# tsc=reliable: under TCG the timer interrupts lag, so the clocksource watchdog would declare
# the (correct) TSC unstable and fall back to jiffies (4 ms resolution for guest timings).
APPEND="console=ttyS0 panic=-1 tsc=reliable"

need_root
[[ -f $KERNEL ]] || die "no kernel at $KERNEL: run tests/provision/all.sh"
[[ -x $VAMP_ROOT/usr/bin/qemu-system-x86_64 ]] || die "no QEMU root: run tests/provision/all.sh"
mkdir -p "$SMOKE"

cat >"$SMOKE/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo VAMP-BOOT-OK
echo "uptime at /init: $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)"
echo "virtio devices:"
for d in /sys/bus/virtio/devices/*; do
    [ -e "$d" ] || continue
    echo "  ${d##*/} device=$(cat "$d/device") driver=$(basename "$(readlink "$d/driver" 2>/dev/null)")"
done
echo "rpmsg nodes: $(ls /dev/rpmsg* 2>/dev/null || echo none)"
echo "clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
if [ -c /dev/hwrng ]; then
    bytes=$(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \n')
    if [ ${#bytes} -eq 32 ]; then
        echo "VAMP-VIRTIO-IRQ-OK hwrng=$bytes"
    fi
    grep -i virtio /proc/interrupts
fi
if [ -x /bin/vamp-guest-agent ]; then
    /bin/vamp-guest-agent list | tail -n 1
fi
echo "uptime at end: $(cut -d' ' -f1 /proc/uptime) s"
reboot -f
EOF

agent_args=()
[[ -x $AGENT ]] && agent_args=("$AGENT")
bash "$VAMP_PROVISION_DIR/initramfs.sh" "$SMOKE/initramfs.cpio.gz" "$SMOKE/init" "${agent_args[@]}" >/dev/null

log "booting $KERNEL (TCG, 256M)"
t0=$(now_ms)
"$QEMU" -accel tcg -nographic -nodefaults -serial stdio -no-reboot -m 256M \
    -kernel "$KERNEL" -initrd "$SMOKE/initramfs.cpio.gz" \
    -append "$APPEND" \
    -device virtio-rng-pci \
    </dev/null >"$SMOKE/console.log" 2>&1 &
qpid=$!

t_marker=""
# The boot time: when the marker first shows on the console.
note_marker() {
    if [[ -z $t_marker ]] && grep -q '^VAMP-BOOT-OK' "$SMOKE/console.log"; then
        t_marker=$(now_ms)
    fi
}
wait_guest "$qpid" "$t0" "$TIMEOUT_S" "$SMOKE/console.log" note_marker
rc=$WAIT_GUEST_RC
t_end=$(now_ms)
[[ -n $t_marker ]] || { grep -q '^VAMP-BOOT-OK' "$SMOKE/console.log" && t_marker=$t_end; }

sed 's/^/  | /' "$SMOKE/console.log" | tr -d '\r' | grep -v '^  | $' | tail -n 25 >&2
[[ $rc -eq 0 ]] || die "QEMU exited with status $rc (see $SMOKE/console.log)"
[[ -n $t_marker ]] || die "no VAMP-BOOT-OK marker (see $SMOKE/console.log)"
grep -q '^VAMP-VIRTIO-IRQ-OK' "$SMOKE/console.log" ||
    die "virtio-rng-pci gave no data: virtio-pci INTx does not work (see $SMOKE/console.log)"
if grep -q 'BUG:' "$SMOKE/console.log"; then
    die "the kernel logged a BUG (see $SMOKE/console.log)"
fi
log "VAMP-BOOT-OK after $(fmt_ms $((t_marker - t0))) (QEMU start to /init), QEMU exit after $(fmt_ms $((t_end - t0)))"
echo "boot-smoke: ok, marker at $(fmt_ms $((t_marker - t0))), total $(fmt_ms $((t_end - t0)))"

#!/bin/bash
# dom0-hub smoke test: the R5's channels offered to a guest through the hub, against the real
# kernel. Boots the guest kernel under TCG as dom0 with the test remote core
# (vamp_test_rproc.ko, standing in for an R5 behind the zynqmp_r5 driver), and runs inside it
# this checkout's vhost-user-rpmsg (static: remote-core-cli.sh) with configs/dom0-hub.toml as
# committed: the hub starts r5-0 through sysfs (firmware into /lib/firmware, recovery enabled),
# waits for its channels and offers "rpmsg-client-sample" to guest "domu" only. A native guest
# (`vamp guest`, vamp's own vhost-user frontend, static too) on domu's socket echoes 1000
# messages of 1..496 bytes through the hub and the kernel's rpmsg to the core, byte for byte;
# guest "other" is never offered the channel; a crash reported through debugfs while domu pings
# makes the hub withdraw the channel (its kernel endpoint hangs up) and domu's ping end, the
# kernel's recovery brings it back, the hub offers it again and domu echoes 1000 more.
# The guest kernel has no CONFIG_SECCOMP: the hub runs with --no-sandbox here (its sandbox is
# tested on the host: vmm-backend/tests/sandbox.rs).
# Each step prints a DH-STEP line; the host checks them all.
# Needs: all.sh done (kernel with modules, remote-core.sh) and cargo. Output: the console log in
# $VAMP_CACHE/dom0-hub-smoke/console.log; exit 0 only if every step passed.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
VAMP_LOG_TAG=dom0-hub-smoke

KERNEL="$VAMP_GUEST_DIR/bzImage"
MODULE="$VAMP_GUEST_DIR/vamp_test_rproc.ko"
WORK="$VAMP_CACHE/dom0-hub-smoke"
TIMEOUT_S="${VAMP_SMOKE_TIMEOUT:-600}"
APPEND="console=ttyS0 panic=-1 tsc=reliable"
STEPS=10

need_root
for f in "$KERNEL" "$MODULE"; do
    [[ -f $f ]] || die "missing $f: run tests/provision/all.sh"
done
mkdir -p "$WORK"
# The test core's firmware, written by this checkout's vamp-test-firmware (tests/support).
make_firmware=$(bash "$VAMP_PROVISION_DIR/remote-core-cli.sh" vamp-test-support:vamp-test-firmware)
"$make_firmware" "$WORK/vamp-test-core.elf"

cat >"$WORK/init" <<'EOF_INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
R=/sys/class/remoteproc/remoteproc0
D=/sys/kernel/debug/remoteproc/remoteproc0
C=/etc/vamp/dom0-hub.toml
LOG=/tmp/hub.log
ok() { echo "DH-STEP $1 ok: $2"; }
bad() { echo "DH-STEP $1 FAILED: $2"; }
line() { tr '\n\t' '  '; }
# poll COND [TENTHS]: evaluate COND every 0.1 s until it holds, at most TENTHS (600) times.
poll() {
    i=0
    while ! eval "$1"; do
        [ $i -ge "${2:-600}" ] && return 1
        sleep 0.1
        i=$((i + 1))
    done
}
offers() { grep -c 'channel "rpmsg-client-sample" (core address 0x400) offered to the hub' $LOG; }
withdrawals() { grep -c 'channel "rpmsg-client-sample" withdrawn' $LOG; }
crashes() { dmesg | grep -c 'crash detected in vamp-test-core'; }
boots() { dmesg | grep -c 'remote processor vamp-test-core is now up'; }
ping() {
    out=$(vamp guest --socket /run/vamp-domu.sock --ping rpmsg-client-sample --count 1000 \
        --timeout 120 --tag domu 2>&1)
    rc=$?
    [ $rc -eq 0 ] && echo "$out" | grep -q "1000/1000 echoes matched" &&
        ok "$1" "$(echo "$out" | tail -n 2 | line)" || bad "$1" "exit $rc: $(echo "$out" | tail -n 5 | line)"
}
echo VAMP-BOOT-OK
insmod /lib/modules/vamp_test_rproc.ko && [ "$(cat $R/state)" = offline ] &&
    ok insmod "$(cat $R/name) state=$(cat $R/state)" || bad insmod "state=$(cat $R/state)"
RUST_LOG=info vhost-user-rpmsg --config $C --no-sandbox >$LOG 2>&1 &
HUB=$!
poll '[ -S /run/vamp-domu.sock ] && [ "$(offers)" -ge 1 ]' &&
    [ "$(cat $R/state)" = running ] && [ "$(cat $R/firmware)" = vamp-r5-echo.elf ] &&
    [ "$(cat $R/recovery)" = enabled ] &&
    ok hub-started-core "state=$(cat $R/state) firmware=$(cat $R/firmware) recovery=$(cat $R/recovery); $(grep 'offered to the hub' $LOG | cut -d' ' -f3- | line)" ||
    bad hub-started-core "state=$(cat $R/state); $(tail -n 5 $LOG | line)"
ping echo-through-hub
# "other" is a guest of the hub too, but no [[channel]] offers it the R5's names.
out=$(vamp guest --socket /run/vamp-other.sock --ping rpmsg-client-sample --count 1 --timeout 5 --tag other 2>&1)
rc=$?
[ $rc -ne 0 ] && ! echo "$out" | grep -q "echoes matched" &&
    ok not-offered "exit $rc: $(echo "$out" | tail -n 1 | line)" || bad not-offered "exit $rc: $(echo "$out" | line)"
# A crash (debugfs, 1: watchdog) while domu pings without end: the kernel's recovery reboots
# the core at once; the hub's endpoint for domu hangs up, the channel is withdrawn from domu
# (the name-service destroy unbinds its endpoint: its ping stops at once, well before its 60 s
# echo timeout, with "endpoint has no destination") and offered again.
vamp guest --socket /run/vamp-domu.sock --ping rpmsg-client-sample --count 1000000 \
    --timeout 60 --tag long >/tmp/long.out 2>&1 &
LONG=$!
poll 'grep -q "sending 1000000 messages" /tmp/long.out' && sleep 1
c0=$(crashes)
b0=$(boots)
t0=$(date +%s)
echo 1 >$D/crash
poll '[ "$(crashes)" -gt $c0 ] && [ "$(boots)" -gt $b0 ]' && [ "$(cat $R/state)" = running ] &&
    ok crash-recovered "$(dmesg | grep 'crash detected' | tail -n 1 | cut -d] -f2-), booted again" ||
    bad crash-recovered "$(crashes) crashes, $(boots) boots; state=$(cat $R/state)"
poll '[ "$(withdrawals)" -ge 1 ]' &&
    ok withdrawn "$(grep 'channel "rpmsg-client-sample" withdrawn' $LOG | tail -n 1 | cut -d' ' -f3- | line)" ||
    bad withdrawn "$(tail -n 8 $LOG | line)"
poll '! kill -0 $LONG 2>/dev/null' 300 && [ $(($(date +%s) - t0)) -lt 30 ] &&
    grep -q "sending 1000000 messages" /tmp/long.out && ! grep -q "1000000/1000000" /tmp/long.out &&
    grep -q "endpoint has no destination" /tmp/long.out &&
    ok guest-saw-withdrawal "the endless ping ended $(($(date +%s) - t0)) s after the crash: $(tail -n 2 /tmp/long.out | line)" ||
    bad guest-saw-withdrawal "$(tail -n 3 /tmp/long.out | line)"
poll '[ "$(offers)" -ge 2 ]' &&
    ok offered-again "$(offers) offers of rpmsg-client-sample" || bad offered-again "$(tail -n 8 $LOG | line)"
ping echo-after-recovery
kill -0 $HUB && ! grep -q panicked $LOG && ok hub-alive "$(grep -c 'link up' $LOG) link-ups logged" ||
    bad hub-alive "$(tail -n 8 $LOG | line)"
echo "hub log:"; sed 's/^/hub| /' $LOG
kill $HUB
echo DH-DONE
reboot -f
EOF_INIT

# The hub and the native guest from this checkout (static), without their symbols.
bins=$(bash "$VAMP_PROVISION_DIR/remote-core-cli.sh" vamp-vmm-backend:vhost-user-rpmsg vamp-cli:vamp)
strip -o "$WORK/vhost-user-rpmsg" "$(sed -n 1p <<<"$bins")"
strip -o "$WORK/vamp" "$(sed -n 2p <<<"$bins")"

bash "$VAMP_PROVISION_DIR/initramfs.sh" --add "$MODULE:/lib/modules/vamp_test_rproc.ko" \
    --add "$WORK/vamp-test-core.elf:/srv/firmware/vamp-r5-echo.elf" \
    --add "$VAMP_PROVISION_DIR/../../configs/dom0-hub.toml:/etc/vamp/dom0-hub.toml" \
    "$WORK/initramfs.cpio.gz" "$WORK/init" "$WORK/vhost-user-rpmsg" "$WORK/vamp" >/dev/null

log "booting $KERNEL (TCG, 512M) as dom0 with the test remote core, the hub and a native guest"
run_step_guest "$KERNEL" "$WORK/initramfs.cpio.gz" "$APPEND" 512 "$TIMEOUT_S" "$WORK/console.log" \
    DH "$STEPS" 'DH-STEP|hub\||BUG|WARNING'
echo "dom0-hub-smoke: ok, $STEPS steps"

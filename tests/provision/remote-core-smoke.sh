#!/bin/bash
# Remote-core smoke test: boot the guest kernel under TCG with the test remote core
# (vamp_test_rproc.ko) and drive it through the upstream remoteproc + rpmsg stack:
#   insmod; firmware (vamp-test-firmware, tests/support) in /lib/firmware; start through
#   /sys/class/remoteproc/remoteproc0/state; wait for the two announced channels in
#   /sys/bus/rpmsg/devices; echo messages through /dev/rpmsg_ctrl0 (RPMSG_CREATE_EPT_IOCTL, by
#   vamp-guest-agent); read the trace from debugfs; stop (channels gone); start again; crash
#   through debugfs, then by a "crash" message to the core, and see recovery bring the channels
#   back and echo again each time; "goodbye!" on the sample channel withdraws it. Then
#   remoteproc-vm (this checkout's, static: remote-core-cli.sh) drives the same core with
#   configs/remotes-dom0-r5.toml, as dom0 would: stop, start (firmware installed, recovery set),
#   status, echoes through its own endpoints (ping), trace, the refusals (its own and the
#   kernel's EINVAL/EBUSY), a crash the kernel recovers, and with recovery = "none" a crash
#   that stays until `recover`; rmmod.
# Each step prints a RC-STEP line; the host checks them all.
# Needs: all.sh done (kernel with modules, guest agent, remote-core.sh) and cargo. Output: the
# console log in $VAMP_CACHE/remote-core-smoke/console.log; exit 0 only if every step passed.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
VAMP_LOG_TAG=remote-core-smoke

KERNEL="$VAMP_GUEST_DIR/bzImage"
AGENT="$VAMP_GUEST_DIR/vamp-guest-agent"
MODULE="$VAMP_GUEST_DIR/vamp_test_rproc.ko"
WORK="$VAMP_CACHE/remote-core-smoke"
TIMEOUT_S="${VAMP_SMOKE_TIMEOUT:-300}"
APPEND="console=ttyS0 panic=-1 tsc=reliable"
# Steps /init reports; all must pass.
STEPS=41

need_root
for f in "$KERNEL" "$AGENT" "$MODULE"; do
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
A=/bin/vamp-guest-agent
ok() { echo "RC-STEP $1 ok: $2"; }
bad() { echo "RC-STEP $1 FAILED: $2"; }
channels() {
    s=$($A wait-channel --name rpmsg-client-sample --timeout-ms 60000) &&
        d=$($A wait-channel --name rpmsg-openamp-demo-channel --timeout-ms 60000) &&
        ok "$1" "sample at $s, demo at $d; $(ls /sys/bus/rpmsg/devices | tr '\n' ' ')" ||
        bad "$1" "channels: $(ls /sys/bus/rpmsg/devices | tr '\n' ' ')"
}
echo_test() {
    out=$($A echo-client --ctrl /dev/rpmsg_ctrl0 --name "$2" --dst "$3" --count 20 --timeout-ms 20000 2>&1) &&
        ok "$1" "$out" || bad "$1" "$out"
}
echo VAMP-BOOT-OK
if insmod /lib/modules/vamp_test_rproc.ko; then
    ok insmod "$(cat $R/name) state=$(cat $R/state) firmware=$(cat $R/firmware)"
else
    bad insmod "exit $?"
fi
echo start >$R/state && ok start "state=$(cat $R/state)" || bad start "state=$(cat $R/state)"
channels channels
echo_test echo-sample rpmsg-client-sample 0x400
echo_test echo-demo rpmsg-openamp-demo-channel 0x401
echo "trace:"; cat $D/trace0
grep -q "echo" $D/trace0 && ok trace "$(grep -c echo $D/trace0) echo lines" || bad trace "no echo lines"
echo stop >$R/state
$A wait-channel --name rpmsg-client-sample --gone --timeout-ms 30000 >/dev/null &&
    ok stop "state=$(cat $R/state), channels gone" || bad stop "state=$(cat $R/state)"
echo start >$R/state
channels restart
# Crash N: wait until the kernel logged the Nth crash and the recovery's boot (boot N+2: the
# first start and the restart came before), so the channels seen next are the recovered core's.
crashes() { dmesg | grep -c 'crash detected in vamp-test-core'; }
boots() { dmesg | grep -c 'remote processor vamp-test-core is now up'; }
crashed() {
    i=0
    while { [ "$(crashes)" -lt "$2" ] || [ "$(boots)" -lt $(($2 + 2)) ]; } && [ $i -lt 300 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    [ "$(crashes)" -ge "$2" ] && [ "$(boots)" -ge $(($2 + 2)) ] &&
        ok "$1" "$(dmesg | grep 'crash detected' | tail -n 1 | cut -d] -f2-), booted again" ||
        bad "$1" "$(crashes) crashes and $(boots) boots logged, want $2 and $(($2 + 2))"
}
# The core's debugfs crash file takes the crash type as a number (1: watchdog).
echo 1 >$D/crash
crashed crash-debugfs 1
channels recovery
echo_test echo-after-recovery rpmsg-client-sample 0x400
# The core reports a crash itself when told "crash" on one of its channels.
out=$($A send --ctrl /dev/rpmsg_ctrl0 --name rpmsg-openamp-demo-channel --dst 0x401 --text crash 2>&1)
echo "send crash: $out"
crashed crash-by-message 2
channels recovery-2
echo_test echo-after-recovery-2 rpmsg-openamp-demo-channel 0x401
# The sample channel's last message: the core echoes it and withdraws the channel.
out=$($A send --ctrl /dev/rpmsg_ctrl0 --name rpmsg-client-sample --dst 0x400 --text 'goodbye!' 2>&1)
$A wait-channel --name rpmsg-client-sample --gone --timeout-ms 30000 >/dev/null &&
    $A wait-channel --name rpmsg-openamp-demo-channel --timeout-ms 1000 >/dev/null &&
    ok goodbye "$out; sample withdrawn, demo left: $(ls /sys/bus/rpmsg/devices | tr '\n' ' ')" ||
    bad goodbye "$out; $(ls /sys/bus/rpmsg/devices | tr '\n' ' ')"
echo "resource table:"; cat $D/resource_table
echo "state=$(cat $R/state) recovery=$(cat $D/recovery 2>/dev/null)"

# --- remoteproc-vm drives the same core, as dom0 does: configs/remotes-dom0-r5.toml as committed, and a
# variant with recovery = "none" whose image is already inside /lib/firmware (a subdirectory).
RV=/bin/remoteproc-vm
C=/etc/vamp/remotes-dom0-r5.toml
CM=/etc/vamp/dom0-r5-manual.toml
sed -e 's|^recovery = "restart"|recovery = "none"|' \
    -e 's|^image = "/srv/firmware/|image = "/lib/firmware/vamp/|' $C >$CM
# One line of what a command printed (stdout and stderr), for the step lines.
line() { tr '\n\t' '  '; }
st() { $RV status --config "$1" r5-0 2>&1 | line; }
# A write to a kernel file, as the shell does it: its error text, and its exit status.
kw() { (echo "$2" >"$1") 2>&1; }
# poll COND: evaluate COND every 0.1 s until it holds, at most 30 s.
poll() {
    i=0
    while ! eval "$1"; do
        [ $i -ge 300 ] && return 1
        sleep 0.1
        i=$((i + 1))
    done
}
out=$($RV stop --config $C r5-0 2>&1) && [ "$out" = "r5-0: offline" ] &&
    $A wait-channel --name rpmsg-openamp-demo-channel --gone --timeout-ms 30000 >/dev/null &&
    [ "$(st $C)" = "r5-0 sysfs offline vamp-test-core.elf " ] &&
    ok rv-stop "$out; status: $(st $C)" || bad rv-stop "$out; status: $(st $C)"
out=$($RV stop --config $C r5-0 2>&1)
rc=$?
kout=$(kw $R/state stop)
krc=$?
[ $rc -eq 1 ] && [ "$out" = "remoteproc-vm: cannot stop a remote that is offline" ] &&
    [ $krc -ne 0 ] && echo "$kout" | grep -q "Invalid argument" &&
    ok rv-stop-refused "$out; the kernel: $kout" || bad rv-stop-refused "exit $rc: $out; kernel exit $krc: $kout"
out=$($RV start --config $C r5-0 2>&1) && echo "$out" | grep -qx "r5-0: running" &&
    [ "$(cat $R/firmware)" = vamp-r5-echo.elf ] && [ "$(cat $R/recovery)" = enabled ] &&
    cmp -s /srv/firmware/vamp-r5-echo.elf /lib/firmware/vamp-r5-echo.elf &&
    ok rv-start "$(echo "$out" | line); firmware=$(cat $R/firmware) recovery=$(cat $R/recovery)" ||
    bad rv-start "$(echo "$out" | line); firmware=$(cat $R/firmware) recovery=$(cat $R/recovery)"
channels rv-channels
echo_test rv-echo rpmsg-client-sample 0x400
# remoteproc-vm's own endpoints (rpmsg_ctrl0, RPMSG_CREATE_EPT_IOCTL): 1000 echoes of 1..496
# bytes on each channel, byte for byte; its endpoint is destroyed when it ends.
rv_ping() {
    out=$($RV ping --config $C r5-0 --channel "$2" --count "$3" 2>&1) &&
        echo "$out" | grep -q "$3/$3 echoes matched" && [ "$(ls /sys/class/rpmsg | line)" = "rpmsg_ctrl0 " ] &&
        ok "$1" "$(echo "$out" | line)" || bad "$1" "$(echo "$out" | line); left: $(ls /sys/class/rpmsg | line)"
}
rv_ping rv-ping-demo rpmsg-openamp-demo-channel 1000
rv_ping rv-ping-sample rpmsg-client-sample 1000
[ "$(st $C)" = "r5-0 sysfs running vamp-r5-echo.elf " ] && ok rv-status "$(st $C)" || bad rv-status "$(st $C)"
out=$($RV start --config $C r5-0 2>&1)
rc=$?
[ $rc -eq 1 ] && [ "$out" = "remoteproc-vm: cannot start a remote that is running (stop it first)" ] &&
    [ "$(cat $R/state)" = running ] && ok rv-start-refused "$out" || bad rv-start-refused "exit $rc: $out"
# Why remoteproc-vm refuses: the kernel takes a second start (it counts another user), and the
# next stop then only drops that count: the core keeps running.
kout=$(kw $R/state start)
krc=$?
out=$($RV stop --config $C r5-0 2>&1)
[ $krc -eq 0 ] && [ "$out" = "r5-0: running" ] && [ "$(cat $R/state)" = running ] &&
    ok rv-kernel-double-start "the kernel took a second start (exit 0); the stop after it: $out" ||
    bad rv-kernel-double-start "kernel exit $krc: $kout; stop: $out; state=$(cat $R/state)"
kout=$(kw $R/firmware other.elf)
krc=$?
[ $krc -ne 0 ] && echo "$kout" | grep -q "Device or resource busy" && [ "$(cat $R/firmware)" = vamp-r5-echo.elf ] &&
    ok rv-firmware-busy "firmware while running, the kernel: $kout" ||
    bad rv-firmware-busy "kernel exit $krc: $kout; firmware=$(cat $R/firmware)"
# The core's trace buffer is small and wraps: after the pings it holds their last echoes.
out=$($RV trace --config $C r5-0 2>&1) && echo "$out" | grep -q "^echo [0-9]* bytes" &&
    ok rv-trace "$(echo "$out" | grep -c '^echo') echo lines; last: $(echo "$out" | tail -n 1)" ||
    bad rv-trace "$out"
# Recovery enabled: the kernel stops and reboots the core by itself after the crash.
c0=$(crashes)
b0=$(boots)
out=$($RV crash --config $C r5-0 2>&1) &&
    poll '[ "$(crashes)" -gt $c0 ] && [ "$(boots)" -gt $b0 ]' && [ "$(cat $R/state)" = running ] &&
    ok rv-crash-recovered "$out; $(dmesg | grep 'crash detected' | tail -n 1 | cut -d] -f2-), booted again; $(st $C)" ||
    bad rv-crash-recovered "$out; $(crashes) crashes, $(boots) boots; $(st $C)"
channels rv-channels-recovered
echo_test rv-echo-recovered rpmsg-openamp-demo-channel 0x401
# Recovery disabled (recovery = "none"): the core stays crashed until `recover`.
out=$($RV stop --config $C r5-0 2>&1) && out2=$($RV start --config $CM r5-0 2>&1) &&
    [ "$(cat $R/firmware)" = vamp/vamp-r5-echo.elf ] && [ "$(cat $R/recovery)" = disabled ] &&
    [ "$(cat $R/state)" = running ] &&
    ok rv-restart-manual "$out; $(echo "$out2" | line); firmware=$(cat $R/firmware) recovery=$(cat $R/recovery)" ||
    bad rv-restart-manual "$out; $out2; firmware=$(cat $R/firmware) recovery=$(cat $R/recovery)"
channels rv-channels-manual
c0=$(crashes)
b0=$(boots)
out=$($RV crash --config $CM r5-0 2>&1) && poll '[ "$(cat $R/state)" = crashed ]' && sleep 1 &&
    [ "$(st $CM)" = "r5-0 sysfs crashed vamp/vamp-r5-echo.elf " ] && [ "$(boots)" -eq $b0 ] &&
    ok rv-crash-stays "$out; a second later: $(st $CM)" || bad rv-crash-stays "$out; $(st $CM); $(boots) boots, were $b0"
out=$($RV start --config $CM r5-0 2>&1)
rc=$?
[ $rc -eq 1 ] && [ "$out" = "remoteproc-vm: cannot start a remote that is crashed (stop or recover it first)" ] &&
    [ "$(cat $R/state)" = crashed ] && ok rv-start-crashed-refused "$out" || bad rv-start-crashed-refused "exit $rc: $out"
out=$($RV recover --config $CM r5-0 2>&1) && [ "$out" = "r5-0: running" ] && [ "$(boots)" -gt $b0 ] &&
    ok rv-recover "$out; $(dmesg | grep 'recovering' | tail -n 1 | cut -d] -f2-)" ||
    bad rv-recover "$out; $(st $CM)"
channels rv-channels-recover
echo_test rv-echo-recover rpmsg-client-sample 0x400
rv_ping rv-ping-recover rpmsg-openamp-demo-channel 200
# A crashed core can be stopped (the kernel shuts it down without recovering); then recover is
# refused.
out=$($RV crash --config $CM r5-0 2>&1) && poll '[ "$(cat $R/state)" = crashed ]' &&
    out2=$($RV stop --config $CM r5-0 2>&1) && [ "$out2" = "r5-0: offline" ] &&
    out3=$($RV recover --config $CM r5-0 2>&1)
rc=$?
[ "$out2" = "r5-0: offline" ] && [ $rc -eq 1 ] &&
    [ "$out3" = "remoteproc-vm: cannot recover a remote that is offline" ] && [ "$(cat $R/state)" = offline ] &&
    ok rv-crash-stop "$out; stop: $out2; recover: $out3" || bad rv-crash-stop "$out; stop: $out2; recover (exit $rc): $out3"
# The kernel keeps the trace buffers only while the core is up.
out=$($RV trace --config $CM r5-0 2>&1)
rc=$?
[ $rc -eq 1 ] && [ "$out" = "remoteproc-vm: cannot read the trace of a remote that is offline" ] &&
    [ ! -e $D/trace0 ] && ok rv-trace-offline "$out" || bad rv-trace-offline "exit $rc: $out; $(ls $D)"
rmmod vamp_test_rproc && [ ! -e $R ] && ok rmmod "remoteproc0 gone" || bad rmmod "$(ls /sys/class/remoteproc)"
echo RC-DONE
reboot -f
EOF_INIT

# remoteproc-vm from this checkout (static), without its symbols: the initramfs stays small.
rv_bin=$(bash "$VAMP_PROVISION_DIR/remote-core-cli.sh")
strip -o "$WORK/remoteproc-vm" "$rv_bin"

bash "$VAMP_PROVISION_DIR/initramfs.sh" --add "$MODULE:/lib/modules/vamp_test_rproc.ko" \
    --add "$WORK/vamp-test-core.elf:/lib/firmware/vamp-test-core.elf" \
    --add "$WORK/vamp-test-core.elf:/srv/firmware/vamp-r5-echo.elf" \
    --add "$WORK/vamp-test-core.elf:/lib/firmware/vamp/vamp-r5-echo.elf" \
    --add "$VAMP_PROVISION_DIR/../../configs/remotes-dom0-r5.toml:/etc/vamp/remotes-dom0-r5.toml" \
    "$WORK/initramfs.cpio.gz" "$WORK/init" "$AGENT" "$WORK/remoteproc-vm" >/dev/null

log "booting $KERNEL (TCG, 256M) with the test remote core"
run_step_guest "$KERNEL" "$WORK/initramfs.cpio.gz" "$APPEND" 256 "$TIMEOUT_S" "$WORK/console.log" \
    RC "$STEPS" 'RC-STEP|remoteproc|vamp|rpmsg|BUG|WARNING'
echo "remote-core-smoke: ok, $STEPS steps"

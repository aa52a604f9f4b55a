# shellcheck shell=bash
# Shared helpers for the vamp test-environment provisioning scripts.
# Source it from a script that runs under `set -euo pipefail`:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Everything is cached outside the repository, under $VAMP_CACHE:
#   $VAMP_CACHE/trixie-root/      Debian trixie root holding QEMU (qemu-root.sh)
#   $VAMP_CACHE/guest/            bzImage, kernel .config, kernel sources/build (guest-kernel.sh)
#   $VAMP_CACHE/guest-agent/      static vamp-guest-agent binary + cargo target dir (guest-agent.sh)
#   $VAMP_CACHE/smoke/            boot-smoke initramfs and logs (boot-smoke.sh)
#   $VAMP_CACHE/*.stamp           "done" markers checked on the next run

VAMP_CACHE="${VAMP_CACHE:-/var/cache/vamp}"
VAMP_ROOT="${VAMP_ROOT:-$VAMP_CACHE/trixie-root}"
VAMP_GUEST_DIR="${VAMP_GUEST_DIR:-$VAMP_CACHE/guest}"
VAMP_PROVISION_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export VAMP_CACHE VAMP_ROOT VAMP_GUEST_DIR VAMP_PROVISION_DIR

# All diagnostics go to stderr so stdout stays usable for results (paths, versions).
log() {
    printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "${VAMP_LOG_TAG:-provision}" "$*" >&2
}

die() {
    log "ERROR: $*"
    exit 1
}

need_root() {
    [[ ${EUID} -eq 0 ]] || die "must run as root (debootstrap, chroot, mount)"
}

# Milliseconds since the epoch.
now_ms() {
    local ns
    ns=$(date +%s%N)
    echo $((ns / 1000000))
}

# Format a millisecond count as seconds with one decimal: 12345 -> 12.3s
fmt_ms() {
    local ms=$1
    printf '%d.%ds' $((ms / 1000)) $(((ms % 1000) / 100))
}

# step NAME CMD ARGS...: run a command, log how long it took, keep its exit status.
step() {
    local name=$1
    shift
    local t0 rc=0
    t0=$(now_ms)
    log "step '$name' ..."
    "$@" || rc=$?
    log "step '$name' took $(fmt_ms $(($(now_ms) - t0)))$([[ $rc -eq 0 ]] || echo " (FAILED, exit $rc)")"
    return "$rc"
}

# Stamp files: a small text file whose content must match exactly (a version string),
# so that changing the recipe version invalidates old results.
stamp_ok() {
    local file=$1 want=$2
    [[ -f $file ]] && [[ "$(cat "$file")" == "$want" ]]
}

stamp_write() {
    local file=$1 value=$2
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$value" >"$file.tmp"
    mv -f "$file.tmp" "$file"
}

# The Debian mirror of this host, derived at run time (never hard-coded in the repo).
# Override with VAMP_DEBIAN_MIRROR. Security mirrors are skipped.
debian_mirror() {
    if [[ -n ${VAMP_DEBIAN_MIRROR:-} ]]; then
        echo "$VAMP_DEBIAN_MIRROR"
        return 0
    fi
    local uri="" f=/etc/apt/sources.list.d/debian.sources
    if [[ -r $f ]]; then
        uri=$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
    fi
    if [[ -z $uri && -r /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { if ($i !~ /security/) { print $i; exit } else break } }' /etc/apt/sources.list)
    fi
    [[ -n $uri ]] || die "cannot derive a Debian mirror from /etc/apt (set VAMP_DEBIAN_MIRROR)"
    echo "${uri%/}"
}

# apt_ensure PKG...: install the host packages that are missing (apt-get update once first).
_VAMP_APT_UPDATED=0
apt_ensure() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    local aptlog="$VAMP_CACHE/apt.log"
    mkdir -p "$VAMP_CACHE"
    log "installing host packages: ${missing[*]} (log: $aptlog)"
    if [[ $_VAMP_APT_UPDATED -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$aptlog" 2>&1 ||
            { tail -n 20 "$aptlog" >&2; die "apt-get update failed"; }
        _VAMP_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$aptlog" 2>&1 ||
        { tail -n 20 "$aptlog" >&2; die "apt-get install ${missing[*]} failed"; }
}

# Path of the QEMU wrapper (runs qemu-system-x86_64 inside the trixie root).
vamp_qemu() {
    echo "$VAMP_PROVISION_DIR/qemu"
}

# remove_root ROOT: removes a Debian root left half-made; refuses if anything is mounted below
# it (a bind mount left by a killed run would otherwise take the host's files with it).
remove_root() {
    local root
    root="$(readlink -f "$1")"
    if awk -v r="$root" '$5 == r || index($5, r "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
        die "something is mounted below $root: unmount it first"
    fi
    rm -rf --one-file-system "$root"
}

# debootstrap_root SUITE ROOT LOG: a minbase Debian SUITE in ROOT from the host's mirror, its
# output in LOG; marks ROOT/.vamp-debootstrap-done when complete.
debootstrap_root() {
    local suite=$1 root=$2 logfile=$3 mirror
    apt_ensure debootstrap debian-archive-keyring
    mirror="$(debian_mirror)"
    log "debootstrap $suite from the host's Debian mirror into $root"
    [[ -e $root ]] && remove_root "$root"
    mkdir -p "$(dirname "$root")"
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$logfile" 2>&1 ||
        die "debootstrap failed, see $logfile"
    touch "$root/.vamp-debootstrap-done"
}

# prepare_root_apt ROOT SUITE...: points ROOT's apt at the host's mirror for SUITEs, gives it
# name resolution, and forbids services to start inside it.
prepare_root_apt() {
    local root=$1 mirror
    shift
    mirror="$(debian_mirror)"
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOS
Types: deb
URIs: $mirror
Suites: $*
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
}

# wait_guest PID T0_MS TIMEOUT_S CONSOLE_LOG [EACH]: waits for the QEMU process PID started at
# T0_MS (now_ms); calls the function EACH, if given, every 50 ms meanwhile; past TIMEOUT_S it
# kills QEMU, shows the console's tail and dies. Sets WAIT_GUEST_RC to QEMU's exit status.
wait_guest() {
    local pid=$1 t0=$2 timeout_s=$3 console=$4 each=${5:-}
    while kill -0 "$pid" 2>/dev/null; do
        [[ -n $each ]] && "$each"
        if (($(now_ms) - t0 > timeout_s * 1000)); then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            tail -n 40 "$console" >&2
            die "QEMU did not finish within ${timeout_s}s"
        fi
        sleep 0.05
    done
    WAIT_GUEST_RC=0
    wait "$pid" || WAIT_GUEST_RC=$?
}

# run_step_guest KERNEL INITRD APPEND MEM_MB TIMEOUT_S CONSOLE_LOG MARK STEPS SHOW: boots KERNEL
# with INITRD under TCG and judges the steps its /init prints: lines "MARK-STEP NAME ok: ..." or
# "... FAILED: ...", then "MARK-DONE". Shows the console lines matching the regex SHOW, and dies
# unless QEMU exited cleanly, the guest got to MARK-DONE, no step failed, the kernel logged no
# BUG or WARNING, and exactly STEPS steps passed.
run_step_guest() {
    local kernel=$1 initrd=$2 append=$3 mem=$4 timeout_s=$5 console=$6 mark=$7 steps=$8 show=$9
    local t0 qpid n
    t0=$(now_ms)
    "$VAMP_PROVISION_DIR/qemu" -accel tcg -nographic -nodefaults -serial stdio -no-reboot \
        -m "${mem}M" -kernel "$kernel" -initrd "$initrd" -append "$append" \
        </dev/null >"$console" 2>&1 &
    qpid=$!
    wait_guest "$qpid" "$t0" "$timeout_s" "$console"
    tr -d '\r' <"$console" | grep -E "$show" | sed 's/^/  | /' >&2
    [[ $WAIT_GUEST_RC -eq 0 ]] || die "QEMU exited with status $WAIT_GUEST_RC (see $console)"
    grep -q "^$mark-DONE" "$console" || die "the guest did not finish its steps (see $console)"
    grep -q "$mark-STEP .* FAILED" "$console" && die "a step failed (see $console)"
    grep -qE 'BUG:|WARNING:' "$console" && die "the kernel logged a BUG/WARNING (see $console)"
    n=$(grep -c "$mark-STEP .* ok" "$console")
    [[ $n -eq $steps ]] || die "expected $steps passed steps, saw $n (see $console)"
    log "all $n steps passed in $(fmt_ms $(($(now_ms) - t0)))"
}

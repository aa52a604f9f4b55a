#!/bin/bash
# Build a gzip'd cpio initramfs for the test guest:
#   Debian's busybox-static (all applets linked), /init, extra static binaries in /bin.
#
# usage: initramfs.sh [--add SRC:/DEST]... OUTPUT INIT [BINARY...]
#   OUTPUT   path of the .cpio.gz to write (written atomically)
#   INIT     the /init script (or program); it must mount proc, sys and devtmpfs itself
#            (DEVTMPFS_MOUNT does not apply to an initramfs) and end with `reboot -f`
#   BINARY   static executables copied to /bin/<name> (dynamic ones are refused: no libc inside)
#   --add SRC:/DEST   any other file, copied to /DEST
#   initramfs.sh --fetch-only   just install busybox-static (used by all.sh)
#
# The image has /bin /sbin /usr/bin /usr/sbin (busybox applets), /dev/console (so /init gets
# a console before devtmpfs is mounted), empty /proc /sys /dev /tmp /run /etc /root.
# Takes well under a second; nothing is cached except the busybox-static package.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
VAMP_LOG_TAG=initramfs

usage() {
    sed -n '5,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

BUSYBOX=/bin/busybox
adds=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --fetch-only)
            apt_ensure busybox-static cpio gzip
            exit 0
            ;;
        --add)
            [[ $# -ge 2 && $2 == *:/* ]] || die "--add needs SRC:/DEST"
            adds+=("$2")
            shift 2
            ;;
        -h | --help) usage ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done
[[ $# -ge 2 ]] || usage
out=$1
init=$2
shift 2
[[ -f $init ]] || die "no init script: $init"

need_root # mknod /dev/console
apt_ensure busybox-static cpio gzip

is_static() {
    ! readelf -lW "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}
is_static "$BUSYBOX" || die "$BUSYBOX is not static (is busybox-static installed?)"

stage=$(mktemp -d "${TMPDIR:-/tmp}/vamp-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root}
chmod 1777 "$stage/tmp"
cp "$BUSYBOX" "$stage/bin/busybox"
# Link every applet (busybox --list-full prints paths such as usr/bin/awk).
while read -r applet; do
    [[ -n $applet && $applet != bin/busybox ]] || continue
    [[ -e $stage/$applet ]] && continue
    mkdir -p "$stage/$(dirname "$applet")"
    ln -s /bin/busybox "$stage/$applet"
done < <("$BUSYBOX" --list-full)
[[ -e $stage/bin/sh ]] || die "busybox has no sh applet"

install -m 0755 "$init" "$stage/init"
for b in "$@"; do
    [[ -f $b ]] || die "no such binary: $b"
    is_static "$b" || die "$b is dynamically linked: the initramfs has no libc (build it static)"
    install -m 0755 "$b" "$stage/bin/$(basename "$b")"
done
for a in "${adds[@]}"; do
    src=${a%%:/*}
    dest=/${a#*:/}
    [[ -f $src ]] || die "no such file: $src"
    mkdir -p "$stage$(dirname "$dest")"
    cp -p "$src" "$stage$dest"
done
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\n' >"$stage/etc/group"

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -9n >"$out.tmp"
mv -f "$out.tmp" "$out"
log "wrote $out ($(stat -c %s "$out") bytes; init $(basename "$init"); binaries: ${*:-none})"
echo "$out"

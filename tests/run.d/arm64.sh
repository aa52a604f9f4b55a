#!/usr/bin/env bash
# The arm64 lane: builds and tests vamp for the mission's platform (ZynqMP: Cortex-A53 hosts,
# Cortex-R5 remotes) with the Debian sid toolchain provisioned under $VAMP_CACHE
# (tests/provision/arm64-toolchain.sh; every cargo run goes through arm64-run.sh):
#   1. the toolchain root (cached; a stamp check on later runs)
#   2. the crates, fetched once into the root's registry (later runs are offline)
#   3. the no_std engine (vamp-rpmsg, no default features) for three bare-metal targets
#      through -Zbuild-std, with the code size of its own rlib's .text per target
#   4. the whole workspace for aarch64-unknown-linux-gnu (the ZynqMP's A53 hosts), and the hub
#      built for Xen (--features xen)
#   4b. the engine's unit tests for aarch64-unknown-linux-gnu, run under qemu-user
#   5. the firmware's echo for a Cortex-R5 (armv7r-none-eabihf, ELF32), and what
#      `remoteproc-vm inspect` reads from it (its resource table)
#   6. inside an emulated arm64 KVM host (nested KVM under qemu-system-aarch64,
#      tests/provision/arm64-kvm-host.sh), the arm64 KVM backend for real: the remoteproc and
#      hub unit tests, remoteproc's KVM integration tests with the arm64 firmware (echo,
#      matrix, fault, busy-poll, lifecycle, attacks), `remoteproc-vm run echo --ping 1000`, and
#      `vamp demo` (the native link, the hub with two native guests, a KVM remote behind it)
# Each sub-step prints its time; one that cannot run says why; any failure fails the step.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
    echo "arm64: cannot run: provisioning the toolchain root needs root (debootstrap, chroot)"
    echo "arm64: test result: FAILED. 0 passed; 1 failed; (not root)"
    exit 1
fi

# shellcheck source=../provision/lib.sh
. tests/provision/lib.sh
# shellcheck source=../provision/arm64-lib.sh
. tests/provision/arm64-lib.sh
run=tests/provision/arm64-run.sh
failed=()

sub() {
    local name=$1 t0 rc=0
    shift
    t0=$(date +%s)
    echo "arm64: --> $name"
    "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "arm64: <-- $name: ok ($(($(date +%s) - t0)) s)"
    else
        echo "arm64: <-- $name: FAILED ($(($(date +%s) - t0)) s)"
        failed+=("$name")
    fi
    return "$rc"
}

# Build-std (core and alloc from Debian's rust-src) needs the std workspace's crates as well.
std_lock=/usr/lib/rustlib/src/rust/library/Cargo.toml
fetch() {
    local m
    for m in Cargo.toml images/Cargo.toml "$std_lock"; do
        if ! $run cargo fetch --locked --offline --manifest-path "$m" >/dev/null 2>&1; then
            echo "arm64: fetching the crates of $m (first run only)"
            # RUSTC_BOOTSTRAP: the std workspace's manifest uses unstable cargo features.
            VAMP_ARM64_ENV=RUSTC_BOOTSTRAP=1 $run cargo fetch --locked --manifest-path "$m" 2>&1 |
                grep -v '^ *Downloaded ' || true
            VAMP_ARM64_ENV=RUSTC_BOOTSTRAP=1 $run cargo fetch --locked --offline --manifest-path "$m" >/dev/null ||
                return 1
        fi
    done
}

# The engine's code size: the .text of the vamp-rpmsg rlib's objects (its own code only,
# without core, alloc, hashbrown or any monomorphised generic code an application adds).
text_size() {
    local triple=$1 size_tool=$2 rlib
    rlib="$VAMP_ARM64_TARGET/$triple/release/libvamp_rpmsg.rlib"
    $run sh -c "$size_tool -A '$rlib' 2>/dev/null" |
        awk '$1 ~ /^\.text/ { s += $2 } END { print s + 0 }'
}

bare_metal() {
    local triple size_tool bytes
    for spec in aarch64-unknown-none:aarch64-linux-gnu-size armv7r-none-eabihf:arm-none-eabi-size \
        thumbv7em-none-eabihf:arm-none-eabi-size; do
        triple=${spec%%:*}
        size_tool=${spec#*:}
        sub "engine for $triple (build-std)" \
            env VAMP_ARM64_ENV=RUSTC_BOOTSTRAP=1 $run cargo build --offline --locked --quiet -p vamp-rpmsg --no-default-features --release \
            --target "$triple" -Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem ||
            continue
        bytes=$(text_size "$triple" "$size_tool")
        echo "arm64: engine code size for $triple: $bytes bytes of .text (vamp-rpmsg rlib, release)"
    done
}

# Strips the kernel's log lines from the arm64 KVM host's console.
host_console() {
    tr -d '\r' | grep -Ev '^\[ *[0-9]+\.[0-9]+\]'
}

# One test binary of a crate (`--lib` or `--test NAME`), built for aarch64 and run inside the
# emulated arm64 KVM host; ARGS after `--` go to the test harness.
in_kvm_host() {
    local pkg=$1 kind=$2 bin pattern
    shift 2
    [ "${1:-}" = -- ] && shift
    if [ "$kind" = --lib ]; then
        pattern='Executable unittests .*(\(.*\))$'
    else
        pattern="Executable tests/$kind.rs (\\(.*\\))\$"
        kind="--test $kind"
    fi
    # shellcheck disable=SC2086 # $kind is one or two words on purpose
    bin=$($run cargo test --offline --locked -p "$pkg" $kind --target aarch64-unknown-linux-gnu \
        --no-run 2>&1 | sed -n "s|.*$pattern|\\1|p")
    [ -n "$bin" ] || { echo "arm64: no test binary for $pkg $kind"; return 1; }
    tests/provision/arm64-kvm-host.sh run "$bin" --test-threads 1 "$@" | host_console
    return "${PIPESTATUS[0]}"
}

# The firmware's echo built for a Cortex-R5, and its resource table as remoteproc-vm reads it.
r5_echo() {
    local dir="$VAMP_ARM64_TARGET/images" elf out want
    VAMP_ARM64_ENV=RUSTC_BOOTSTRAP=1 $run cargo build --offline --locked --quiet --release \
        --manifest-path images/Cargo.toml --bin echo --target armv7r-none-eabihf \
        -Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem --target-dir "$dir" ||
        return 1
    elf="$dir/armv7r-none-eabihf/release/echo"
    out=$(cargo run --quiet -p vamp-remoteproc --bin remoteproc-vm -- inspect "$elf") ||
        { echo "$out"; return 1; }
    sed 's/^/arm64:   | /' <<<"$out"
    # The platform entry declares busy-poll and the wait spin (features 0x3) but not packed
    # rings: the R5's engine is built without them (images/Cargo.toml).
    for want in 'ELF32 little-endian, machine ARM' 'entry 0x0' 'vdev id 7 (rpmsg)' \
        'trace "trace0" da 0x3f000' 'carveout "vdev0buffer"' \
        'vendor type 128 (128..=512), 32 body bytes: 76 61 6d 70 01 00 00 00 03 00 00 00'; do
        grep -qF "$want" <<<"$out" || { echo "arm64: the R5 echo's inspect output lacks: $want"; return 1; }
    done
    if command -v readelf >/dev/null; then
        echo "arm64: the R5 echo's code: $((0x$(readelf -SW "$elf" |
            sed -n 's/.* \.text *PROGBITS *[0-9a-f]* [0-9a-f]* \([0-9a-f]*\) .*/\1/p'))) bytes of .text"
    fi
}

# The firmware's lints on its ARM platforms (tests/run lints the x86 build with the workspace), in
# a target dir of their own: sharing the build's, each would invalidate the other's std.
firmware_clippy() {
    local triple
    for triple in aarch64-unknown-none armv7r-none-eabihf; do
        VAMP_ARM64_ENV=RUSTC_BOOTSTRAP=1 $run cargo clippy --offline --locked --quiet --release \
            --manifest-path images/Cargo.toml --target "$triple" -Zbuild-std=core,alloc \
            -Zbuild-std-features=compiler-builtins-mem --target-dir "$VAMP_ARM64_TARGET/images-clippy" \
            -- -D warnings || return 1
    done
}

# A program of the workspace's aarch64 build, run in the arm64 KVM host; its output must hold
# every line given after `--`, and the hub's sandbox must have refused nothing.
program_in_kvm_host() {
    local name=$1 out rc=0 want
    shift
    local args=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    out=$(tests/provision/arm64-kvm-host.sh run "$VAMP_ARM64_TARGET/aarch64-unknown-linux-gnu/debug/$name" \
        "${args[@]}" | host_console) || rc=$?
    echo "$out"
    [ "$rc" -eq 0 ] || return "$rc"
    for want in "$@"; do
        grep -qF "$want" <<<"$out" || { echo "arm64: $name ${args[*]}: no \"$want\" in its output"; return 1; }
    done
    if grep -q 'sandbox: refused' <<<"$out"; then
        echo "arm64: $name ${args[*]}: the sandbox refused a system call (see above)"
        return 1
    fi
}

t_all=$(date +%s)
arm64_prune_targets
if sub "provision the toolchain root" tests/provision/arm64-toolchain.sh &&
    sub "fetch the crates" fetch; then
    bare_metal
    sub "cargo build --target aarch64-unknown-linux-gnu --workspace" \
        $run cargo build --offline --locked --quiet --target aarch64-unknown-linux-gnu --workspace || true
    sub "cargo build --target aarch64-unknown-linux-gnu -p vamp-vmm-backend --features xen" \
        $run cargo build --offline --locked --quiet --target aarch64-unknown-linux-gnu -p vamp-vmm-backend \
        --features xen || true
    sub "engine unit tests for aarch64 under qemu-user" \
        $run cargo test --offline --locked --quiet -p vamp-rpmsg --target aarch64-unknown-linux-gnu || true
    sub "firmware: the echo for a Cortex-R5 (armv7r-none-eabihf), inspected" r5_echo || true
    sub "firmware: clippy for aarch64-unknown-none and armv7r-none-eabihf" firmware_clippy || true
    if sub "provision the arm64 KVM host" tests/provision/arm64-kvm-host.sh provision; then
        sub "remoteproc unit tests in the arm64 KVM host" in_kvm_host vamp-remoteproc --lib || true
        echo "arm64: hub unit tests: config::tests::example_configs_in_the_repo_load cannot run in the" \
            "arm64 KVM host (it reads configs/ from the repository, which the guest has no copy of)"
        sub "hub unit tests in the arm64 KVM host" in_kvm_host vamp-vmm-backend --lib \
            -- --skip config::tests::example_configs_in_the_repo_load || true
        for t in kvm_remote matrix lifecycle; do
            sub "remoteproc $t tests (arm64 firmware) in the arm64 KVM host" \
                in_kvm_host vamp-remoteproc "$t" || true
        done
        echo "arm64: remoteproc attacks_remote: attack_missing_proxy_root_fails_before_the_remote_starts and" \
            "attack_proxy_quota_from_the_command_line cannot run in the arm64 KVM host (they start the" \
            "remoteproc-vm binary from the build tree, which the guest has no copy of; the next two steps run it)"
        sub "remoteproc attacks_remote tests in the arm64 KVM host" in_kvm_host vamp-remoteproc attacks_remote \
            -- --skip attack_missing_proxy_root_fails_before_the_remote_starts \
            --skip attack_proxy_quota_from_the_command_line || true
        sub "remoteproc-vm run echo --ping 1000 in the arm64 KVM host" \
            program_in_kvm_host remoteproc-vm run echo --ping 1000 -- '1000/1000 echoes matched' || true
        sub "vamp demo in the arm64 KVM host" \
            program_in_kvm_host vamp demo -- 'hub 1000/1000 echoes between two guests' \
            'KVM remote 1000/1000 echoes through the hub' || true
    fi
else
    echo "arm64: the lane cannot run without the toolchain and the crates (see above)"
fi
echo "arm64: lane took $(($(date +%s) - t_all)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "arm64: test result: FAILED. 0 passed; ${#failed[@]} failed; (${failed[*]})"
    exit 1
fi

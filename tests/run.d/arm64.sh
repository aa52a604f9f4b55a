#!/usr/bin/env bash
# The arm64 lane: builds and tests vamp for the mission's platform (ZynqMP: Cortex-A53 hosts,
# Cortex-R5 remotes) with the Debian sid toolchain provisioned under $VAMP_CACHE
# (tests/provision/arm64-toolchain.sh; every cargo run goes through arm64-run.sh):
#   1. the toolchain root (cached; a stamp check on later runs)
#   2. the crates, fetched once into the root's registry (later runs are offline)
#   3. the no_std engine (vamp-rpmsg, no default features) for three bare-metal targets
#      through -Zbuild-std, with the code size of its own rlib's .text per target
#   4. the whole workspace for aarch64-unknown-linux-gnu (the ZynqMP's A53 hosts)
#   5. the engine's unit tests for aarch64-unknown-linux-gnu, run under qemu-user
#   6. the remoteproc and hub unit tests inside an emulated arm64 KVM host (nested KVM under
#      qemu-system-aarch64, tests/provision/arm64-kvm-host.sh): the arm64 KVM backend for real
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

# Unit tests of one crate, built for aarch64 and run inside the emulated arm64 KVM host.
in_kvm_host() {
    local pkg=$1 bin
    shift
    bin=$($run cargo test --offline --locked -p "$pkg" --lib --target aarch64-unknown-linux-gnu \
        --no-run 2>&1 | sed -n 's/.*Executable unittests .*(\(.*\))$/\1/p')
    [ -n "$bin" ] || { echo "arm64: no unit test binary for $pkg"; return 1; }
    tests/provision/arm64-kvm-host.sh run "$bin" --test-threads 1 "$@" | tr -d '\r' |
        grep -Ev '^\[ *[0-9]+\.[0-9]+\]'
    return "${PIPESTATUS[0]}"
}

t_all=$(date +%s)
if sub "provision the toolchain root" tests/provision/arm64-toolchain.sh &&
    sub "fetch the crates" fetch; then
    bare_metal
    sub "cargo build --target aarch64-unknown-linux-gnu --workspace" \
        $run cargo build --offline --locked --quiet --target aarch64-unknown-linux-gnu --workspace || true
    sub "engine unit tests for aarch64 under qemu-user" \
        $run cargo test --offline --locked --quiet -p vamp-rpmsg --target aarch64-unknown-linux-gnu || true
    if sub "provision the arm64 KVM host" tests/provision/arm64-kvm-host.sh provision; then
        sub "remoteproc unit tests in the arm64 KVM host" in_kvm_host vamp-remoteproc || true
        echo "arm64: hub unit tests: config::tests::example_configs_in_the_repo_load cannot run in the" \
            "arm64 KVM host (it reads configs/ from the repository, which the guest has no copy of)"
        sub "hub unit tests in the arm64 KVM host" in_kvm_host vamp-vmm-backend \
            --skip config::tests::example_configs_in_the_repo_load || true
    fi
else
    echo "arm64: the lane cannot run without the toolchain and the crates (see above)"
fi
echo "arm64: lane took $(($(date +%s) - t_all)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "arm64: test result: FAILED. 0 passed; ${#failed[@]} failed; (${failed[*]})"
    exit 1
fi

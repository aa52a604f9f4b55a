#!/usr/bin/env bash
# Fuzz smoke: builds the cargo-fuzz targets under fuzz/ and runs each one briefly (8 s by
# default, VAMP_FUZZ_SECONDS to change). Any crash, panic, sanitizer report or hang (an
# input taking over 10 s) fails the step; the input is kept under fuzz/artifacts/TARGET/.
# The longer runs (10 M executions per target) are described in fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${VAMP_FUZZ_SECONDS:-8}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing: installing it with 'cargo install cargo-fuzz' (about a minute)"
    cargo install cargo-fuzz
fi
# cargo-fuzz passes -Z flags (sanitizer, coverage instrumentation) that only a nightly
# compiler accepts; RUSTC_BOOTSTRAP=1 lets the stable compiler take them.
export RUSTC_BOOTSTRAP=1

echo "fuzz: building the targets with AddressSanitizer (the first build takes a few minutes; cached in fuzz/target)"
t0=$(date +%s)
if ! cargo fuzz build; then
    echo "fuzz: the targets do not build"
    echo "fuzz: test result: FAILED. 0 passed; 1 failed; (build)"
    exit 1
fi
echo "fuzz: built in $(($(date +%s) - t0)) s"
bin_dir=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release

# Seeds for the ELF loader: vamp's own firmware (built by remoteproc-vm's build script),
# stripped of debug sections to about 60 KB each.
seeds=fuzz/corpus/elf_loader
if command -v objcopy >/dev/null 2>&1; then
    mkdir -p "$seeds"
    while IFS= read -r elf; do
        name="seed-$(basename "$elf")"
        if [ ! -e "$seeds/$name" ] && objcopy --strip-all "$elf" "$seeds/$name" 2>/dev/null; then
            echo "fuzz: seeded elf_loader with $elf (stripped)"
        fi
    done < <(find fuzz/target target -maxdepth 8 -path '*/images-target/release/*' -type f \
        -perm -u+x 2>/dev/null | sort -u | head -n 3)
else
    echo "fuzz: no objcopy: the ELF loader starts without firmware seeds"
fi

passed=0
failed=()
for target in $(cargo fuzz list); do
    out=$(mktemp -t vamp-fuzz.XXXXXX)
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    # The binaries cargo fuzz built, run as `cargo fuzz run` does (without rebuilding).
    if ASAN_OPTIONS=detect_odr_violation=0 "$bin_dir/$target" \
        -artifact_prefix="fuzz/artifacts/$target/" -max_total_time="$seconds" -timeout=10 \
        -print_final_stats=1 "fuzz/corpus/$target" >"$out" 2>&1; then
        runs=$(grep -Eo '^stat::number_of_executed_units: *[0-9]+' "$out" | grep -Eo '[0-9]+$' || echo '?')
        rate=$(grep -Eo '^stat::average_exec_per_sec: *[0-9]+' "$out" | grep -Eo '[0-9]+$' || echo '?')
        cov=$(grep -Eo 'cov: [0-9]+' "$out" | tail -n 1 || true)
        echo "fuzz: $target: $runs runs in ${seconds} s ($rate/s, $cov), no crash"
        passed=$((passed + 1))
    else
        echo "fuzz: $target: FAILED; the end of its output:"
        tail -n 40 "$out"
        echo "fuzz: reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run $target fuzz/artifacts/$target/<file>"
        failed+=("$target")
    fi
    rm -f "$out"
done

if [ ${#failed[@]} -eq 0 ]; then
    echo "fuzz: test result: ok. $passed passed; 0 failed;"
else
    echo "fuzz: test result: FAILED. $passed passed; ${#failed[@]} failed; (${failed[*]})"
    exit 1
fi

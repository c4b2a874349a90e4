#!/usr/bin/env bash
# Builds the fuzz targets (cargo-fuzz: nightly, AddressSanitizer, debug assertions and overflow
# checks on) and runs each for SECONDS, starting from its seed corpus in fuzz/corpus/<target>.
#
#   fuzz/run.sh SECONDS [TARGET...]      every target when none is named
#
# FUZZ_WORK=DIR keeps the corpus each run grows in DIR/<target> (make fuzz: fuzz/work, so that
# later runs start from it); otherwise it goes to a temporary directory. The seed corpus is
# never written to. A crash, a leak, an input that runs longer than FUZZ_TIMEOUT seconds (a
# hang) or a run that does not stop on time fails the target; its reproducer is kept in
# fuzz/artifacts/<target>/ and printed. Exits 1 if any target failed.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
timeout_per_input=${FUZZ_TIMEOUT:-10}
max_len=${FUZZ_MAX_LEN:-8192}
toolchain=${FUZZ_TOOLCHAIN:-+nightly}

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "$toolchain" fuzz list)
fi

echo "fuzz: building ${#targets[@]} targets"
cargo "$toolchain" fuzz build

bin_dir=fuzz/target/x86_64-unknown-linux-gnu/release
if [ -n "${FUZZ_WORK:-}" ]; then
    work=$FUZZ_WORK
    mkdir -p "$work"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "fuzz/artifacts/$t" "fuzz/corpus/$t"
    log="$work/$t.log"
    marker="$work/$t.start"
    touch "$marker"
    start=$(date +%s)
    set +e
    # The outer limit catches a run that does not stop on its own (libFuzzer's -timeout only
    # covers one input at a time).
    timeout --kill-after=10 $((seconds + 120)) "$bin_dir/$t" "$work/$t" "fuzz/corpus/$t" \
        -max_total_time="$seconds" -timeout="$timeout_per_input" -max_len="$max_len" \
        -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    # (A run that crashes on a seed prints neither.)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2 || true)
    if [ "$rc" -eq 0 ]; then
        echo "fuzz: $t ok: ${runs:-?} runs in $(($(date +%s) - start)) s, coverage ${cov:-?} edges"
        continue
    fi
    failed+=("$t")
    cp "$log" "fuzz/artifacts/$t/last-run.log"
    echo "fuzz: $t FAILED (exit $rc); log: fuzz/artifacts/$t/last-run.log" >&2
    grep -E -m1 -A3 "panicked at|ERROR: (AddressSanitizer|libFuzzer|LeakSanitizer)" "$log" | sed 's/^/    /' >&2 || true
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "    the run did not stop within $((seconds + 120)) s (a hang)" >&2
    fi
    for a in $(find "fuzz/artifacts/$t" -type f -newer "$marker" ! -name last-run.log 2>/dev/null); do
        echo "    reproducer: $a" >&2
        echo "    replay:     cargo +nightly fuzz run $t $a" >&2
    done
    tail -n 40 "$log" | sed 's/^/    | /' >&2
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds} s each without a crash or a hang"

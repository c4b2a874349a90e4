#!/usr/bin/env bash
# The part of `make test` that needs hardware-assisted KVM: the containerd end-to-end suite and
# the runc differential suite on the `embedded` backend (Pulse's own VMM booting the real Linux
# guest with per-queue MSI) and the Linux driver tests under Pulse's VMM. Builds the test binaries here, then runs them all in
# one L1 guest of the nested rig (scripts/nested.sh), or directly on a host with VT-x/AMD-V.
# Prints each suite's result, the totals and the time the rig took.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
CARGO=${CARGO:-cargo}

# The test binaries, by cargo's own account of what it built (--workspace: the same features,
# so the same artifacts, as `cargo test --workspace`).
built=$("$CARGO" test --workspace --no-run --message-format=json --test containerd \
    --test differential --test guest_embedded)
executable() {
    grep "\"name\":\"$1\"" <<<"$built" | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
}
containerd_suite=$(executable containerd)
differential_suite=$(executable differential)
driver_suite=$(executable guest_embedded)
for suite in "$containerd_suite" "$differential_suite" "$driver_suite"; do
    [ -x "$suite" ] || { echo "run-suites: test binaries not found" >&2; exit 1; }
done

log=$(mktemp /tmp/pulse-nested-suites.XXXXXX)
trap 'rm -f "$log"' EXIT
started=$(date +%s)
# An L1 kernel panic is QEMU's emulated SVM failing (docs/nested-rig.md, "Known emulator
# faults"), not a test's verdict: the suites run once more in a fresh L1, and the log says so.
for attempt in 1 2; do
    set +e
    "$repo/scripts/nested.sh" --direct-ok --timeout "${PULSE_NESTED_TIMEOUT:-2400}" \
        --env PULSE_TEST_BACKEND=embedded -- \
        "$here/in-l1.sh" "$driver_suite" "$containerd_suite" "$differential_suite" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -eq 125 ] && [ "$attempt" -eq 1 ] && grep -q '^  | .*Kernel panic - not syncing' "$log"; then
        echo "RIG RETRIED: the L1 kernel panicked (emulator fault, see above); running the suites again in a fresh L1"
        continue
    fi
    break
done
took=$(( $(date +%s) - started ))

passed=$(sed -n 's/^test result: .*\. \([0-9]*\) passed;.*/\1/p' "$log" | paste -sd+ | bc)
failed=$(sed -n 's/^test result: .*; \([0-9]*\) failed;.*/\1/p' "$log" | paste -sd+ | bc)
skipped=$(grep -c 'SKIPPED: ' "$log" || true)
echo "== nested rig: ${passed:-0} passed, ${failed:-0} failed, ${skipped} skipped in ${took}s (embedded backend: containerd and runc differential suites; Linux driver tests) =="
[ "$rc" -eq 0 ] || { echo "run-suites: the nested run exited $rc" >&2; exit "$rc"; }
[ "${passed:-0}" -gt 0 ] || { echo "run-suites: no test ran in the rig" >&2; exit 1; }

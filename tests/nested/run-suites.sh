#!/usr/bin/env bash
# The part of `make test` that needs hardware-assisted KVM: the containerd end-to-end suite on
# the `embedded` backend (Pulse's own VMM booting the real Linux guest with per-queue MSI) and
# the Linux driver tests under Pulse's VMM; with PULSE_RIG_DIFFERENTIAL=1 also the runc
# differential suite (not yet run in the rig: left out of CI until it has passed there).
# Builds the test binaries here, then runs them all in
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
all=$(mktemp /tmp/pulse-nested-all.XXXXXX)
trap 'rm -f "$log" "$all"' EXIT
started=$(date +%s)
# An L1 that panics or freezes is QEMU's emulated SVM failing (docs/nested-rig.md, "Known
# emulator faults"), not a test's verdict: the run resumes once in a fresh L1, without the
# tests that already passed (in-l1.sh's RIG-TEST-PASSED lines), and the log says so.
skip=
for attempt in 1 2; do
    set +e
    PULSE_RIG_SKIP=$skip "$repo/scripts/nested.sh" --direct-ok --timeout "${PULSE_NESTED_TIMEOUT:-2400}" \
        --env PULSE_TEST_BACKEND=embedded -- \
        "$here/in-l1.sh" "$driver_suite" "$containerd_suite" ${PULSE_RIG_DIFFERENTIAL:+"$differential_suite"} 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    cat "$log" >>"$all"
    if [ "$rc" -eq 125 ] && [ "$attempt" -eq 1 ] &&
        grep -qE '^  \| .*Kernel panic - not syncing|^nested: the L1 guest froze' "$log"; then
        skip=$(sed -n 's/^RIG-TEST-PASSED \([^ ]*\) \([^ ]*\).*/\1 \2/p' "$log")
        echo "RIG RETRIED: the L1 guest was lost (emulator fault, see above) after $(grep -c . <<<"$skip") passed tests; resuming in a fresh L1"
        continue
    fi
    break
done
took=$(( $(date +%s) - started ))

passed=$(grep -c '^RIG-TEST-PASSED ' "$all" || true)
passed=$(( passed - $(grep -c '^RIG-TEST-PASSED .*(in the run the L1 cut short)$' "$all" || true) ))
failed=$(grep -c '^RIG-TEST-FAILED ' "$log" || true)
skipped=$(grep -c 'SKIPPED: ' "$all" || true)
echo "== nested rig: ${passed} passed, ${failed} failed, ${skipped} skipped in ${took}s (embedded backend: containerd and runc differential suites; Linux driver tests) =="
[ "$rc" -eq 0 ] || { echo "run-suites: the nested run exited $rc" >&2; exit "$rc"; }
[ "${passed}" -gt 0 ] || { echo "run-suites: no test ran in the rig" >&2; exit 1; }

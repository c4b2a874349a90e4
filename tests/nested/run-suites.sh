#!/usr/bin/env bash
# The part of `make test` that needs hardware-assisted KVM: the containerd end-to-end suite,
# the rootfs suite, the CRI suite (containerd's CRI plugin driven as kubelet drives it) and the
# runc differential suite (runc in L1 against Pulse) on the `embedded` backend (Pulse's own VMM
# booting the real Linux guest with per-queue MSI), and the Linux driver tests under Pulse's VMM.
#
# Left out in the rig by default (PULSE_RIG_EXCLUDE; they ran on the host in the same
# `make test`, and nothing in them depends on Pulse's backend), to keep `make test` under its
# 40 minutes: the CRI suite's runc-only reference tests and its harness unit tests, the
# containerd and CRI tests of what the shim refuses by its own checks (a host network, host
# sockets and device nodes as mounts), the containerd test of the task events the shim
# publishes (its exec and kill paths run here in detached_container_exec_tty_kill_delete), and the
# differential areas that the guest's kernel and agent decide (processes and signals,
# users/env/cwd, rlimits/capabilities/seccomp, exec: the same guest image under both backends;
# their stdio over the backend's vsock is the containerd suite's, which runs here).
# The differential areas that depend on the VMM run in the rig: the machine (clock, CPUs,
# memory), cgroup limits and the OOM killer, mounts and the rootfs. PULSE_RIG_DIFFERENTIAL=all
# runs every area there too (about 8 minutes; docs/nested-rig.md), PULSE_RIG_EXCLUDE= nothing
# left out.
# Builds the test binaries here, then runs them all in
# one L1 guest of the nested rig (scripts/nested.sh), or directly on a host with VT-x/AMD-V.
# Prints each suite's result, the totals and the time the rig took.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
CARGO=${CARGO:-cargo}

# The test binaries, by cargo's own account of what it built: the very command of `cargo test
# --workspace`, so nothing is built again (naming the --test targets resolves other features
# for some dependencies, and rebuilt the shim and its tests: half a minute of make test).
built=$("$CARGO" test --workspace --no-run --message-format=json)
executable() {
    grep "\"name\":\"$1\"" <<<"$built" | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
}
containerd_suite=$(executable containerd)
rootfs_suite=$(executable rootfs)
cri_suite=$(executable cri)
differential_suite=$(executable differential)
driver_suite=$(executable guest_embedded)
for suite in "$containerd_suite" "$rootfs_suite" "$cri_suite" "$differential_suite" "$driver_suite"; do
    [ -x "$suite" ] || { echo "run-suites: test binaries not found" >&2; exit 1; }
done

backend_neutral='^cri (runc_|volumes::|rfc3339_|the_harness_|importing_the_snippet)'
# Refused by the shim's own checks of the spec, before or beside anything the backend does.
backend_neutral+='|^containerd a_host_network_container_is_refused_when_pod_networking_is_on$'
# What the shim's task service publishes (the events' source is the shim, not the backend).
backend_neutral+='|^containerd ctr_events_shows_the_task_events$'
backend_neutral+='|^cri pulse_host_(network_pod_is_refused|sockets_and_device_nodes_as_mounts_fail)_by_name'
if [ "${PULSE_RIG_DIFFERENTIAL:-}" != all ]; then
    backend_neutral+='|^differential runc_and_pulse_agree_on_(processes|users|rlimits|exec)'
fi
export PULSE_RIG_EXCLUDE=${PULSE_RIG_EXCLUDE-$backend_neutral}

log=$(mktemp /tmp/pulse-nested-suites.XXXXXX)
all=$(mktemp /tmp/pulse-nested-all.XXXXXX)
trap 'rm -f "$log" "$all"' EXIT
started=$(date +%s)
# An L1 that panics or freezes is QEMU's emulated SVM failing (docs/nested-rig.md, "Known
# emulator faults"), not a test's verdict: the run resumes in a fresh L1, at most 3 times,
# without the tests that already passed (in-l1.sh's RIG-TEST-PASSED lines), and says so.
skip=
attempts=4
for attempt in $(seq 1 $attempts); do
    set +e
    PULSE_RIG_SKIP=$skip "$repo/scripts/nested.sh" --direct-ok --timeout "${PULSE_NESTED_TIMEOUT:-3600}" \
        --env PULSE_TEST_BACKEND=embedded -- \
        "$here/in-l1.sh" "$driver_suite" "$containerd_suite" "$rootfs_suite" "$cri_suite" "$differential_suite" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    cat "$log" >>"$all"
    if [ "$rc" -eq 125 ] && [ "$attempt" -lt "$attempts" ] &&
        # (The freeze line can follow a test's unfinished "test x ... " on the same line.)
        grep -qE '^  \| .*Kernel panic - not syncing|nested: the L1 guest froze' "$log"; then
        # Passed and failed alike: a test's verdict stands, only the unfinished ones run again.
        skip=$(sed -n 's/^RIG-TEST-\(PASSED\|FLAKY\|FAILED\) \([^ ]*\) \([^ ]*\).*/\2 \3/p' "$all" | sort -u)
        echo "RIG RETRIED: the L1 guest was lost (emulator fault, see above) after $(grep -c . <<<"$skip") passed tests; resuming in a fresh L1"
        continue
    fi
    break
done
took=$(( $(date +%s) - started ))

flaky=$(grep -c '^RIG-TEST-FLAKY ' "$all" || true)
passed=$(( $(grep -c '^RIG-TEST-PASSED ' "$all" || true) + flaky ))
failed=$(grep -c '^RIG-TEST-FAILED ' "$all" || true)
skipped=$(grep -c 'SKIPPED: ' "$all" || true)
excluded=$(sort -u <(grep '^RIG-TEST-EXCLUDED ' "$all" || true) | grep -c . || true)
echo "== nested rig: ${passed} passed (${flaky} only on a later run), ${failed} failed, ${skipped} skipped in ${took}s, ${excluded} left out as backend-neutral (run on the host) (embedded backend: containerd, rootfs, CRI and runc differential suites; Linux driver tests) =="
[ "$rc" -eq 0 ] || { echo "run-suites: the nested run exited $rc" >&2; exit "$rc"; }
[ "$failed" -eq 0 ] || { echo "run-suites: $failed tests failed in the rig" >&2; exit 1; }
[ "${passed}" -gt 0 ] || { echo "run-suites: no test ran in the rig" >&2; exit 1; }

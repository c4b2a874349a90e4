#!/usr/bin/env bash
# Runs test binaries one after the other inside the nested rig's L1 guest, one test at a time
# (each boots a VM; the L1 has two vCPUs). Exits non-zero if any binary failed, after all ran.
# A binary still running after PULSE_SUITE_LIMIT seconds (default 1200) is reported with what
# its processes wait on (state, wchan, kernel stacks) and the logs of its containerd and pods,
# then killed: a hang becomes a failure with evidence, not a silent deadline.
set -uo pipefail
limit=${PULSE_SUITE_LIMIT:-1200}

report_hang() {
    echo "=== in-l1: $1 still running after ${limit}s: what it waits on ==="
    ps -eo pid,ppid,stat,wchan:32,etimes,args | grep -vE ' (ps|grep) ' | sed 's/^/  /'
    for p in $(pgrep -f 'containerd-shim-pulse-v2|containerd --config|ctr --address|guest_embedded|containerd-'); do
        echo "--- $p $(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null | cut -c1-120)"
        for t in /proc/$p/task/*; do
            echo "  task $(basename "$t") $(cat "$t/comm" 2>/dev/null) state $(cut -d' ' -f3 "$t/stat" 2>/dev/null) wchan $(cat "$t/wchan" 2>/dev/null)"
            sed 's/^/      /' "$t/stack" 2>/dev/null | head -n 8
        done
    done
    for f in /tmp/pt*/containerd.log; do
        [ -f "$f" ] && { echo "--- $f (last 80 lines)"; tail -n 80 "$f"; }
    done
    for f in /tmp/pt*/ps/*/*/console.log; do
        [ -f "$f" ] && { echo "--- $f (last 20 lines)"; tail -n 20 "$f"; }
    done
}

rc=0
for suite in "$@"; do
    echo "== $(basename "$suite") =="
    # --nocapture: the skip reasons and the tests' count tables reach the log.
    "$suite" --test-threads 1 --nocapture &
    pid=$!
    waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$limit" ]; do
        sleep 1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        report_hang "$(basename "$suite")"
        kill -KILL "$pid"
        rc=1
    fi
    wait "$pid" || rc=1
done
# Whatever a failed test left (containerd, shims) does not keep the L1 guest from powering off.
exit $rc

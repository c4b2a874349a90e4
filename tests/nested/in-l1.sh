#!/usr/bin/env bash
# Runs test binaries one after the other inside the nested rig's L1 guest, one test at a time
# (each boots a VM; the L1 has two vCPUs). Exits non-zero if any binary failed, after all ran.
set -uo pipefail
rc=0
for suite in "$@"; do
    echo "== $(basename "$suite") =="
    "$suite" --test-threads 1 || rc=1
done
# Whatever a failed test left (containerd, shims) must not keep the L1 guest from powering off.
exit $rc

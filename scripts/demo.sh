#!/usr/bin/env bash
# The main job: a private containerd, the offline busybox image, a pod run by
# Pulse (containerd-shim-pulse-v2, qemu backend on hosts without VT-x/AMD-V),
# its output, its device/MSI report, and a cleanup that leaves nothing.
source "$(dirname "$0")/pulse-env.sh"

echo "== pulse-ctl check =="
PULSE_CONFIG=$work/pulse.toml PATH=$(dirname "$shim"):$PATH "$ctl" check || true
echo
echo "== ctr run --rm --runtime io.containerd.pulse.v2: one container, one microVM =="
start=$(date +%s.%N)
ctr_ run --rm --runtime "$shim" "$image" demo1 sh -c 'echo "hello from $(hostname), kernel $(uname -r), $(nproc) CPU"; cat /proc/cmdline' </dev/null
echo "(exit $?, $(echo "$(date +%s.%N) - $start" | bc) s)"
echo
echo "== a pod left running: exec into it, then its device report =="
ctr_ run -d --runtime "$shim" "$image" demo-pod sleep 1000 >/dev/null
ctr_ tasks exec --exec-id e1 demo-pod sh -c 'echo "exec: $(cat /proc/partitions | awk "/vd/ {print \$4}" | tr "\n" " ")"; mount | grep " / "' </dev/null
echo
echo "== pulse-ctl status demo-pod =="
"$ctl" status demo-pod --state-dir "$work/ps" | grep -v '^# \(HELP\|TYPE\)' || true
echo
ctr_ tasks kill -s SIGKILL demo-pod
for _ in $(seq 100); do ctr_ tasks ls | grep -q "demo-pod.*STOPPED" && break; sleep 0.1; done
ctr_ tasks delete demo-pod >/dev/null
ctr_ containers delete demo-pod
sleep 1
left=$(ps -eo args | grep -E "^[^ ]*(containerd-shim-pulse-v2|qemu-system|vhost-device-vsock).*$work" | wc -l || true)
echo "== cleaned up: $left leftover processes, sandbox dirs: $(ls "$work/ps/$ns" 2>/dev/null | wc -l) =="

#!/usr/bin/env bash
# One Pulse pod through containerd, as a user sees it: `ctr run --rm`, then a pod left running,
# exec into it, the guest's interrupt lines of the pod's virtio devices (one MSI per queue under
# the embedded backend, the legacy line per device under QEMU), `pulse-ctl status` (the VMM's
# and the guest's views), and a cleanup that leaves nothing. Backend from PULSE_BACKEND.
source "$(dirname "$0")/pulse-env.sh"
backend=${PULSE_BACKEND:-qemu}

echo "== pulse-ctl check =="
PULSE_CONFIG=$work/pulse.toml PATH=$(dirname "$shim"):$PATH "$ctl" check || true
echo
echo "== ctr run --rm --runtime io.containerd.pulse.v2 (backend $backend): one container, one microVM =="
start=$(date +%s.%N)
ctr_ run --rm --runtime "$shim" "$image" demo1 sh -c 'echo "hello from $(hostname), kernel $(uname -r), $(nproc) CPU"; cat /proc/cmdline' </dev/null
echo "(exit $?, $(echo "$(date +%s.%N) - $start" | bc) s)"
[ "${1:-}" = --short ] && exit 0
echo
echo "== a pod left running: exec into it =="
ctr_ run -d --runtime "$shim" "$image" demo-pod sleep 1000 >/dev/null
ctr_ tasks exec --exec-id e1 demo-pod sh -c 'echo "exec: disks $(cat /proc/partitions | awk "/vd/ {print \$4}" | tr "\n" " ")on $(nproc) CPUs"; mount | grep " / "' </dev/null
echo
echo "== the guest's /proc/interrupts, virtio devices (CPU columns, chip, name) =="
ctr_ tasks exec --exec-id e2 demo-pod sh -c 'head -n 1 /proc/interrupts; grep virtio /proc/interrupts' </dev/null
echo
echo "== pulse-ctl status demo-pod =="
"$ctl" status demo-pod --state-dir "$work/ps" | grep -v '^# \(HELP\|TYPE\)' || true
echo
ctr_ tasks kill -s SIGKILL demo-pod
for _ in $(seq 300); do ctr_ tasks ls | grep -q "demo-pod.*STOPPED" && break; sleep 0.1; done
ctr_ tasks delete demo-pod >/dev/null
ctr_ containers delete demo-pod
sleep 1
left=$(ps -eo args | grep -E "^[^ ]*(containerd-shim-pulse-v2|qemu-system|vhost-device-vsock).*$work" | wc -l || true)
taps=$(ls /sys/class/net | grep -c '^pulse' || true)
echo "== cleaned up: $left leftover processes, $taps taps, sandbox dirs: $(ls "$work/ps/$ns" 2>/dev/null | wc -l) =="

# Sourced by scripts/demo.sh and scripts/bench-shim.sh: a private containerd
# (Debian's 1.6, as root) under a temporary directory, the offline busybox
# image, the shim by absolute path, and a pulse.toml with the backend in PULSE_BACKEND (qemu by
# default; embedded needs VT-x/AMD-V or the nested rig), PULSE_VCPUS vCPUs, and for the embedded
# backend multi-queue disks (one queue per vCPU), PULSE_NET_QUEUES queue pairs and a virtio-console.
# Needs: containerd, ctr, the guest image; qemu-system-x86_64 and vhost-device-vsock for qemu.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kernel=${PULSE_KERNEL:-$repo/build/guest/vmlinux}
initramfs=${PULSE_INITRAMFS:-$repo/build/guest/initramfs.cpio.lz4}
shim=${PULSE_SHIM:-$repo/target/release/containerd-shim-pulse-v2}
ctl=${PULSE_CTL:-$repo/target/release/pulse-ctl}
for f in "$kernel" "$initramfs" "$shim" "$ctl"; do
    [ -e "$f" ] || { echo "missing $f (make guest; cargo build --release)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/pulse-env.XXXXXX)
ns=pulse-demo
image=docker.io/library/pulse-busybox:latest
cat > "$work/pulse.toml" <<TOML
[hypervisor]
backend = "${PULSE_BACKEND:-qemu}"
[vm]
kernel = "$kernel"
initramfs = "$initramfs"
vcpus = ${PULSE_VCPUS:-1}
memory_mib = ${PULSE_MEMORY_MIB:-256}
[devices]
net_queues = ${PULSE_NET_QUEUES:-0}
virtio_console = ${PULSE_VIRTIO_CONSOLE:-false}
[shim]
state_dir = "$work/ps"
TOML
cat > "$work/containerd.toml" <<TOML
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/c.sock"
TOML
PULSE_CONFIG=$work/pulse.toml PATH=$(dirname "$shim"):$PATH \
    containerd --config "$work/containerd.toml" > "$work/containerd.log" 2>&1 &
containerd_pid=$!
pulse_env_cleanup() {
    ctr_ tasks ls -q 2>/dev/null | while read -r t; do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; sleep 1; ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
    ctr_ containers ls -q 2>/dev/null | while read -r c; do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
    kill "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" 2>/dev/null || true
    { grep " $work" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf "$work"
}
trap pulse_env_cleanup EXIT
ctr_() { ctr --address "$work/c.sock" --namespace "$ns" "$@"; }
for _ in $(seq 100); do [ -S "$work/c.sock" ] && break; sleep 0.1; done
"$repo/scripts/busybox-oci.sh" "$work/busybox.tar"
ctr_ images import "$work/busybox.tar" >/dev/null

#!/usr/bin/env bash
# The main job: Pulse pods through containerd. First the default `embedded` backend (the VMM in
# the shim, one MSI per queue) with 2 vCPUs, multi-queue disks and a 2-pair NIC: directly on a
# host with VT-x/AMD-V, otherwise inside the nested rig (scripts/nested.sh), whose L1 guest has a
# KVM on QEMU's emulated AMD SVM. Then the same `ctr run --rm` on the qemu backend on this host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export PULSE_BACKEND=embedded PULSE_VCPUS=2 PULSE_NET_QUEUES=2 PULSE_VIRTIO_CONSOLE=true

if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -c /dev/kvm ]; then
    echo "### The embedded backend (this host has hardware virtualization)"
    "$here/demo-pod.sh"
else
    echo "### The embedded backend, inside the nested rig"
    echo "### (this host's CPU has no vmx/svm, so its KVM cannot run Linux at speed; an L1 Debian"
    echo "###  guest under QEMU TCG with emulated AMD SVM gives Pulse a hardware-assisted KVM;"
    echo "###  times below are two levels of emulation, counts are exact)"
    "$here/nested.sh" --timeout 900 -- "$here/demo-pod.sh"
fi
echo
echo "### The qemu backend on this host (QEMU's virtio-mmio has no MSI: legacy lines)"
PULSE_BACKEND=qemu PULSE_VCPUS=1 PULSE_NET_QUEUES=0 PULSE_VIRTIO_CONSOLE=false "$here/demo-pod.sh" --short

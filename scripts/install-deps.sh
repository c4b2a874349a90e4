#!/usr/bin/env bash
# Installs what building and testing Pulse needs on a fresh Debian machine (run as root).
# Idempotent and quick when everything is already there.
set -euo pipefail

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# qemu-system-x86: the comparison VMM of the benchmarks and the software-emulated Linux rig.
# busybox-static: the container rootfs of the agent tests. musl-tools: the static agent's C bits.
# containerd runc e2fsprogs util-linux: the shim's end-to-end tests (containerd 1.6, mkfs.ext4 -d, script).
# kmod: modprobe/depmod for the nested rig's L1 kernel (scripts/l1-kernel.sh, tests/nested/).
# lz4: the guest's initramfs (guest/image/mkinitramfs.sh).
for pkg in qemu-system-x86 busybox-static musl-tools containerd runc e2fsprogs util-linux kmod bc lz4; do
    pkg_installed "$pkg" || need_apt+=("$pkg")
done
# The guest kernel build (guest/kernel/build.sh also installs linux-source-6.1) and the rootfs
# disk images (mkfs.ext4 -d). libseccomp-dev: the agent's seccomp on the host (its tests);
# gperf: the static musl libseccomp of the guest agent (guest/seccomp/libseccomp-musl.sh).
for pkg in bc bison flex libelf-dev libssl-dev e2fsprogs libseccomp-dev gperf pkg-config; do
    pkg_installed "$pkg" || need_apt+=("$pkg")
done
# libcap-ng-dev (with libseccomp-dev above): what virtiofsd (below) links.
pkg_installed libcap-ng-dev || need_apt+=(libcap-ng-dev)
# g++: libFuzzer, which the fuzz targets link (fuzz/, make fuzz-smoke), is C++.
pkg_installed g++ || need_apt+=(g++)
# The CRI suite (shim/tests/cri): containernetworking-plugins gives the CNI bridge, host-local
# and loopback plugins (/usr/lib/cni); protobuf-compiler (protoc) builds the k8s-cri crate's
# CRI v1 client.
for pkg in containernetworking-plugins protobuf-compiler; do
    pkg_installed "$pkg" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: need root to install: ${need_apt[*]}" >&2
        exit 1
    fi
    echo "install-deps: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# CNI's cache (libcni's results, host-local's leases): the nested rig puts a tmpfs on it, which
# needs the directory on the host (its root is read-only in L1).
mkdir -p /var/lib/cni

# The toolchain file lists the targets; make sure they are installed even with older rustup.
if have rustup; then
    installed=$(rustup target list --installed)
    for target in x86_64-unknown-none x86_64-unknown-linux-musl; do
        grep -qx "$target" <<<"$installed" || rustup target add "$target"
    done
    rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
fi

# The fuzz targets (fuzz/: make fuzz-smoke, make fuzz): cargo-fuzz and a nightly toolchain
# (libFuzzer's instrumentation and the sanitizers need nightly flags).
if have rustup && ! rustup toolchain list | grep -q '^nightly'; then
    echo "install-deps: rustup toolchain install nightly"
    rustup toolchain install nightly --profile minimal
fi
if ! have cargo-fuzz && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-fuzz" ]; then
    echo "install-deps: cargo install cargo-fuzz"
    cargo install --quiet --locked cargo-fuzz
fi

# vhost-device-vsock: the vsock backend of the QEMU rig (tests/src/qemu.rs).
if ! have vhost-device-vsock && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/vhost-device-vsock" ]; then
    echo "install-deps: cargo install vhost-device-vsock 0.3.0"
    cargo install --quiet --locked vhost-device-vsock --version 0.3.0
fi

# virtiofsd: the virtio-fs backend (vhost-user-fs) that carries a pod's host paths (bind mounts,
# ConfigMaps, Secrets) into its guest; the shim starts one per pod (shim/src/virtiofs.rs). The Rust
# virtiofsd of the virtio-fs project itself (gitlab.com/virtio-fs/virtiofsd), the backend Kata
# Containers ships; QEMU 7.2's C virtiofsd (/usr/lib/qemu/virtiofsd) is deprecated and unmaintained.
if ! have virtiofsd && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd" ]; then
    echo "install-deps: cargo install virtiofsd 1.14"
    cargo install --quiet --locked virtiofsd --version '~1.14'
fi

# The nested-virtualization rig's L1 kernel (scripts/nested.sh): Debian's amd64 kernel, extracted.
"$(dirname "$0")/l1-kernel.sh" >/dev/null

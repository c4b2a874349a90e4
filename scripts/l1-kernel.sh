#!/usr/bin/env bash
# The nested-virtualization rig's L1 kernel: Debian's stock amd64 kernel (the one that
# `linux-image-amd64` points at), downloaded with apt and extracted, never installed, into
# /var/cache/pulse/l1/<package>/ with modules.dep written by depmod. Prints that directory.
# Its kvm_amd loads on QEMU's emulated SVM (docs/nested-rig.md).
set -euo pipefail

cache=${PULSE_L1_CACHE:-/var/cache/pulse/l1}
pkg=${PULSE_L1_KERNEL_PACKAGE:-}
if [ -z "$pkg" ]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
fi
[ -n "$pkg" ] || { echo "l1-kernel: apt knows no linux-image-amd64 dependency" >&2; exit 1; }
dir="$cache/$pkg"
if [ -f "$dir/.complete" ]; then
    echo "$dir"
    exit 0
fi

version=${pkg#linux-image-}
mkdir -p "$cache"
work=$(mktemp -d "$cache/.extract.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get -qq -o APT::Sandbox::User=root download "$pkg") >&2
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/root"
[ -f "$work/root/boot/vmlinuz-$version" ] || { echo "l1-kernel: $pkg has no boot/vmlinuz-$version" >&2; exit 1; }
depmod -b "$work/root" "$version"
rm -rf "$dir"
mv "$work/root" "$dir"
echo "$version" >"$dir/.version"
touch "$dir/.complete"
echo "l1-kernel: $pkg extracted into $dir" >&2
echo "$dir"

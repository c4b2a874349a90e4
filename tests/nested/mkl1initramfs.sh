#!/usr/bin/env bash
# The nested rig's L1 initramfs: busybox-static, tests/nested/l1-init.sh as /init and the
# modules the L1 kernel needs to mount the host over 9p (virtio-pci and the 9p client, in the
# order modprobe --show-depends gives). Reproducible (guest/image/newc.sh) and cached by the
# hash of its inputs in the L1 kernel's directory. Prints the archive's path.
#
#   tests/nested/mkl1initramfs.sh L1_KERNEL_DIR
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
l1=${1:?usage: mkl1initramfs.sh L1_KERNEL_DIR}
version=$(cat "$l1/.version")
busybox=/bin/busybox
[ -x "$busybox" ] && ! LC_ALL=C readelf -lW "$busybox" | grep -q 'program interpreter' ||
    { echo "mkl1initramfs: $busybox is not a static busybox (apt-get install busybox-static)" >&2; exit 1; }

mapfile -t kos < <(modprobe -d "$l1" -S "$version" --show-depends -a virtio_pci 9pnet_virtio 9p |
    awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++')
[ ${#kos[@]} -gt 0 ] || { echo "mkl1initramfs: modprobe found no 9p/virtio modules in $l1" >&2; exit 1; }

hash=$(
    {
        sha256sum "$here/l1-init.sh" "$0" "$repo/guest/image/newc.sh" "$busybox" "${kos[@]}" | cut -d' ' -f1
        echo "$version"
    } | sha256sum | cut -c1-16
)
out=$l1/initramfs-$hash.cpio.gz
if [ -f "$out" ]; then
    echo "$out"
    exit 0
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
names=()
for ko in "${kos[@]}"; do names+=("$(basename "$ko")"); done
printf '%s\n' "${names[@]}" >"$stage/order"

mtime=${SOURCE_DATE_EPOCH:-0}
entries=(
    "d bin 0755"
    "f bin/busybox 0755 $busybox"
    "d dev 0755"
    "c dev/console 0600 5 1"
    "f init 0755 $here/l1-init.sh"
    "d modules 0755"
)
for i in "${!kos[@]}"; do
    entries+=("f modules/${names[$i]} 0644 ${kos[$i]}")
done
entries+=("f modules/order 0644 $stage/order" "d proc 0555" "d sys 0555")
# shellcheck source=guest/image/newc.sh
. "$repo/guest/image/newc.sh"
tmp=$(mktemp "$out.XXXXXX")
write_archive | gzip -n -9 >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
# Older archives of this kernel were built from other inputs: nothing uses them any more.
find "$l1" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -path "$out" -delete
echo "mkl1initramfs: $out ($(stat -c %s "$out") bytes)" >&2
echo "$out"

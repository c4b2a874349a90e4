#!/usr/bin/env bash
# Turns a directory (a container rootfs) into an ext4 disk image, with
# e2fsprogs' `mkfs.ext4 -d`: no loop device, no mount, no root needed beyond
# reading the tree.
#
#   guest/image/mkext4.sh DIR IMAGE [SIZE]
#
# SIZE is what truncate(1) accepts (64M, 1G); by default the tree's size plus
# half again plus 16 MiB, at least 32 MiB. The UUID and hash seed are fixed
# and mkfs's own timestamps are pinned (SOURCE_DATE_EPOCH, default 0); file
# times (atime included) come from the tree.
set -euo pipefail

die() { echo "mkext4: $*" >&2; exit 1; }
[ $# -ge 2 ] && [ $# -le 3 ] || die "usage: mkext4.sh DIR IMAGE [SIZE]"
dir=$1
image=$2
size=${3:-}
[ -d "$dir" ] || die "$dir is not a directory"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found (apt-get install e2fsprogs)"

if [ -z "$size" ]; then
    kib=$(du -sk --apparent-size "$dir" | cut -f1)
    kib=$(( kib + kib / 2 + 16 * 1024 ))
    [ "$kib" -ge $(( 32 * 1024 )) ] || kib=$(( 32 * 1024 ))
    size=${kib}K
fi

epoch=${SOURCE_DATE_EPOCH:-0}
# A fixed UUID (also the directory hash seed): images are reproducible, and
# the guest finds disks by serial, never by UUID.
uuid=5b1e0000-0000-4000-8000-000000000001

mkdir -p "$(dirname "$image")"
rm -f "$image"
truncate -s "$size" "$image"
# E2FSPROGS_FAKE_TIME pins the superblock and inode times that mkfs writes.
if ! E2FSPROGS_FAKE_TIME=$epoch mkfs.ext4 -q -F -L pulse-rootfs -U "$uuid" \
    -E "hash_seed=$uuid,lazy_itable_init=0,lazy_journal_init=0" \
    -d "$dir" "$image"; then
    rm -f "$image"
    die "mkfs.ext4 failed for $dir (size $size)"
fi
echo "mkext4: $image ($size) from $dir"

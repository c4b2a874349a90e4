#!/usr/bin/env bash
# Builds the guest's initramfs: a gzip'd cpio (newc) archive whose /init is
# the static pulse-agent, with the directories PID 1 mounts on and
# /dev/console (the kernel opens it for init's stdio before anything is
# mounted).
#
#   guest/image/mkinitramfs.sh [--agent PATH] [--out FILE]
#
# Reproducible: the archive is written here entry by entry, sorted, with
# fixed owners (0:0), modes, inode numbers and mtimes (SOURCE_DATE_EPOCH,
# default 0), and gzip stores no name or time. Same agent binary, same bytes.
# Needs no root: the device node is an archive entry, never a file on disk.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
agent=$repo/target/x86_64-unknown-linux-musl/release/pulse-agent
out=$repo/build/guest/initramfs.cpio.gz

while [ $# -gt 0 ]; do
    case $1 in
        --agent) agent=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "mkinitramfs: unknown argument $1" >&2; exit 2 ;;
    esac
done

die() { echo "mkinitramfs: $*" >&2; exit 1; }
[ -f "$agent" ] || die "no agent binary at $agent (run: make agent)"
# PID 1 cannot load shared libraries from an empty root: insist on a static binary.
if ! file_out=$(LC_ALL=C readelf -lW "$agent" 2>/dev/null); then
    die "$agent is not an ELF binary"
fi
if grep -q 'Requesting program interpreter' <<<"$file_out"; then
    die "$agent is dynamically linked; /init must be static (the musl build)"
fi

mtime=${SOURCE_DATE_EPOCH:-0}

# Entries: type path mode [source | major minor]. Sorted by path (C locale),
# parents before children; the directories are the mount points of
# agent/src/init.rs (/dev/pts, /dev/shm and /sys/fs/cgroup are created at run
# time inside the mounted filesystems) plus /tmp.
entries=(
    "d dev 0755"
    "c dev/console 0600 5 1"
    "f init 0755 $agent"
    "d proc 0555"
    "d run 0755"
    "d sys 0555"
    "d tmp 1777"
)

# shellcheck source=guest/image/newc.sh
. "$here/newc.sh"

mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
write_archive | gzip -n -9 >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "mkinitramfs: $out ($(stat -c %s "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16))"

#!/usr/bin/env bash
# Builds Pulse's guest kernel: an uncompressed x86-64 vmlinux (64-bit entry
# and PVH note) for Pulse's VMM and `qemu-system-x86_64 -M microvm`.
#
#   guest/kernel/build.sh [--out DIR] [--check-w1] [--rebuild]
#
# Source: Debian's linux-source-6.1 (installed with apt when missing), the
# patches in guest/kernel/patches/*.patch (in name order), and
# guest/kernel/pulse-microvm.config merged on top of `make tinyconfig`; every
# line of that fragment must hold in the final .config.
#
# The build lives outside the clone, in $PULSE_KERNEL_CACHE (default
# /var/cache/pulse/kernel)/<hash>/, keyed by a hash of this script, the
# config fragment, the patches, the source package's version and the
# compiler's version: a second run with the same inputs only copies the
# result into --out (default build/guest/).
#
# Every fresh build first compiles the files the patches touch with W=1 and
# fails on any warning; --check-w1 repeats that check on a cached build.
# --rebuild ignores the cached result.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$repo/build/guest
cache_root=${PULSE_KERNEL_CACHE:-/var/cache/pulse/kernel}
jobs=${JOBS:-$(nproc)}
check_w1=0
rebuild=0

while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --check-w1) check_w1=1; shift ;;
        --rebuild) rebuild=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "kernel/build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

log() { echo "kernel/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

src_pkg=linux-source-6.1
tarball=/usr/src/linux-source-6.1.tar.xz
fragment=$here/pulse-microvm.config
# What building a tinyconfig x86 kernel needs besides gcc and make.
build_pkgs=(bc bison flex libelf-dev libssl-dev xz-utils patch make gcc)

# --- Packages -------------------------------------------------------------
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "$src_pkg" "${build_pkgs[@]}"; do
    pkg_installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "need root to install: ${missing[*]}"
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -f "$tarball" ] || die "$tarball missing after installing $src_pkg"

# --- Cache key --------------------------------------------------------------
shopt -s nullglob
patches=("$here"/patches/*.patch)
shopt -u nullglob
src_version=$(dpkg-query -W -f='${Version}' "$src_pkg")
key=$(
    {
        echo "script"; sha256sum <"$0"
        echo "config"; sha256sum <"$fragment"
        for p in "${patches[@]}"; do echo "patch $(basename "$p")"; sha256sum <"$p"; done
        echo "source $src_pkg $src_version"
        echo "cc $(gcc --version | head -n1)"
    } | sha256sum | cut -c1-16
)
entry=$cache_root/$key
mkdir -p "$cache_root"

# One build at a time per cache (a second caller waits, then finds it done).
exec 9>"$cache_root/.lock"
flock 9

# --- Helpers ----------------------------------------------------------------
# Checks that every line of the fragment holds in .config: "CONFIG_X=v" must
# appear as is, "# CONFIG_X is not set" means no "CONFIG_X=" line.
verify_config() {
    local config=$1 line sym bad=0
    while IFS= read -r line; do
        case $line in
            "# CONFIG_"*" is not set")
                sym=${line#\# }; sym=${sym%% *}
                if grep -q "^$sym=" "$config"; then
                    log "config: wanted '$line', got '$(grep "^$sym=" "$config")'"
                    bad=1
                fi
                ;;
            CONFIG_*=*)
                if ! grep -qxF "$line" "$config"; then
                    sym=${line%%=*}
                    log "config: wanted '$line', got '$(grep -E "^(# )?$sym[= ]" "$config" || echo "nothing (dependency missing?)")'"
                    bad=1
                fi
                ;;
            ""|"#"*) ;;
            *) log "config: cannot read fragment line '$line'"; bad=1 ;;
        esac
    done <"$fragment"
    [ "$bad" -eq 0 ] || die "the final .config does not match $fragment (see above)"
}

# The C files the patches touch.
patched_c_files() {
    local p
    for p in "${patches[@]}"; do
        sed -n 's|^+++ b/\([^[:space:]]*\.c\).*|\1|p' "$p"
    done | sort -u
}

# Compiles each patched C file with W=1; any warning fails the build.
check_w1() {
    local tree=$1 file obj output status=0
    for file in $(patched_c_files); do
        obj=${file%.c}.o
        rm -f "$tree/$obj"
        log "W=1 check: $obj"
        if ! output=$(make -C "$tree" -s W=1 "$obj" 2>&1); then
            printf '%s\n' "$output" >&2
            die "compiling $obj with W=1 failed"
        fi
        if grep -E 'warning:' <<<"$output" >&2; then
            status=1
        fi
        rm -f "$tree/$obj"
    done
    [ "$status" -eq 0 ] || die "W=1 warnings in the patched files (above)"
}

install_outputs() {
    mkdir -p "$out"
    local f
    for f in vmlinux kernel.config System.map; do
        cp -f "$entry/$f" "$out/$f.tmp"
        mv -f "$out/$f.tmp" "$out/$f"
    done
    echo "$key" >"$out/kernel.key"
    log "vmlinux $(stat -c %s "$out/vmlinux") bytes -> $out/vmlinux (cache $entry)"
}

# --- Cached? ----------------------------------------------------------------
if [ "$rebuild" -eq 0 ] && [ -f "$entry/done" ]; then
    log "cached build $key"
    if [ "$check_w1" -eq 1 ]; then
        [ -d "$entry/src" ] || die "no source tree kept in $entry for --check-w1 (use --rebuild)"
        check_w1 "$entry/src"
    fi
    install_outputs
    exit 0
fi

# --- Fresh build --------------------------------------------------------------
start=$(date +%s)
rm -rf "$entry"
mkdir -p "$entry"
tree=$entry/src
log "extracting $tarball ($src_pkg $src_version)"
mkdir -p "$entry/extract"
tar -xf "$tarball" -C "$entry/extract"
mv "$entry/extract/linux-source-6.1" "$tree"
rmdir "$entry/extract"

for p in "${patches[@]}"; do
    log "applying $(basename "$p")"
    patch -d "$tree" -p1 --forward --batch --quiet <"$p" || die "$(basename "$p") does not apply"
done

log "configuring: tinyconfig + $(basename "$fragment")"
# Kconfig's chatter (choice overrides by the fragment) goes to config.log.
if ! { make -C "$tree" -s tinyconfig &&
    (cd "$tree" && scripts/kconfig/merge_config.sh -m .config "$fragment") &&
    make -C "$tree" -s olddefconfig; } >"$entry/config.log" 2>&1; then
    cat "$entry/config.log" >&2
    die "configuring the kernel failed"
fi
verify_config "$tree/.config"

check_w1 "$tree"

log "make -j$jobs vmlinux (log: $entry/build.log)"
if ! make -C "$tree" -j"$jobs" vmlinux >"$entry/build.log" 2>&1; then
    tail -n 40 "$entry/build.log" >&2
    die "kernel build failed"
fi
if grep -E '^[^ ]+:[0-9]+:[0-9]+: warning:' "$entry/build.log" | grep -F -f <(patched_c_files) >&2; then
    die "warnings in the patched files (above)"
fi

# Both boot paths: a 64-bit ELF, and the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY).
readelf -h "$tree/vmlinux" | grep -q 'ELF64' || die "vmlinux is not ELF64"
readelf -nW "$tree/vmlinux" | grep -q 'Xen.*0x00000012\|Unknown note type: (0x00000012)' ||
    die "vmlinux has no PVH entry note"

cp "$tree/vmlinux" "$entry/vmlinux"
cp "$tree/.config" "$entry/kernel.config"
cp "$tree/System.map" "$entry/System.map"
# Keep the source tree of this build (for --check-w1 and incremental work);
# drop the trees of older builds, keep their results.
for old in "$cache_root"/*/src; do
    [ "$old" = "$tree" ] || rm -rf "$old"
done
touch "$entry/done"
log "built in $(( $(date +%s) - start )) s"
install_outputs

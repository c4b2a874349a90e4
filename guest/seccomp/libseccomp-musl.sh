#!/usr/bin/env bash
# Builds libseccomp as a static library for musl, so that the static guest agent can enforce the
# OCI spec's seccomp profile (youki libcontainer's `libseccomp` feature, through the libseccomp
# crate). Debian's libseccomp-dev is for glibc only; this is the same source, Debian's package
# with its patches, compiled with musl-gcc against the kernel's UAPI headers.
#
#   guest/seccomp/libseccomp-musl.sh     prints the directory holding lib/libseccomp.a
#
# Cached in /var/cache/pulse/libseccomp-musl/<version>/ (PULSE_CACHE overrides the root): a second
# run only prints the path. Needs musl-tools, gperf and Debian's source archive (deb-src of the
# machine's own mirror, used through a private apt state: the system's sources are not changed).
set -euo pipefail

version=2.5.4-1+deb12u1
cache=${PULSE_CACHE:-/var/cache/pulse}/libseccomp-musl/${version//+/-}
log() { echo "libseccomp-musl: $*" >&2; }

if [ -f "$cache/done" ]; then
    echo "$cache"
    exit 0
fi

for tool in musl-gcc gperf apt-get patch make; do
    command -v "$tool" >/dev/null || { log "needs $tool (scripts/install-deps.sh installs it)"; exit 1; }
done

work=$(mktemp -d /tmp/pulse-libseccomp.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The source package from the machine's own Debian mirror, through a private apt state.
mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$work/apt/lists/partial"
echo "deb-src $mirror bookworm main" >"$work/apt/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache::archives=$work/apt")
log "fetching the libseccomp $version source package from $mirror"
apt-get "${apt_opts[@]}" update -qq >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; exit 1; }
(cd "$work" && apt-get "${apt_opts[@]}" source --download-only "libseccomp=$version" >>"$work/apt.log" 2>&1) ||
    { cat "$work/apt.log" >&2; exit 1; }

upstream=${version%%-*}
tar -xzf "$work/libseccomp_$upstream.orig.tar.gz" -C "$work"
src=$work/libseccomp-$upstream
tar -xJf "$work/libseccomp_$version.debian.tar.xz" -C "$src"
if [ -f "$src/debian/patches/series" ]; then
    while read -r p; do
        case $p in ''|'#'*) continue ;; esac
        patch -s -d "$src" -p1 <"$src/debian/patches/$p"
    done <"$src/debian/patches/series"
fi

# musl has no kernel headers of its own: the UAPI ones (linux-libc-dev) are libc-neutral.
mkdir -p "$work/uapi"
ln -s /usr/include/linux "$work/uapi/linux"
ln -s /usr/include/x86_64-linux-gnu/asm "$work/uapi/asm"
ln -s /usr/include/asm-generic "$work/uapi/asm-generic"

log "building with musl-gcc (log: $work/build.log, kept on failure)"
rm -rf "$cache.tmp"
if ! (cd "$src" &&
    ./configure --host=x86_64-linux-musl CC=musl-gcc CFLAGS="-O2 -isystem $work/uapi" \
        --enable-static --disable-shared --prefix="$cache.tmp" &&
    make -j"$(nproc)" -C src && make -C src install && make -C include install) >"$work/build.log" 2>&1; then
    cp "$work/build.log" /tmp/pulse-libseccomp-build.log
    log "build failed: /tmp/pulse-libseccomp-build.log"
    exit 1
fi
touch "$cache.tmp/done"
rm -rf "$cache"
mkdir -p "$(dirname "$cache")"
mv "$cache.tmp" "$cache"
echo "$cache"

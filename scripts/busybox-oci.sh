#!/usr/bin/env bash
# Builds an offline OCI image tarball of busybox-static (no registry needed):
#   scripts/busybox-oci.sh OUT.tar [IMAGE-NAME [LAYER-DIR...]]
# then `ctr images import OUT.tar`. Default name docker.io/library/pulse-busybox:latest.
# Each LAYER-DIR becomes one more (uncompressed) layer on top of busybox's, in order, as it
# is: OCI whiteouts in it (`.wh.NAME` removes NAME of the layers below, `.wh..wh..opq` makes
# its directory opaque) are whiteouts in the image.
set -euo pipefail
out=$1
name=${2:-docker.io/library/pulse-busybox:latest}
extra=("${@:3}")
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "busybox-oci: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
layer=$work/layer
mkdir -p "$layer/bin" "$work/blobs/sha256"
cp "$busybox" "$layer/bin/busybox"
# The applet links in one process: one `ln` each costs about 15 s in the nested rig's L1.
"$busybox" --list | perl -e '$dir = shift; while (<STDIN>) { chomp;
    $_ eq "busybox" or symlink("busybox", "$dir/$_") or die "busybox-oci: link $_: $!\n" }' "$layer/bin"
mkdir -p "$layer"/{proc,sys,dev,tmp,etc,root,run}
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$layer/etc/passwd"
printf 'root:x:0:\n' > "$layer/etc/group"
blob() { # file -> moves it into blobs/, prints "digest size"
    local sha size
    sha=$(sha256sum "$1" | cut -d' ' -f1); size=$(stat -c %s "$1")
    mv "$1" "$work/blobs/sha256/$sha"; echo "$sha $size"
}
layer_tar() { # dir -> "digest size" of its tarball, moved into blobs/
    tar -C "$1" --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 -cf "$work/layer.tar" .
    blob "$work/layer.tar"
}
diff_ids=() layers=()
for dir in "$layer" "${extra[@]}"; do
    read -r lsha lsize < <(layer_tar "$dir")
    diff_ids+=("\"sha256:$lsha\"")
    layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$lsha\",\"size\":$lsize}")
done
join() { local IFS=,; echo "$*"; }
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$(join "${diff_ids[@]}")" > "$work/config.json"
read -r csha csize < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
    "$csha" "$csize" "$(join "${layers[@]}")" > "$work/manifest.json"
read -r msha msize < <(blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$msha" "$msize" "$name" "${name##*:}" > "$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
tar -C "$work" -cf "$out" oci-layout index.json blobs

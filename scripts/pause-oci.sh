#!/usr/bin/env bash
# Builds an offline OCI image tarball of the pod sandbox's process (the "pause" image of the
# CRI tests; no registry needed):
#   scripts/pause-oci.sh OUT.tar PAUSE-BINARY [IMAGE-NAME]
# PAUSE-BINARY is the static pulse-pause (guest/pause, built for x86_64-unknown-linux-musl);
# the image holds it as /pause and nothing else; its config is registry.k8s.io/pause's (the PATH
# environment, the entrypoint, user 65535). Then `ctr -n k8s.io images import OUT.tar`.
# Default name docker.io/library/pulse-pause:latest.
set -euo pipefail
out=$1
pause=$2
name=${3:-docker.io/library/pulse-pause:latest}
[ -x "$pause" ] || { echo "pause-oci: $pause is not an executable" >&2; exit 1; }
if readelf -l "$pause" | grep -q 'program interpreter'; then
    echo "pause-oci: $pause is dynamically linked (build it for x86_64-unknown-linux-musl)" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
layer=$work/layer
mkdir -p "$layer" "$work/blobs/sha256"
cp "$pause" "$layer/pause"
chmod 0755 "$layer/pause"
blob() { # file -> moves it into blobs/, prints "digest size"
    local sha size
    sha=$(sha256sum "$1" | cut -d' ' -f1); size=$(stat -c %s "$1")
    mv "$1" "$work/blobs/sha256/$sha"; echo "$sha $size"
}
tar -C "$layer" --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 -cf "$work/layer.tar" .
read -r lsha lsize < <(blob "$work/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$lsha" > "$work/config.json"
read -r csha csize < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$csha" "$csize" "$lsha" "$lsize" > "$work/manifest.json"
read -r msha msize < <(blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$msha" "$msize" "$name" "${name##*:}" > "$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
tar -C "$work" -cf "$out" oci-layout index.json blobs

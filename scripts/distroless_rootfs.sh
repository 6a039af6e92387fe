#!/usr/bin/env bash
# The size of infra/docker/batch.Dockerfile's image, without a container engine: the Debian 12
# packages `gcr.io/distroless/cc-debian12` is made of (base-files, netbase, tzdata,
# ca-certificates, libc6, libssl3, libgcc-s1, libgomp1, libstdc++6), fetched with
# `apt-get download` and unpacked into a root file system without their manuals and docs (as
# distroless ships them, copyright files kept), the CA bundle built from the certificates, plus
# the stripped binary at /usr/local/bin/mlops. Prints the file system's size and its tar.gz (gzip
# -9) with and without the binary. An estimate of the image: distroless pins its own package
# versions and adds /etc/passwd and a few small files.
# Usage: scripts/distroless_rootfs.sh BINARY
set -euo pipefail
BINARY="$1"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mlops-rootfs.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/debs" "$WORK/root"
(cd "$WORK/debs" && apt-get download base-files netbase tzdata ca-certificates libc6 libssl3 \
  libgcc-s1 libgomp1 libstdc++6 >/dev/null 2>&1)
for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$WORK/root"; done
rm -rf "$WORK/root/usr/share/man" "$WORK/root/usr/share/info" "$WORK/root/usr/share/lintian"
find "$WORK/root/usr/share/doc" -type f ! -name copyright -delete
mkdir -p "$WORK/root/etc/ssl/certs"
cat "$WORK"/root/usr/share/ca-certificates/*/*.crt >"$WORK/root/etc/ssl/certs/ca-certificates.crt"
packages="$(cd "$WORK/debs" && ls *.deb | sed 's/_amd64.deb$//; s/_all.deb$//' | tr '\n' ' ')"
base_gz="$(tar -C "$WORK/root" -cf - . | gzip -9 | wc -c)"
base_size="$(du -s --apparent-size --block-size=1 "$WORK/root" | cut -f1)"
mkdir -p "$WORK/root/usr/local/bin"
strip -o "$WORK/root/usr/local/bin/mlops" "$BINARY"
all_gz="$(tar -C "$WORK/root" -cf - . | gzip -9 | wc -c)"
all_size="$(du -s --apparent-size --block-size=1 "$WORK/root" | cut -f1)"
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "packages: $packages"
echo "base: $(mib "$base_size"), tar.gz $(mib "$base_gz")"
echo "base + mlops: $(mib "$all_size"), tar.gz $(mib "$all_gz")"

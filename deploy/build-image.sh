#!/usr/bin/env bash
# Builds the labelqc container image from deploy/Containerfile: a FROM scratch image holding the
# release binary and the shared libraries it links, so that the build pulls nothing and runs
# nothing inside a container (no RUN steps).
#
#   deploy/build-image.sh [TAG]        TAG defaults to localhost/labelqc:<version of Cargo.toml>
#
# It builds the binary with `cargo build --release --locked` unless LABELQC_BINARY names one
# already built, then lays out the build context in target/image/ (override with
# LABELQC_IMAGE_CONTEXT):
#   rootfs/usr/local/bin/labelqc      the binary
#   rootfs/<path of each library>     every library `ldd` lists, the dynamic loader included,
#                                     copied from this machine (so build on the distribution the
#                                     image should carry: glibc, OpenSSL and zlib come from it)
#   rootfs/etc/ssl/certs/ca-certificates.crt, rootfs/etc/passwd, group, nsswitch.conf
# and runs `podman build` (PODMAN=docker or buildah also work). deploy/check-image.sh checks the
# result without running a container.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
tag=${1:-localhost/labelqc:$version}
podman=${PODMAN:-podman}
context=${LABELQC_IMAGE_CONTEXT:-target/image}
certs=/etc/ssl/certs/ca-certificates.crt

if [ -n "${LABELQC_BINARY:-}" ]; then
  binary=$LABELQC_BINARY
else
  cargo build --release --locked --bin labelqc
  binary=target/release/labelqc
fi
[ -x "$binary" ] || { echo "error: $binary is not an executable" >&2; exit 1; }
[ -f "$certs" ] || { echo "error: $certs is missing: install ca-certificates" >&2; exit 1; }
command -v ldd >/dev/null || { echo "error: ldd is missing: install libc-bin" >&2; exit 1; }

rm -rf "$context"
rootfs=$context/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs"
cp "$binary" "$rootfs/usr/local/bin/labelqc"

# Each library as ldd resolves it ("name => /path (address)", or "/path (address)" for the
# loader), copied with its links followed to the path the binary asks for.
libraries=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
if ldd "$binary" | grep -q "not found"; then
  echo "error: $binary links libraries that are not installed:" >&2
  ldd "$binary" | grep "not found" >&2
  exit 1
fi
[ -n "$libraries" ] || { echo "error: ldd lists no libraries of $binary" >&2; exit 1; }
for library in $libraries; do
  mkdir -p "$rootfs$(dirname "$library")"
  cp -L "$library" "$rootfs$library"
done

cp -L "$certs" "$rootfs$certs"
printf 'root:x:0:0:root:/root:/sbin/nologin\nlabelqc:x:65532:65532:labelqc:/nonexistent:/sbin/nologin\n' \
  > "$rootfs/etc/passwd"
printf 'root:x:0:\nlabelqc:x:65532:\n' > "$rootfs/etc/group"
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
cp deploy/Containerfile "$context/Containerfile"

echo "image context: $(du -sh "$rootfs" | cut -f1) in $context; libraries:" $libraries
"$podman" build --tag "$tag" --file "$context/Containerfile" "$context"
echo "built $tag"

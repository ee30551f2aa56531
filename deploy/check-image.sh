#!/usr/bin/env bash
# Checks the image that deploy/build-image.sh built, without running a container (machines that
# refuse a container's rlimits can still check it): mounts the image's filesystem with
# `podman image mount` and, inside it with chroot as the image's user,
#   - runs `labelqc --version` and compares it with Cargo.toml's version;
#   - runs `labelqc report` on examples/sample-labels.jsonl (read from standard input) and
#     compares the report with the one the binary that was packed gives on this machine;
#   - checks that the image holds only what build-image.sh put there, in one layer, and that
#     its entrypoint and user are those of deploy/Containerfile.
#
#   deploy/check-image.sh [TAG] [BINARY]   defaults: localhost/labelqc:<version>, target/release/labelqc
# Needs root (podman image mount and chroot).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
tag=${1:-localhost/labelqc:$version}
binary=${2:-target/release/labelqc}
podman=${PODMAN:-podman}

fail() { echo "image check failed: $*" >&2; exit 1; }

mount=$("$podman" image mount "$tag")
work=$(mktemp -d)
trap '"$podman" image unmount "$tag" >/dev/null; rm -rf "$work"' EXIT
echo "mounted $tag at $mount"

in_image() { chroot --userspec=65532:65532 "$mount" /usr/local/bin/labelqc "$@"; }

got=$(in_image --version)
[ "$got" = "labelqc $version" ] || fail "labelqc --version said '$got', expected 'labelqc $version'"
echo "labelqc --version in the image: $got"

in_image report --labels - < examples/sample-labels.jsonl > "$work/image.json"
"$binary" report --labels examples/sample-labels.jsonl > "$work/host.json"
cmp -s "$work/image.json" "$work/host.json" || fail "the report from the image differs from $binary's"
grep -q '"scopes":\[{' "$work/image.json" || fail "the report from the image has no scopes: $(head -c 300 "$work/image.json")"
echo "labelqc report in the image: $(wc -c < "$work/image.json") bytes, the same as $binary's"

# Exactly what build-image.sh lays out: the binary, libraries, certificates, passwd, group,
# nsswitch.conf.
unexpected=$(cd "$mount" && find . -type f | grep -v -E '^\./(usr/local/bin/labelqc|(usr/)?lib(64|32|x32)?/.*\.so[.0-9]*|etc/ssl/certs/ca-certificates\.crt|etc/(passwd|group|nsswitch\.conf))$' || true)
[ -z "$unexpected" ] || fail "unexpected files in the image: $unexpected"
layers=$("$podman" image inspect --format '{{len .RootFS.Layers}}' "$tag")
[ "$layers" = 1 ] || fail "$layers layers; a scratch image with one COPY has 1"
entrypoint=$("$podman" image inspect --format '{{json .Config.Entrypoint}} {{.Config.User}}' "$tag")
[ "$entrypoint" = '["/usr/local/bin/labelqc"] 65532:65532' ] || fail "entrypoint and user: $entrypoint"
echo "image $tag: $(cd "$mount" && find . -type f | wc -l) files, 1 layer, entrypoint and user as in deploy/Containerfile"

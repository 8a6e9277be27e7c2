#!/bin/sh
# Builds the publish step's image, kaon-ml-publish:local, from this
# machine's own files (no registry, no base image): a shell and the tools
# the step packages the model with, and the libraries they load.
# Usage: build-publish-image.sh [IMAGE]
set -eu
IMAGE=${1:-kaon-ml-publish:local}
ROOT=$(mktemp -d "${TMPDIR:-/tmp}/kaon-publish-image.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/bin" "$ROOT/etc" "$ROOT/tmp"
chmod 1777 "$ROOT/tmp"
for b in sh cat printf mkdir tar gzip wc sha256sum cut; do
    p=""
    for d in /usr/bin /bin; do [ -x "$d/$b" ] && p=$(readlink -f "$d/$b") && break; done
    [ -n "$p" ] || { echo "build-publish-image.sh: $b not found in /usr/bin or /bin" >&2; exit 1; }
    cp -L "$p" "$ROOT/bin/$b"
    for lib in $(ldd "$p" | grep -o '/[^ ]*'); do
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done
done
echo kaon-ml-publish > "$ROOT/etc/kaon-image"
tar --sort=name --owner=0 --group=0 --mtime=@0 -C "$ROOT" -cf - . | docker import - "$IMAGE" >/dev/null
echo "built $IMAGE"

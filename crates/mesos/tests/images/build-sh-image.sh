#!/bin/sh
# Builds a tiny docker image from this machine's own files (no registry, no
# base image): /bin/sh and a few coreutils with the libraries they load,
# and /etc/kaon-image holding "in-image", so a test can tell a step ran
# inside it. Usage: build-sh-image.sh IMAGE
set -eu
IMAGE=$1
ROOT=$(mktemp -d "${TMPDIR:-/tmp}/kaon-sh-image.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/bin" "$ROOT/etc" "$ROOT/tmp"
chmod 1777 "$ROOT/tmp"
for b in sh cat echo printf sleep true head; do
    p=$(readlink -f "/bin/$b")
    cp -L "$p" "$ROOT/bin/$b"
    for lib in $(ldd "$p" | grep -o '/[^ ]*'); do
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done
done
echo in-image > "$ROOT/etc/kaon-image"
tar --sort=name --owner=0 --group=0 --mtime=@0 -C "$ROOT" -cf - . | docker import - "$IMAGE" >/dev/null

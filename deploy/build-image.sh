#!/bin/sh
# Builds the docker image kaon:local from this machine's files only: no base
# image, no registry. The image holds
#   /usr/local/bin/kaon          the release binary (server, CLI, executor, emulator)
#   /bin/sh (dash) and a few coreutils for steps that run shell commands
#   the shared libraries all of them load (found with ldd), the ELF loader
#   /etc/passwd, /etc/group, /etc/nsswitch.conf, an empty /tmp
# assembled into a rootfs directory, packed into a tarball with fixed owners,
# order and mtimes (byte-identical for the same binaries and libraries), and
# `docker import`ed.
#
# Usage: deploy/build-image.sh [--no-build]
#   --no-build        use the existing $CARGO_TARGET_DIR/release/kaon
# Environment:
#   IMAGE             image name (default kaon:local)
#   CARGO_TARGET_DIR  cargo's target directory (default ./target)
#   KAON_IMAGE_BINS   extra host programs to include (space-separated names)
#   KAON_BIN          the kaon binary to package (default: the release build)
set -eu

cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-kaon:local}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BUILD=1
[ "${1:-}" = "--no-build" ] && BUILD=0

if [ $BUILD = 1 ]; then
    # No debug info: the image does not need it and the build is smaller.
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR="$TARGET" \
        cargo build --release --locked -p kaon-cli
fi
KAON=${KAON_BIN:-$TARGET/release/kaon}
[ -x "$KAON" ] || { echo "no $KAON (build it, or drop --no-build)" >&2; exit 1; }

# Programs steps may call through `sh -c`. Keep this list short: the
# emulator's agent runs steps inside its own container, and anything a real
# workload needs belongs in the Mesos agents of a real deployment.
BINS="sh true false echo printf sleep cat env ls mkdir rm cp mv touch date \
head tail wc tr cut sort uniq seq test id uname basename dirname ${KAON_IMAGE_BINS:-}"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kaon-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/rootfs"
mkdir -p "$ROOT/usr/local/bin" "$ROOT/usr/bin" "$ROOT/etc" "$ROOT/tmp" \
    "$ROOT/data" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"
chmod 1777 "$ROOT/tmp"
# The same merged-/usr layout as the host, so ELF interpreter and library
# paths (/lib64/ld-linux-x86-64.so.2, /lib/x86_64-linux-gnu/...) resolve.
for d in bin lib lib64 sbin; do
    if [ -L "/$d" ]; then
        ln -s "$(readlink "/$d")" "$ROOT/$d"
        mkdir -p "$ROOT/$(readlink -f "/$d" | sed 's,^/,,')"
    else
        mkdir -p "$ROOT/$d"
    fi
done

# copy FILE: FILE's content at FILE's path in the rootfs (directories
# resolved through the layout symlinks, the file name kept, e.g. a
# library's soname symlink becomes a file of that name).
copy() {
    dir=$(readlink -f "$(dirname "$1")")
    mkdir -p "$ROOT$dir"
    cp -L "$1" "$ROOT$dir/$(basename "$1")"
}
# libs FILE: copies every shared library FILE loads, and the loader.
libs() {
    ldd "$1" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' |
        while read -r lib; do copy "$lib"; done
}

strip -o "$ROOT/usr/local/bin/kaon" "$KAON"
libs "$KAON"
for b in $BINS; do
    p=
    for d in /usr/bin /bin /usr/sbin /sbin; do
        [ -x "$d/$b" ] && { p="$d/$b"; break; }
    done
    [ -n "$p" ] || { echo "skipping $b: not a program on this machine" >&2; continue; }
    real=$(readlink -f "$p")              # /bin/sh -> /usr/bin/dash
    copy "$real"
    libs "$real"
    dest=$(readlink -f "$(dirname "$p")")/$b
    [ -e "$ROOT$dest" ] || ln -s "$(basename "$real")" "$ROOT$dest"
done
[ -e "$ROOT/usr/bin/[" ] || ln -s test "$ROOT/usr/bin/["

cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo 'hosts: files dns' >"$ROOT/etc/nsswitch.conf"
# Docker bind-mounts these at run time; empty placeholders keep them files.
: >"$ROOT/etc/hosts"
: >"$ROOT/etc/resolv.conf"
: >"$ROOT/etc/hostname"

# Reproducible tarball: fixed order, owners and mtimes (the commit's time).
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
tar --sort=name --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner \
    -C "$ROOT" -cf "$WORK/rootfs.tar" .
size=$(du -sh "$WORK/rootfs.tar" | cut -f1)
sum=$(sha256sum "$WORK/rootfs.tar" | cut -c1-16)

# The image's config; with the rootfs digest it names the image (its
# comment), so an unchanged build is not imported again.
ENTRY=/usr/local/bin/kaon
IMG_PATH=/usr/local/bin:/usr/bin:/bin
comment="kaon rootfs sha256 $sum, entrypoint $ENTRY, PATH $IMG_PATH, workdir /data"
old=$(docker image inspect -f '{{.Id}} {{.Comment}}' "$IMAGE" 2>/dev/null || true)
if [ "${old#* }" = "$comment" ]; then
    echo "$IMAGE is up to date: rootfs $size (sha256 $sum...)"
    exit 0
fi
docker import \
    --change "ENV PATH=$IMG_PATH" \
    --change 'WORKDIR /data' \
    --change "ENTRYPOINT [\"$ENTRY\"]" \
    --change 'CMD ["--help"]' \
    --message "$comment" \
    "$WORK/rootfs.tar" "$IMAGE" >/dev/null
# The image it replaces, if nothing else uses it.
[ -z "$old" ] || docker rmi "${old%% *}" >/dev/null 2>&1 || true
echo "built $IMAGE: rootfs $size (sha256 $sum...), $(find "$ROOT" -type f | wc -l) files"

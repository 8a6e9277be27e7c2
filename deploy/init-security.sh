#!/bin/sh
# Makes what the compose deployment's TLS and authentication need, once:
#   DIR/tls/ca.pem, ca.key          the cluster CA (keep ca.key offline)
#   DIR/tls/node-N.pem, node-N.key  each node's certificate: names kaon1,
#                                   kaon2, kaon3, localhost, 127.0.0.1
#   DIR/tokens.yaml                 the servers' --auth-file (hashes only)
#   DIR/admin.token                 an admin token for you (mode 0600)
# Existing files are kept (a second run changes nothing).
#
# Usage: deploy/init-security.sh [DIR]   (default: deploy/.security)
# Environment: KAON_CLI (the kaon binary; default target/release/kaon)
set -eu
cd "$(dirname "$0")/.."
DIR=${1:-deploy/.security}
KAON=${KAON_CLI:-${CARGO_TARGET_DIR:-$PWD/target}/release/kaon}
mkdir -p "$DIR"
if [ ! -e "$DIR/tls/ca.key" ]; then
    "$KAON" tls init "$DIR/tls" --nodes 3 --host kaon1 --host kaon2 --host kaon3 >/dev/null
fi
if [ ! -e "$DIR/tokens.yaml" ]; then
    umask 077
    out=$("$KAON" --output json token new --principal admin --role admin)
    printf '%s\n' "$out" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p' > "$DIR/admin.token"
    sha=$(printf '%s\n' "$out" | sed -n 's/.*"sha256":"\([^"]*\)".*/\1/p')
    printf 'tokens:\n  - {principal: admin, role: admin, sha256: %s}\n' "$sha" > "$DIR/tokens.yaml"
    chmod 644 "$DIR/tokens.yaml"
fi
echo "$DIR: CA and node certificates in tls/, tokens.yaml, admin.token"

#!/bin/sh
# Smoke test of the compose deployment (needs Docker; CI runs it through
# crates/cli/tests/compose.rs with the test build's binary). Builds the image, starts the cluster as project
# `kaon-smoke` (its own ports, network and volumes, so a deployment under
# another project name is left alone), and checks:
#   1. a leader with 3 members, seen by every node;
#   2. a 2-step workflow submitted through a follower (forwarded to the
#      leader) succeeds (`kaon submit --watch`);
#   3. after `kill` of the leader's container another node leads and a
#      second workflow succeeds;
#   4. the killed node, started again, rejoins: every node at the same
#      applied event index and state digest;
#   5. every node's admin port answers /readyz, /metrics (the leader says
#      kaon_raft_is_leader 1) and, after signing in with the token, the
#      web UI's runs page;
#   6. TLS and tokens are on: plain text and a call without a token are
#      refused (every call above goes over https with the cluster CA and
#      the admin token that deploy/init-security.sh made).
# `compose down -v` always runs at the end (trap), pass or fail.
#
# Usage: deploy/smoke.sh [--no-build]    (--no-build: reuse the release binary)
# Environment: CARGO_TARGET_DIR, KAON_CLI (the kaon binary to use and, with
#   --no-build, to package; default the release build), SMOKE_DEADLINE
#   (seconds per wait, default 60), KAON1_PORT..KAON3_PORT,
#   KAON1_ADMIN_PORT..KAON3_ADMIN_PORT, KAON_MESOS_PORT, KAON_NET (see
#   compose.yaml).
set -eu

cd "$(dirname "$0")/.."
T0=$(date +%s)
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
KAON=${KAON_CLI:-$TARGET/release/kaon}
DEADLINE=${SMOKE_DEADLINE:-60}
export COMPOSE_PROJECT_NAME=kaon-smoke
export KAON1_PORT=${KAON1_PORT:-17081} KAON2_PORT=${KAON2_PORT:-17082} KAON3_PORT=${KAON3_PORT:-17083}
export KAON1_ADMIN_PORT=${KAON1_ADMIN_PORT:-17091} KAON2_ADMIN_PORT=${KAON2_ADMIN_PORT:-17092} KAON3_ADMIN_PORT=${KAON3_ADMIN_PORT:-17093}
export KAON_MESOS_PORT=${KAON_MESOS_PORT:-15050} KAON_NET=${KAON_NET:-172.29.71}
if docker compose version >/dev/null 2>&1; then
    compose() { docker compose -f deploy/compose.yaml "$@"; }
else
    compose() { docker-compose -f deploy/compose.yaml "$@"; }
fi

say() { echo "[$(($(date +%s) - T0))s] $*"; }
ms() { echo $(($(date +%s%N) / 1000000)); }   # GNU date
port() { eval echo "\$KAON$1_PORT"; }
url() { echo "https://127.0.0.1:$(port "$1")"; }
# status N: node N's `cluster status` as one JSON line (empty if it does not answer)
status() { "$KAON" --server "$(url "$1")" --timeout 3 --output json cluster status 2>/dev/null || true; }
num() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
str() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
# wait_for WHAT CMD...: runs CMD every 0.2 s until it succeeds or DEADLINE passes
wait_for() {
    what=$1
    shift
    end=$(($(date +%s) + DEADLINE))
    until "$@"; do
        if [ "$(date +%s)" -ge "$end" ]; then
            say "FAIL: no $what within ${DEADLINE}s"
            return 1
        fi
        sleep 0.2
    done
    say "ok: $what"
}

cleanup() {
    rc=$?
    if [ $rc != 0 ]; then
        say "FAILED (exit $rc); last log lines:"
        compose logs --no-color --tail 30 2>&1 || true
    fi
    say "compose down -v"
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    [ -z "${SECURITY:-}" ] || rm -rf "$SECURITY"
    exit $rc
}
SPEC=deploy/smoke.yaml
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${1:-}" = "--no-build" ]; then
    KAON_BIN="$KAON" sh deploy/build-image.sh --no-build
else
    CARGO_TARGET_DIR="$TARGET" sh deploy/build-image.sh
fi
say "image built"
# Certificates and a token in a directory of this run's own.
SECURITY=$(mktemp -d)
KAON_CLI="$KAON" sh deploy/init-security.sh "$SECURITY/s" >/dev/null
export KAON_SECURITY_DIR="$SECURITY/s"
export KAON_TLS_CA="$SECURITY/s/tls/ca.pem"
KAON_TOKEN=$(cat "$SECURITY/s/admin.token")
export KAON_TOKEN
say "certificates and an admin token made"
compose down -v --remove-orphans >/dev/null 2>&1 || true
compose up -d
say "compose up"

# others N: the node numbers other than N
others() { for n in 1 2 3; do if [ "$n" != "$1" ]; then echo "$n"; fi; done; }
# LEADER is set by the checks below; ALIVE lists the running nodes.
ALIVE="1 2 3"
LEADER=
# one_leader [NOT]: every running node names the same leader (not NOT) of 3 members
one_leader() {
    l=
    for n in $ALIVE; do
        s=$(status "$n")
        m=$(printf %s "$s" | grep -o '"raft_addr"' | wc -l)
        ln=$(printf %s "$s" | num leader_id)
        [ "$m" = 3 ] && [ -n "$ln" ] && [ "$ln" != 0 ] || return 1
        [ -z "$l" ] || [ "$l" = "$ln" ] || return 1
        l=$ln
    done
    [ "$l" != "${1:-}" ] || return 1
    LEADER=$l
}
# in_sync: every node at the same applied event index and state digest
in_sync() {
    seen=
    for n in 1 2 3; do
        s=$(status "$n")
        v="$(printf %s "$s" | num applied_event_index)/$(printf %s "$s" | str state_digest)"
        [ "$v" != / ] || return 1
        [ -z "$seen" ] || [ "$seen" = "$v" ] || return 1
        seen=$v
    done
    SYNC=$seen
}
# submit VIA: submits the spec through node VIA and watches it to the end
submit() {
    t=$(ms)
    out=$("$KAON" --server "$(url "$1")" submit "$SPEC" --watch 2>&1) || {
        printf '%s\n' "$out"
        say "FAIL: workflow through node $1 did not succeed"
        return 1
    }
    printf '%s\n' "$out" | sed 's/^/    /'
    say "ok: workflow through node $1 succeeded ($(($(ms) - t)) ms)"
}

wait_for "leader with 3 members" one_leader
"$KAON" --server "$(url "$LEADER")" cluster status | sed 's/^/    /'
FOLLOWER=$(others "$LEADER" | head -n 1)
say "leader is node $LEADER; submitting through follower node $FOLLOWER"
submit "$FOLLOWER"

OLD=$LEADER
compose kill "kaon$OLD" >/dev/null 2>&1
t=$(ms)
say "killed kaon$OLD (the leader)"
ALIVE=$(others "$OLD")
wait_for "new leader (not node $OLD)" one_leader "$OLD"
say "node $LEADER leads (seen by both survivors $(($(ms) - t)) ms after \`kill\` returned)"
submit "$(others "$OLD" | grep -vx "$LEADER")"

running=$(docker inspect -f '{{.State.Running}}' "$(compose ps -q "kaon$OLD")")
[ "$running" = false ] || { say "FAIL: kaon$OLD was restarted behind our back"; exit 1; }
compose start "kaon$OLD" >/dev/null 2>&1
say "started kaon$OLD again"
ALIVE="1 2 3"
wait_for "node $OLD back with the same leader" one_leader
wait_for "all three nodes at the same applied event index and digest" in_sync
say "in sync at event index ${SYNC%%/*}"
"$KAON" --server "$(url "$OLD")" cluster status | sed 's/^/    /'
admin() { eval echo "http://127.0.0.1:\$KAON$1_ADMIN_PORT"; }
get() { curl -fsS --max-time 5 "$1"; }
for n in 1 2 3; do
    get "$(admin "$n")/readyz" >/dev/null || { say "FAIL: node $n not ready on its admin port"; exit 1; }
    jar="$SECURITY/cookies-$n"
    curl -fsS --max-time 5 -o /dev/null -c "$jar" --data-urlencode "token=$KAON_TOKEN" "$(admin "$n")/ui/login" \
        || { say "FAIL: node $n's web UI refused the token"; exit 1; }
    curl -fsS --max-time 5 -b "$jar" "$(admin "$n")/ui/" | grep -q "<h1>Runs</h1>" || { say "FAIL: node $n serves no web UI"; exit 1; }
done
wait_for "the leader's metrics naming it leader" sh -c "curl -fsS --max-time 5 '$(admin "$LEADER")/metrics' | grep -qx 'kaon_raft_is_leader 1'"
say "ok: every node ready, serving /metrics and the web UI"
plain=$(KAON_TLS_CA= "$KAON" --server "http://127.0.0.1:$(port 1)" --timeout 3 runs 2>&1) && { say "FAIL: plain text was served"; exit 1; }
printf '%s\n' "$plain" | grep -q -- "--tls-ca" || { say "FAIL: plain text refused without a hint: $plain"; exit 1; }
anon=$(KAON_TOKEN= "$KAON" --server "$(url 1)" --timeout 3 runs 2>&1) && { say "FAIL: a call without a token was served"; exit 1; }
printf '%s\n' "$anon" | grep -q "Unauthenticated" || { say "FAIL: no token, but: $anon"; exit 1; }
say "ok: plain text and calls without a token are refused"
say "PASS"

#!/usr/bin/env bash
# Issue 4's comparative benchmarks in one run: kaon's 3-node cluster bench
# (crates/bench, `kaon-cluster-bench`), then the peer harnesses in
# ../shared/bench/peers (relative to the repository root; override with
# PEERS_DIR), one after another, never in parallel. Outputs go to $RESULTS
# (default /tmp/kaon-bench/results/<utc stamp>); the side-by-side table is
# printed at the end and saved as $RESULTS/compare.md.
#
# Usage: bench/run_all.sh [peer ...]      peers: etcd3 luigi prefect airflow
#        (default: etcd3 luigi prefect; Airflow takes ~35 min on its own)
# Env:   RESULTS, PEERS_DIR, CARGO_TARGET_DIR (default ./target),
#        NO_BUILD=1 (use the existing release binaries), BENCH_ARGS (extra
#        kaon-cluster-bench flags, e.g. "--failovers 5").
# Needs: the Rust toolchain; for etcd: apt-get install -y etcd-server etcd-client.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-$REPO/../shared/bench/peers}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
RESULTS=${RESULTS:-/tmp/kaon-bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
peers=("$@"); [ ${#peers[@]} -eq 0 ] && peers=(etcd3 luigi prefect)
[ -x "$PEERS_DIR/run_all.sh" ] || { echo "peer harnesses not found in $PEERS_DIR (set PEERS_DIR)" >&2; exit 1; }
mkdir -p "$RESULTS"

stamp() { echo "# $1 $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS/load.txt"; }

{
  echo "# $(date -u) $(uname -srm), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  grep -m1 'model name' /proc/cpuinfo
  echo "# kaon $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' (dirty)') on $(git -C "$REPO" rev-parse --abbrev-ref HEAD)"
  df -T /tmp | awk 'NR==2{print "# /tmp on "$2" ("$1")"}'
  uptime
} | tee "$RESULTS/host.txt"

if [ "${NO_BUILD:-0}" != 1 ]; then
  (cd "$REPO" && CARGO_TARGET_DIR="$TARGET" nice -n 10 cargo build --release --locked -p kaon-cli -p kaon-bench) || exit 1
fi

stamp "kaon start"
# shellcheck disable=SC2086
"$TARGET/release/kaon-cluster-bench" --kaon "$TARGET/release/kaon" \
  --out "$RESULTS/kaon.jsonl" --wf-out "$RESULTS/kaon_wf.jsonl" ${BENCH_ARGS:-} 2>&1 | tee "$RESULTS/kaon.txt"
rc=${PIPESTATUS[0]}
echo "=== kaon done rc=$rc"
python3 "$PEERS_DIR/wf_stats.py" kaon "$(git -C "$REPO" rev-parse --short HEAD)" "$RESULTS/kaon_wf.jsonl" | tee -a "$RESULTS/kaon.txt"
stamp "kaon end"

stamp "peers start"
RESULTS="$RESULTS/peers" "$PEERS_DIR/run_all.sh" "${peers[@]}"
stamp "peers end"

python3 "$REPO/bench/compare.py" "$RESULTS" | tee "$RESULTS/compare.md"
echo "results in $RESULTS"

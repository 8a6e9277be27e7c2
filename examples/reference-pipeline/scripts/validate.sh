#!/bin/sh
# Stands in for the JVM validation: stable from round $2 on.
set -eu
round=${1:-1}; stable_after=${2:-2}
if [ "$round" -ge "$stable_after" ]; then stable=true; else stable=false; fi
echo "round $round: stable=$stable"
[ -n "${KAON_OUTPUTS_FILE:-}" ] && printf '{"stable": %s}\n' "$stable" > "$KAON_OUTPUTS_FILE"
exit 0

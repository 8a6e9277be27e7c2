#!/bin/sh
# Stands in for the user-selection query: writes the cohort size as output.
set -eu
n=${1:-1000}
echo "selecting $n users"
[ -n "${KAON_OUTPUTS_FILE:-}" ] && printf '{"users": %s}\n' "$n" > "$KAON_OUTPUTS_FILE"
exit 0

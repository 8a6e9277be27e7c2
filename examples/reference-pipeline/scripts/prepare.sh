#!/bin/sh
# Stands in for the Python data preparation: writes the regions to train.
set -eu
echo "preparing two cohorts"
[ -n "${KAON_OUTPUTS_FILE:-}" ] && echo '{"regions": ["us", "eu", "apac"], "cohorts": 2}' > "$KAON_OUTPUTS_FILE"
exit 0

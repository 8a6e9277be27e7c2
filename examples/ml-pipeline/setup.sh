#!/bin/sh
# One-time set-up of the real ML pipeline's dependencies (Debian packages
# and PyPI only): R for the region models, a Java runtime for the
# validation, pyspark (ships spark-submit; local mode) and numpy for the
# global model, and the publish step's image built from local files.
# Python 3 and SQLite (Python's sqlite3) are assumed; run as root.
set -eu
cd "$(dirname "$0")"
need=""
command -v Rscript >/dev/null || need="$need r-base-core"
command -v java >/dev/null || need="$need openjdk-17-jre-headless"
if [ -n "$need" ]; then
    apt-get update -qq && apt-get install -y -qq $need
fi
command -v spark-submit >/dev/null || python3 -m pip install -q --disable-pip-version-check pyspark numpy
if command -v pyenv >/dev/null; then pyenv rehash; fi
if docker info >/dev/null 2>&1; then
    ./build-publish-image.sh
else
    echo "setup.sh: no Docker daemon here: the publish step's image is not built (run build-publish-image.sh where Docker runs)" >&2
fi

#!/bin/sh
# Stands in for publishing the models (a container in production).
set -eu
echo "publishing models"
exit 0

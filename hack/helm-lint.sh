#!/usr/bin/env bash
# `helm lint --strict` of the chart with the pinned helm (built by hack/build-control-plane.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d charts/berth ]; then
  echo "error: charts/berth is missing" >&2
  exit 1
fi
.cluster/bin/helm lint --strict charts/berth

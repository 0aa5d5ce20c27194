#!/usr/bin/env bash
# `helm lint --strict` of the chart with the pinned helm (built by hack/build-control-plane.sh),
# with the default values and with the optional parts switched on (namespaced mode, replicas,
# NetworkPolicy, ServiceMonitor), so every template branch is linted.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d charts/berth ]; then
  echo "error: charts/berth is missing" >&2
  exit 1
fi
helm=.cluster/bin/helm
$helm lint --strict charts/berth
$helm lint --strict charts/berth \
  --set 'watchNamespaces={ml,nlp}' --set replicaCount=2 \
  --set-json 'networkPolicy.metricsFrom=[{"ipBlock":{"cidr":"10.0.0.0/8"}}]' \
  --set metrics.serviceMonitor.enabled=true
$helm lint --strict charts/berth \
  --set replicaCount=1 --set metrics.enabled=false --set rbac.create=false \
  --set serviceAccount.create=false --set serviceAccount.name=berth --set networkPolicy.enabled=false
$helm lint --strict charts/berth \
  --set podPolicy.level=privileged --set-json 'podPolicy.namespaces={"secure":"restricted","mid":"baseline"}'

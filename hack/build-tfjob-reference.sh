#!/usr/bin/env bash
# Build Kubeflow's training-operator (TFJob and the other kubeflow.org/v1 jobs), the reference
# bench/faults.py compares Berth with, from its Go module into the same cache as
# hack/build-control-plane.sh: ${BERTH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}
#   bin/training-operator-<version>          the manager
#   training-operator-<version>/crds/*.yaml  the module's CRDs (manifests/base/crds)
# Cached by version: a warm machine skips this in a second. Not part of `make test`.
# v1.9.4: the newest github.com/kubeflow/training-operator the Go module proxy serves (v1.9.5
# and v1.10.0: "not available"), although `go list -m -versions` and @latest name only v1.8.1.
set -euo pipefail

version=${TRAINING_OPERATOR_VERSION:-v1.9.4}
module=github.com/kubeflow/training-operator
cache=${BERTH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}
bin=$cache/bin
logs=$cache/logs
crds=$cache/training-operator-$version/crds
mkdir -p "$bin" "$logs"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GO111MODULE=on

log=$logs/training-operator-$version.log
if [ ! -x "$bin/training-operator-$version" ]; then
  echo "building training-operator $version (cold: 1-3 min on 2 cores; log: $log)"
  gobin=$(mktemp -d)
  start=$SECONDS
  if ! GOBIN=$gobin nice -n 10 go install -trimpath -ldflags "-s -w" \
    "$module/cmd/training-operator.v1@$version" >"$log" 2>&1; then
    echo "error: building training-operator $version failed; see its log: $log" >&2
    tail -n 20 "$log" >&2 || true
    exit 1
  fi
  mv "$gobin/training-operator.v1" "$bin/training-operator-$version"
  rm -rf "$gobin"
  echo "built training-operator in $((SECONDS - start)) s"
fi
if [ ! -s "$crds/kubeflow.org_tfjobs.yaml" ]; then
  dir=$(go mod download -json "$module@$version" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$crds.tmp" && mkdir -p "$crds.tmp"
  cp "$dir"/manifests/base/crds/kubeflow.org_*.yaml "$crds.tmp/"
  chmod -R u+w "$crds.tmp" && rm -rf "$crds" && mv "$crds.tmp" "$crds"
fi
echo "training-operator $version: $bin/training-operator-$version, CRDs in $crds"

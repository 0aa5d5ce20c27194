#!/usr/bin/env bash
# Keep the chart's CRD an exact copy of the generated one (one source of truth: crds/, written by
# `python -m berth_operator.crdgen`). Helm installs charts/berth/crds/ but never upgrades it; see
# docs/install.md for the upgrade path.
#
#   bash hack/sync-chart-crds.sh           # copy crds/*.yaml into charts/berth/crds/
#   bash hack/sync-chart-crds.sh --check   # exit 1 with a diff when the chart's copy differs
set -euo pipefail
cd "$(dirname "$0")/.."

source_dir=crds
chart_dir=charts/berth/crds
check=0
case ${1:-} in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
files=("$source_dir"/*.yaml)
if [ ${#files[@]} -eq 0 ]; then
  echo "error: no generated CRD in $source_dir/; run \`make crds\` first" >&2
  exit 1
fi

status=0
for file in "${files[@]}"; do
  copy=$chart_dir/$(basename "$file")
  if [ "$check" -eq 1 ]; then
    if ! diff -u "$file" "$copy"; then
      echo "error: $copy differs from $file; run \`bash hack/sync-chart-crds.sh\`" >&2
      status=1
    fi
  else
    mkdir -p "$chart_dir"
    cp "$file" "$copy"
  fi
done
exit "$status"

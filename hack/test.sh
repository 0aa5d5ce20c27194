#!/usr/bin/env bash
# Run the whole pytest suite (unit, integration, e2e) against a control plane started here and
# stopped on exit, failure included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
started=0
if ! python3 hack/cluster.py status >/dev/null; then
  started=1
  # After `down`, nothing of the real node may remain on the host (bridge, iptables chains,
  # container processes, mounts, changed sysctls): `leftovers` lists it and fails the run.
  trap 'python3 hack/cluster.py down >/dev/null || true
        python3 hack/cluster.py leftovers >&2 || exit 1' EXIT
  python3 hack/cluster.py up
fi
export KUBECONFIG=${BERTH_CLUSTER_DIR:-$PWD/.cluster}/kubeconfig PATH=$PWD/.cluster/bin:$PWD/.venv/bin:$PATH
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
[ "$started" -eq 1 ] || echo "(control plane left running: it was up before the tests)"
exit "$rc"

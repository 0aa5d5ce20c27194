#!/usr/bin/env bash
# Run the whole pytest suite (unit, integration, e2e) against a control plane started here and
# stopped on exit, failure included. Extra arguments go to pytest, as one run.
#
# Without arguments the suite runs as two pytest processes at once: tests/unit (TensorFlow, CPU
# bound, no cluster) under `nice`, beside the cluster tests (tests/integration, tests/e2e,
# tests/containers), which spend most of their time waiting for the control plane, kubelet and
# containers, followed by the trainer's multi-process tests ($after_cluster), so that both runs
# take about as long; the unit run's output follows the other's. BERTH_TEST_SERIAL=1 runs them
# one after the other, as one pytest process.
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
if [ $# -gt 0 ] || [ "${BERTH_TEST_SERIAL:-0}" = 1 ]; then
  .venv/bin/pytest "$@"
  rc=$?
else
  after_cluster=(tests/unit/trainer/test_trainer_checkpoint_kill.py
    tests/unit/trainer/test_trainer_multiworker.py tests/unit/trainer/test_trainer_corpus_scale.py)
  unit_log=$(mktemp)
  nice -n 10 .venv/bin/pytest -p no:cacheprovider tests/unit "${after_cluster[@]/#/--ignore=}" \
    >"$unit_log" 2>&1 &
  unit=$!
  .venv/bin/pytest tests/integration tests/e2e tests/containers "${after_cluster[@]}"
  rc=$?
  wait "$unit"
  unit_rc=$?
  echo "==================== tests/unit (ran beside the cluster tests) ===================="
  cat "$unit_log"
  rm -f "$unit_log"
  # pytest's own codes: keep the worse of the two (5, no tests collected, counts as a failure)
  [ "$unit_rc" -eq 0 ] || [ "$rc" -ne 0 ] || rc=$unit_rc
fi
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
[ "$started" -eq 1 ] || echo "(control plane left running: it was up before the tests)"
exit "$rc"

"""Leader failover of two operator replicas with `--leader-elect` (default timings: lease 15 s,
renew deadline 10 s, retry 2 s), against the cluster of $KUBECONFIG with the CRD installed.

Each run, in a fresh namespace: replica a leads and reconciles a training, is SIGKILLed, a new
training is created at once; timed from the kill until replica b holds the Lease, and until the
new training has its workers (`tests/support/failover.py`).

    python bench/leader_failover.py --runs 3

`bench/faults.py` calls `measure()` for its table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support, shared with the integration tests

from tests.support.failover import Failover, measure_failover  # noqa: E402


def runs_text(values: list[float]) -> str:
    runs = " / ".join(f"{v:.1f}" for v in values)
    return f"{runs} s (median {statistics.median(values):.1f} s)"


def measure(runs: int = 3) -> dict[str, str]:
    """{figure: "a / b / c s (median m s)"} over `runs` failovers."""
    api = config.new_client_from_config()
    core = client.CoreV1Api(api)
    results: list[Failover] = []
    with tempfile.TemporaryDirectory(prefix="berth-failover-") as tmp:
        for _ in range(runs):
            namespace = f"bench-failover-{uuid.uuid4().hex[:6]}"
            core.create_namespace({"metadata": {"name": namespace}})
            try:
                workdir = Path(tmp) / namespace
                workdir.mkdir()
                results.append(measure_failover(api, namespace, workdir))
            finally:
                core.delete_namespace(namespace, propagation_policy="Background")
    return {
        "leader failover: SIGKILL → other replica holds the Lease": runs_text(
            [r.lease_s for r in results]
        ),
        "leader failover: SIGKILL → a new training's workers created": runs_text(
            [r.reconcile_s for r in results]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    for figure, value in measure(parser.parse_args().runs).items():
        print(f"| {figure} | {value} |")


if __name__ == "__main__":
    main()

"""The operator survives a kube-apiserver restart: its watches reconnect and it keeps acting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Operator, Trainings, manifest
from tests.support.kwok import terminate_pod
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


def running_group(trainings: Trainings, name: str, restart: int) -> list:
    def ready() -> list | None:
        pods = trainings.pods(name)
        labels = {p.metadata.labels["berth.dev/restart"] for p in pods}
        running = all(p.status.phase == "Running" for p in pods)
        return pods if len(pods) == 2 and labels == {str(restart)} and running else None

    return wait_for(ready, timeout=60, what=f"2 running workers of restart {restart}")


def test_operator_keeps_reconciling_after_apiserver_restart(
    operator: Operator, trainings: Trainings, namespace: str
) -> None:
    trainings.create(manifest("survivor", workers=2))
    trainings.wait_phase("survivor", "Running")
    before = {p.metadata.uid for p in running_group(trainings, "survivor", 0)}

    restarted = subprocess.run(
        [sys.executable, str(REPO / "hack" / "cluster.py"), "restart-apiserver"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert restarted.returncode == 0, restarted.stderr

    # Something only a live operator reacts to: a worker failure must restart the group.
    wait_for(lambda: trainings.pods("survivor"), timeout=60, what="the API server answering")
    terminate_pod(trainings.core, namespace, "survivor-worker-0", 137)
    wait_for(
        lambda: trainings.status("survivor").get("restarts") == 1,
        timeout=90,
        what="restarts=1 after the API server came back",
    )
    after = {p.metadata.uid for p in running_group(trainings, "survivor", 1)}
    assert after.isdisjoint(before)
    assert trainings.wait_phase("survivor", "Running")

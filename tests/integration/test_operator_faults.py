"""Disruptions on the real control plane: a node dies (its KWOK process is killed), a node is
drained with `kubectl drain`. Neither is the training's failure: the group restarts elsewhere
without spending `runPolicy.backoffLimit` (0 here, so counting it as one fails the training).

Each test owns its KWOK nodes: labelled and tainted with `berth.dev/test-faults=<namespace>`,
so no other test's pod lands there, and the training's pod template selects and tolerates them.
KWOK deletes an evicted pod the moment it is marked (hack/kwok/stages/40-pod-delete.yaml), where
a kubelet would give it its grace period: the drain also checks that a disruption seen only in
a pod's last state before it was deleted still counts as one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.integration.conftest import Operator, Trainings, manifest
from tests.support.kwok import (
    CLUSTER_KWOK,
    KwokProcess,
    fake_node,
    fake_nodes,
    kwok_process,
    node_ready,
    spread_over_nodes,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

FAULTS = "berth.dev/test-faults"
TRAINING = "berth.dev/training"
RESTART = "berth.dev/restart"


def owned_node(namespace: str, name: str, manager: str = CLUSTER_KWOK) -> dict[str, Any]:
    """A node of KWOK process `manager` that only this test's pods go to."""
    taints = [{"key": FAULTS, "value": namespace, "effect": "NoSchedule"}]
    return fake_node(name, {FAULTS: namespace}, taints, manager=manager)


def placement(pods: list[client.V1Pod]) -> dict[str, int]:
    """Workers per node."""
    nodes: dict[str, int] = {}
    for pod in pods:
        nodes[pod.spec.node_name] = nodes.get(pod.spec.node_name, 0) + 1
    return nodes


def running_on(
    trainings: Trainings, name: str, workers: int, timeout: float = 45
) -> list[client.V1Pod]:
    """The training Running with `workers` Ready workers; its live pods."""
    status = trainings.wait_phase(name, "Running", timeout=timeout)
    assert status["workers"]["summary"] == f"{workers}/{workers}"
    pods = trainings.pods(name)
    assert len(pods) == workers
    return pods


def disrupted(trainings: Trainings, name: str, timeout: float) -> dict[str, Any]:
    """The status once the training counted a disruption, or failed (then this fails at once
    with its message rather than waiting out the timeout)."""
    status = wait_for(
        lambda: (
            ((s := trainings.status(name)).get("disruptions") or s.get("phase") == "Failed") and s
        ),
        timeout=timeout,
        what=f"{name} disrupted",
    )
    assert status.get("phase") != "Failed", status.get("message")
    return status


def moved_to(trainings: Trainings, name: str, where: dict[str, int]) -> None:
    """The training counted a disruption and runs again, its next group placed `where`
    (node → workers)."""
    disrupted(trainings, name, timeout=30)
    after = wait_for(
        lambda: (
            (pods := trainings.pods(name))
            and placement(pods) == where
            and trainings.status(name).get("phase") == "Running"
            and pods
        ),
        timeout=45,
        what=f"{name}'s workers Running on {where}",
    )
    assert {p.metadata.labels[RESTART] for p in after} == {"1"}


def assert_disrupted_once(trainings: Trainings, name: str, node: str, why: str) -> None:
    """restarts 0, disruptions 1, and a Warning `Disrupted` naming a worker, `node` and `why`."""
    status = trainings.status(name)
    assert status.get("restarts", 0) == 0, status
    assert status["disruptions"] == 1, status
    events = [e for e in trainings.events(name) if e.reason == "Disrupted"]
    assert events and events[0].type == "Warning", [(e.reason, e.message) for e in events]
    message = events[0].message
    assert node in message and f"{name}-worker-" in message and why in message, message


@pytest.fixture
def doomed_kwok(kubeconfig: str, namespace: str, tmp_path: Path) -> Iterator[KwokProcess]:
    """A KWOK process of this test's own (its nodes die when it is killed)."""
    with kwok_process(f"{namespace}-doomed", kubeconfig, tmp_path) as process:
        yield process


def test_node_death_restarts_group_elsewhere_as_disruption(
    operator: Operator,
    trainings: Trainings,
    namespace: str,
    doomed_kwok: KwokProcess,
) -> None:
    doomed, survivor = f"{namespace}-doomed", f"{namespace}-survivor"
    nodes = [owned_node(namespace, doomed, doomed_kwok.manager), owned_node(namespace, survivor)]
    with fake_nodes(trainings.core, nodes):
        trainings.create(
            manifest(
                "lost",
                workers=4,
                runPolicy={"backoffLimit": 0},
                podTemplate={"spec": spread_over_nodes(FAULTS, namespace, {TRAINING: "lost"})},
            )
        )
        before = running_on(trainings, "lost", 4)
        assert placement(before) == {doomed: 2, survivor: 2}

        doomed_kwok.kill()
        # Ready=Unknown after the node-monitor grace period (~50 s): the operator acts then.
        wait_for(
            lambda: node_ready(trainings.core.read_node(doomed)) == "Unknown",
            timeout=90,
            what=f"{doomed} Ready=Unknown",
        )
        moved_to(trainings, "lost", {survivor: 4})
        assert_disrupted_once(trainings, "lost", doomed, "Ready Unknown")
        # The stranded pods went at once (grace 0), not after the taint manager's 300 s.
        assert not [
            p for p in trainings.pods("lost", alive_only=False) if p.spec.node_name == doomed
        ]


def test_drain_restarts_group_elsewhere_as_disruption(
    operator: Operator, trainings: Trainings, namespace: str
) -> None:
    drained, other = f"{namespace}-drained", f"{namespace}-other"
    with fake_nodes(trainings.core, [owned_node(namespace, drained), owned_node(namespace, other)]):
        trainings.create(
            manifest(
                "moved",
                workers=2,
                runPolicy={"backoffLimit": 0},
                podTemplate={"spec": spread_over_nodes(FAULTS, namespace, {TRAINING: "moved"})},
            )
        )
        assert placement(running_on(trainings, "moved", 2)) == {drained: 1, other: 1}

        drain = subprocess.run(
            [
                "kubectl",
                "drain",
                drained,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=30s",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert drain.returncode == 0, drain.stderr
        moved_to(trainings, "moved", {other: 2})
        assert_disrupted_once(trainings, "moved", drained, "EvictionByEvictionAPI")
        assert trainings.status("moved")["workers"]["summary"] == "2/2"

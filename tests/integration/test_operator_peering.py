"""Two operator replicas with kopf peering: exactly one acts (distinct random priorities)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from tests.integration.conftest import Operator, Trainings, manifest
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

PEERING = "berth-peering-test"
#: What the controller logs (at debug level) after each reconcile pass of the training.
PASS = "peered reconciled:"


def acting(log: Path) -> bool:
    """Whether the replica logging to `log` is (last said it is) handling resources."""
    text = log.read_text()
    resumed = text.rfind("Resuming operations after the pause")
    return resumed > text.rfind("Pausing operations in favour of")


def settled(api: client.ApiClient, namespace: str, logs: list[Path]) -> bool:
    """Both replicas registered with distinct priorities and exactly one acts."""
    peering = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", PEERING
    )
    priorities = [peer["priority"] for peer in (peering.get("status") or {}).values()]
    return len(set(priorities)) == 2 and sum(acting(log) for log in logs) == 1


def test_two_replicas_one_acts(
    operator_factory: object,  # deletes trainings at teardown while an operator runs
    api: client.ApiClient,
    namespace: str,
    trainings: Trainings,
    tmp_path: Path,
) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "kopf.dev",
        "v1",
        namespace,
        "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
    )
    logs = [tmp_path / "replica-a.log", tmp_path / "replica-b.log"]
    replicas = [Operator(namespace, log, ["--peering", PEERING]).start() for log in logs]
    try:
        wait_for(lambda: settled(api, namespace, logs), timeout=60, what="peering settled")
        trainings.create(manifest("peered", workers=2))
        trainings.wait_phase("peered", "Running", timeout=60)
        wait_for(
            lambda: sum(PASS in log.read_text() for log in logs) >= 1,
            timeout=30,
            what="a replica reconciling",
        )
        texts = [log.read_text() for log in logs]
        # Distinct random priorities: the lower one stands by, nobody pauses everybody.
        assert not any("Pausing all operators, including self" in text for text in texts)
        assert sum(PASS in text for text in texts) == 1, texts
        assert [p.metadata.name for p in trainings.pods("peered")] == [
            "peered-worker-0",
            "peered-worker-1",
        ]
    finally:
        trainings.custom.delete_collection_namespaced_custom_object(
            "berth.dev", "v1alpha1", namespace, "berttrainings"
        )
        wait_for(
            lambda: (
                not trainings.custom.list_namespaced_custom_object(
                    "berth.dev", "v1alpha1", namespace, "berttrainings"
                )["items"]
            ),
            timeout=30,
            what="training deleted",
        )
        for replica in replicas:
            replica.stop()

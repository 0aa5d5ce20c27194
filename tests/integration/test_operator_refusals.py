"""A create the API server refuses is never a silent Pending; a name taken is never ours.

A missing ServiceAccount and a ResourceQuota (both 403) show as condition `Created` False
(CreateFailed) with the API server's message, and one Warning event per distinct message; once
the cause is fixed, the retries (backoff capped low here with --retry-max) create the workers
by themselves. A ConfigMap, Service or Pod of the expected name that the training does not own
is left as it is, and the training says why: under the chart's RBAC, which must let the
operator read the object it found in the way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.integration.conftest import Operator, Trainings, manifest
from tests.support.chartrbac import chart_rbac_kubeconfig
from tests.support.podsecurity import restricted_pod
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

#: Retries of a refused create at most this many seconds apart (default 60).
RETRY_MAX = ("--retry-max", "1")


def _created(trainings: Trainings, name: str) -> dict[str, Any]:
    conditions = trainings.status(name).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Created"), {})


def _refused(trainings: Trainings, name: str, says: str) -> dict[str, Any]:
    """Wait for `name` to say, in its status, that a create was refused with `says`."""
    cond = wait_for(
        lambda: (
            (c := _created(trainings, name)).get("reason") == "CreateFailed"
            and says in c.get("message", "")
            and c
        ),
        timeout=30,
        what=f"{name}: Created False CreateFailed ({says})",
    )
    assert cond["status"] == "False"
    assert trainings.status(name)["message"] == cond["message"]
    wait_for(lambda: _warnings(trainings, name), timeout=10, what=f"{name}: Warning CreateFailed")
    return cond


def _warnings(trainings: Trainings, name: str) -> list[str]:
    return [
        e.message
        for e in trainings.events(name)
        if e.type == "Warning" and e.reason == "CreateFailed"
    ]


def _retried(operator: Operator, name: str, times: int) -> None:
    """Wait until the operator retried `name`'s failed pass `times` times (its log says)."""
    wait_for(
        lambda: (
            sum(f"/{name}: pass failed" in line for line in operator.log.read_text().splitlines())
            >= times
        ),
        timeout=30,
        what=f"{times} retries of {name}",
    )


def _recovered(trainings: Trainings, name: str, workers: int) -> None:
    wait_for(
        lambda: (
            len(trainings.pods(name)) == workers
            and _created(trainings, name).get("reason") == "WorkersCreated"
        ),
        timeout=30,
        what=f"{name}: {workers} workers created",
    )


def test_missing_service_account_is_reported_then_recovers(
    operator_factory: Callable[..., Operator], trainings: Trainings, namespace: str
) -> None:
    operator = operator_factory(*RETRY_MAX)
    template = {"spec": {"serviceAccountName": "trainer"}}
    trainings.create(manifest("lost-sa", workers=2, podTemplate=template))
    cond = _refused(trainings, "lost-sa", 'serviceaccount "trainer" not found')
    assert trainings.status("lost-sa")["phase"] == "Pending"
    assert not trainings.pods("lost-sa")
    _retried(operator, "lost-sa", 4)
    assert _warnings(trainings, "lost-sa") == [cond["message"]]  # once, not once per retry
    trainings.core.create_namespaced_service_account(namespace, {"metadata": {"name": "trainer"}})
    _recovered(trainings, "lost-sa", 2)
    assert {p.spec.service_account_name for p in trainings.pods("lost-sa")} == {"trainer"}


def test_resource_quota_refusal_is_reported_then_recovers(
    operator_factory: Callable[..., Operator], trainings: Trainings, namespace: str
) -> None:
    quota = {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    trainings.core.create_namespaced_resource_quota(namespace, quota)
    wait_for(  # admission refuses every pod until the quota controller filled in its status
        lambda: trainings.core.read_namespaced_resource_quota("no-pods", namespace).status.hard,
        timeout=30,
        what="quota status",
    )
    operator_factory(*RETRY_MAX)
    trainings.create(manifest("over-quota", workers=2))
    cond = _refused(trainings, "over-quota", "exceeded quota: no-pods")
    assert trainings.status("over-quota")["phase"] == "Pending"
    assert _warnings(trainings, "over-quota") == [cond["message"]]
    trainings.core.delete_namespaced_resource_quota("no-pods", namespace)
    _recovered(trainings, "over-quota", 2)


def test_objects_of_the_expected_names_that_berth_does_not_own_are_left_alone(
    operator_factory: Callable[..., Operator],
    trainings: Trainings,
    api: client.ApiClient,
    kubeconfig: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    core = trainings.core
    config_map = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cm-clash-config"}, "data": {"config.yaml": "mine"}}
    )
    service = core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "svc-clash"}, "spec": {"ports": [{"port": 80}]}},
    )
    container = {"name": "main", "image": "berth-trainer:test"}
    pod = core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "pod-clash-worker-0"},
            "spec": restricted_pod({"containers": [container]}),
        },
    )
    with chart_rbac_kubeconfig(api, kubeconfig, namespace, tmp_path / "sa.kubeconfig") as as_chart:
        operator_factory(*RETRY_MAX, kubeconfig=as_chart)
        for name in ("cm-clash", "svc-clash", "pod-clash"):
            trainings.create(manifest(name, workers=2))
        for kind, name, taken in (
            ("ConfigMap", "cm-clash", "cm-clash-config"),
            ("Service", "svc-clash", "svc-clash"),
            ("Pod", "pod-clash", "pod-clash-worker-0"),
        ):
            says = f"{kind} {taken} already exists and is not owned by BertTraining {name}"
            cond = _refused(trainings, name, says)
            assert _warnings(trainings, name) == [cond["message"]]
        for now, before in (
            (core.read_namespaced_config_map("cm-clash-config", namespace), config_map),
            (core.read_namespaced_service("svc-clash", namespace), service),
        ):
            assert now.metadata.resource_version == before.metadata.resource_version
            assert not now.metadata.owner_references
        foreign = core.read_namespaced_pod("pod-clash-worker-0", namespace)  # KWOK runs it
        assert not foreign.metadata.owner_references and not foreign.metadata.labels
        assert foreign.metadata.uid == pod.metadata.uid
        assert not trainings.pods("cm-clash") and not trainings.pods("svc-clash")

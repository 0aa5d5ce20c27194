"""The operator acts on change, from its caches: no timers, no reads while nothing changes.

Nothing here measures time. Each test makes the outcome depend on an event being acted on:
with timers an hour apart, a failure is still handled; a pod change that needs nothing written
costs the API server nothing; a namespace being deleted is not a failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.conftest import Operator, Trainings, manifest
from tests.support.apicount import (
    admin_account,
    dispatched,
    flow_schema,
    service_account_kubeconfig,
)
from tests.support.kwok import terminate_pod
from tests.support.podsecurity import NAMESPACE_LABELS
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

#: Timers (the Cloud TPU poll and progress scrapes) an hour apart: only events can drive a pass.
NO_TIMERS = ("--reconcile-interval", "3600", "--progress-interval", "3600")


def _running(trainings: Trainings, name: str, restart: int = 0, workers: int = 3) -> None:
    wait_for(
        lambda: (
            (s := trainings.status(name)).get("phase") == "Running"
            and s.get("restarts", 0) == restart
            and s["workers"]["summary"] == f"{workers}/{workers}"
        ),
        timeout=45,
        what=f"{name} Running (restart {restart})",
    )


def test_pod_failure_is_acted_on_without_any_timer(
    operator_factory: Callable[..., Operator], trainings: Trainings, namespace: str
) -> None:
    operator_factory(*NO_TIMERS)
    trainings.create(manifest("evented"))
    _running(trainings, "evented")
    terminate_pod(trainings.core, namespace, "evented-worker-1", 137, reason="OOMKilled")
    _running(trainings, "evented", restart=1)
    pods = trainings.pods("evented")
    assert {p.metadata.labels["berth.dev/restart"] for p in pods} == {"1"}
    reasons = [e.reason for e in trainings.events("evented")]
    assert "WorkerFailed" in reasons and "Restarting" in reasons


@pytest.fixture
def counted_identity(
    api: client.ApiClient, kubeconfig: str, namespace: str, tmp_path: Path
) -> Iterator[tuple[Path, str]]:
    """A ServiceAccount with cluster-admin whose non-watch requests a FlowSchema counts."""
    account = "berth-operator"
    binding = f"{namespace}-{account}"
    admin_account(api, namespace, account, binding)
    flows = client.FlowcontrolApiserverV1Api(api)
    schema = f"berth-test-{uuid.uuid4().hex[:8]}"
    flows.create_flow_schema(flow_schema(schema, namespace, account))
    path = service_account_kubeconfig(api, kubeconfig, namespace, account, tmp_path / "sa.yaml")
    yield path, schema
    flows.delete_flow_schema(schema)
    client.RbacAuthorizationV1Api(api).delete_cluster_role_binding(binding)


def test_a_change_that_needs_no_write_costs_the_api_server_nothing(
    operator_factory: Callable[..., Operator],
    trainings: Trainings,
    api: client.ApiClient,
    namespace: str,
    counted_identity: tuple[Path, str],
) -> None:
    sa_kubeconfig, schema = counted_identity
    operator = operator_factory(*NO_TIMERS, kubeconfig=sa_kubeconfig)
    trainings.create(manifest("quiet"))
    _running(trainings, "quiet")
    wait_for(lambda: dispatched(schema) > 0, what="the operator's requests counted")
    passes = operator.metric("berth_operator_reconcile_seconds_count")
    before = dispatched(schema)
    # A worker pod changes in a way that changes nothing the operator owns: one pass, from
    # the cache, with nothing to write.
    trainings.core.patch_namespaced_pod(
        "quiet-worker-1", namespace, {"metadata": {"annotations": {"example.com/touched": "1"}}}
    )
    wait_for(
        lambda: operator.metric("berth_operator_reconcile_seconds_count") > passes,
        what="a pass woken by the pod change",
    )
    assert dispatched(schema) == before
    # ...while a change that needs writing is written (the counter does count this client).
    terminate_pod(trainings.core, namespace, "quiet-worker-2", 137)
    _running(trainings, "quiet", restart=1)
    assert dispatched(schema) > before


def test_namespace_deletion_is_not_a_failure(
    operator_factory: Callable[..., Operator], api: client.ApiClient, tmp_path: Path
) -> None:
    core = client.CoreV1Api(api)
    doomed = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": doomed, "labels": NAMESPACE_LABELS}})
    wait_for(lambda: core.read_namespaced_service_account("default", doomed), what="namespace")
    operator = operator_factory("--namespace", doomed)
    there = Trainings(api, doomed)
    there.create(manifest("doomed"))
    _running(there, "doomed")
    restarts = operator.metric("berth_operator_group_restarts_total")
    log_size = operator.log.stat().st_size
    core.delete_namespace(doomed, propagation_policy="Background")

    def gone() -> bool:
        try:
            core.read_namespace(doomed)
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, timeout=90, what=f"namespace {doomed} deleted")
    assert operator.metric("berth_operator_group_restarts_total") == restarts
    with operator.log.open(errors="replace") as log:
        log.seek(log_size)
        after = log.read()
    for sign in ("Restarting", "WorkerFailed", "pass failed", "Forbidden", "ERROR", "Traceback"):
        assert sign not in after, f"{sign!r} in the operator log after the namespace deletion"


def test_pod_trainings_carry_no_finalizer_and_lose_the_old_one(
    operator: Operator, trainings: Trainings
) -> None:
    """Deleting a pod training never waits for the operator; a training that an older operator
    gave kopf's finalizer gets it removed."""
    trainings.create(manifest("fresh"))
    old = manifest("upgraded")
    old["metadata"]["finalizers"] = ["berth.dev/operator"]
    trainings.create(old)
    _running(trainings, "fresh")
    _running(trainings, "upgraded")
    wait_for(
        lambda: not trainings.get("upgraded")["metadata"].get("finalizers"),
        what="the old finalizer removed",
    )
    assert not trainings.get("fresh")["metadata"].get("finalizers")

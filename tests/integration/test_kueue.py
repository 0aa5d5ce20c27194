"""Queueing with a real Kueue (v0.17, built from its Go module; hack/cluster.py runs it).

Kueue knows BertTraining as an external framework: the operator (`--kueue`) creates each queued
training's Workload and starts the workers only once Kueue admitted it. The KWOK cluster has
three 8-GPU nodes: a ClusterQueue of 24 `nvidia.com/gpu` admits one 2 x 8-GPU training and
holds a second. The operator runs under the chart's RBAC (`kueue.enabled`), not as admin: a verb
the chart forgot fails the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.integration.conftest import Operator, Trainings, manifest
from tests.support.chartrbac import chart_rbac_kubeconfig
from tests.support.kueue import GPU_NODES, KUEUE, PRIORITY_LABEL, QUEUE_LABEL, TOLERATION, Kueue
from tests.support.kwok import terminate_pod
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def kueue(api: client.ApiClient, namespace: str) -> Iterator[Kueue]:
    objects = Kueue(api, namespace)
    yield objects
    objects.cleanup()


@pytest.fixture
def queued_operator(
    operator_factory: Callable[..., Operator],
    kueue: Kueue,
    trainings: Trainings,
    api: client.ApiClient,
    kubeconfig: str,
    namespace: str,
    tmp_path: Path,
) -> Iterator[Operator]:
    """`berth-operator --kueue` as the chart's ServiceAccount. At the end the trainings are
    deleted while it still runs, and their Workloads go with them (the operator drops its
    finalizer), before Kueue's objects; the operator must never have been refused."""
    with chart_rbac_kubeconfig(
        api, kubeconfig, namespace, tmp_path / "sa.kubeconfig", {"kueue": {"enabled": True}}
    ) as as_chart:
        operator = operator_factory("--kueue", kubeconfig=as_chart)
        yield operator
        trainings.custom.delete_collection_namespaced_custom_object(
            "berth.dev", "v1alpha1", trainings.namespace, "berttrainings"
        )
        wait_for(lambda: not kueue.workloads(), timeout=45, what="Workloads deleted")
        log = operator.log.read_text().splitlines()
        denied = [line for line in log if "forbidden" in line.lower()]
        assert not denied, "the chart's RBAC refused the operator:\n" + "\n".join(denied[:10])


def gpu_training(name: str, queue: str | None, priority: str | None = None) -> dict[str, Any]:
    """Two workers of 8 GPUs each, in LocalQueue `queue`."""
    body = manifest(name, workers=2, resources={"limits": {"nvidia.com/gpu": 8}})
    labels = {QUEUE_LABEL: queue} if queue else {}
    if priority:
        labels[PRIORITY_LABEL] = priority
    body["metadata"]["labels"] = labels
    return body


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def finish(trainings: Trainings, namespace: str, name: str, workers: int = 2) -> None:
    for index in reversed(range(workers)):
        terminate_pod(trainings.core, namespace, f"{name}-worker-{index}", 0)
    trainings.wait_phase(name, "Succeeded")


def test_second_training_waits_with_no_pods_until_the_first_finishes(
    queued_operator: Operator, trainings: Trainings, kueue: Kueue, namespace: str
) -> None:
    queue = kueue.queue(quota=24)
    first = trainings.create(gpu_training("first", queue))
    trainings.wait_phase("first", "Running", timeout=45)
    trainings.create(gpu_training("second", queue))
    status = trainings.wait_phase("second", "Queued")
    assert status["queue"]["name"] == queue
    # Kueue's own words: 16 GPUs asked, 8 left of the 24.
    wait_for(
        lambda: "insufficient" in trainings.status("second").get("message", ""),
        what="Kueue's reason in the message",
    )
    assert conditions(trainings.get("second"))["Queued"]["status"] == "True"
    assert trainings.pods("second", alive_only=False) == []

    # The first one's Workload: owned by it, one pod set of its 2 workers, admitted.
    workload = kueue.workload_of("first")
    (ref,) = workload["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == (
        "BertTraining",
        first["metadata"]["uid"],
        True,
    )
    (pod_set,) = workload["spec"]["podSets"]
    assert (pod_set["name"], pod_set["count"]) == ("workers", 2)
    assert pod_set["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": "8"
    }
    assert workload["spec"]["queueName"] == queue
    assert conditions(workload)["Admitted"]["status"] == "True"
    ready = wait_for(
        lambda: conditions(kueue.workload_of("first")).get("PodsReady"), what="PodsReady"
    )
    assert (ready["status"], ready["reason"]) == ("True", "Started")
    assert trainings.status("first")["queue"]["clusterQueue"] == f"cq-{namespace}"
    # The admitted flavor's node labels and tolerations are on every worker; Kueue's labels
    # are not (Kueue's own pod integration must never take them for plain pods).
    for pod in trainings.pods("first"):
        assert pod.spec.node_selector == GPU_NODES
        assert TOLERATION["key"] in {t.key for t in pod.spec.tolerations or []}
        assert QUEUE_LABEL not in pod.metadata.labels

    finish(trainings, namespace, "first")
    wait_for(
        lambda: conditions(kueue.workload_of("first")).get("Finished", {}).get("status") == "True",
        what="the first Workload finished",
    )
    trainings.wait_phase("second", "Running", timeout=45)
    assert len(trainings.pods("second")) == 2
    finish(trainings, namespace, "second")
    assert {"Queued", "AllWorkersReady", "Completed"} <= {
        e.reason for e in trainings.events("second")
    }
    assert conditions(trainings.get("second"))["Queued"]["status"] == "False"


def test_preempted_training_requeues_without_using_its_backoff(
    queued_operator: Operator, trainings: Trainings, kueue: Kueue, namespace: str
) -> None:
    queue = kueue.queue(quota=16, preemption=True)
    low, high = kueue.priority("low", 100), kueue.priority("high", 1000)
    body = gpu_training("low", queue, low)
    body["spec"]["runPolicy"] = {"backoffLimit": 0}
    trainings.create(body)
    trainings.wait_phase("low", "Running", timeout=45)
    low_pods = {p.metadata.uid for p in trainings.pods("low")}
    assert kueue.workload_of("low")["spec"]["priority"] == 100

    trainings.create(gpu_training("high", queue, high))
    status = trainings.wait_phase("low", "Queued", timeout=45)
    assert "Preempted" in status["message"]
    trainings.wait_phase("high", "Running", timeout=45)
    wait_for(lambda: not trainings.pods("low", alive_only=False), what="low's workers gone")
    evicted = kueue.workload_of("low")
    assert conditions(evicted)["QuotaReserved"]["status"] == "False"
    assert conditions(evicted)["Requeued"]["status"] == "True"
    assert "admission" not in evicted.get("status", {})
    events = {e.reason: e.message for e in trainings.events("low")}
    assert "Preempted" in events.get("Requeued", "")

    finish(trainings, namespace, "high")
    status = trainings.wait_phase("low", "Running", timeout=60)
    # Re-admitted: a fresh group of the same restart (the trainer resumes from its
    # checkpoint); no restart counted, so backoffLimit 0 did not fail it.
    assert status.get("restarts", 0) == 0
    again = trainings.pods("low")
    assert {p.metadata.labels["berth.dev/restart"] for p in again} == {"0"}
    assert low_pods.isdisjoint({p.metadata.uid for p in again})
    finish(trainings, namespace, "low")


def test_kueue_admits_the_next_training_once_the_workers_are_ready(
    queued_operator: Operator, trainings: Trainings, kueue: Kueue
) -> None:
    """hack/cluster.py runs Kueue with waitForPodsReady.blockAdmission: nothing else is
    admitted while an admitted Workload's PodsReady is not true. Both trainings fit the
    quota; the second runs only because the operator reports the first one's workers Ready."""
    queue = kueue.queue()
    for name in ("one", "two"):
        body = gpu_training(name, queue)
        body["spec"]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
        trainings.create(body)
    for name in ("one", "two"):
        trainings.wait_phase(name, "Running", timeout=45)
        assert conditions(kueue.workload_of(name))["PodsReady"]["status"] == "True"


def test_missing_local_queue_keeps_the_training_queued_saying_so(
    queued_operator: Operator, trainings: Trainings, kueue: Kueue
) -> None:
    trainings.create(gpu_training("lost", "no-such-queue"))
    wait_for(
        lambda: (
            "no-such-queue" in (s := trainings.status("lost")).get("message", "")
            and "doesn't exist" in s["message"]
            and s["phase"] == "Queued"
            and s
        ),
        what="Queued with Kueue's 'LocalQueue ... doesn't exist'",
    )
    assert trainings.pods("lost", alive_only=False) == []


def test_missing_priority_class_is_named(
    queued_operator: Operator, trainings: Trainings, kueue: Kueue
) -> None:
    queue = kueue.queue()
    trainings.create(gpu_training("vip", queue, priority="no-such-priority"))
    wait_for(
        lambda: (
            "WorkloadPriorityClass no-such-priority not found"
            in trainings.status("vip").get("message", "")
        ),
        what="the missing WorkloadPriorityClass named",
    )
    assert kueue.workloads() == []
    assert trainings.status("vip")["phase"] == "Queued"


def test_suspend_deactivates_the_workload_and_gives_back_its_quota(
    queued_operator: Operator, trainings: Trainings, kueue: Kueue
) -> None:
    queue = kueue.queue(quota=16)
    trainings.create(gpu_training("nap", queue))
    trainings.wait_phase("nap", "Running", timeout=45)
    trainings.patch("nap", {"spec": {"runPolicy": {"suspend": True}}})
    trainings.wait_phase("nap", "Suspended")
    wait_for(
        lambda: (
            kueue.workload_of("nap")["spec"]["active"] is False
            and conditions(kueue.workload_of("nap"))["QuotaReserved"]["status"] == "False"
        ),
        what="Workload inactive without quota",
    )
    assert trainings.pods("nap", alive_only=False) == []
    # The quota is free: another training is admitted meanwhile.
    trainings.create(gpu_training("other", queue))
    trainings.wait_phase("other", "Running", timeout=45)
    trainings.patch("nap", {"spec": {"runPolicy": {"suspend": False}}})
    trainings.wait_phase("nap", "Queued")
    assert kueue.workload_of("nap")["spec"]["active"] is True


def test_new_requests_of_a_queued_training_replace_its_workload(
    queued_operator: Operator, trainings: Trainings, kueue: Kueue
) -> None:
    """Kueue's pod sets are immutable: 2 x 8 GPUs do not fit a quota of 8; the user asks for
    4 GPUs per worker, and a new Workload asking for 2 x 4 is admitted. Then a GPU sidecar
    added through podTemplate is counted too: the running training goes back to the queue, its
    new Workload asking for 2 x 5 GPUs. Each replacement deletes a Workload, under the chart's
    RBAC."""
    queue = kueue.queue(quota=8)
    trainings.create(gpu_training("big", queue))
    wait_for(
        lambda: "insufficient" in trainings.status("big").get("message", ""),
        what="2 x 8 GPUs not admitted",
    )
    old = kueue.workload_of("big")["metadata"]["uid"]
    trainings.patch("big", {"spec": {"resources": {"limits": {"nvidia.com/gpu": 4}}}})
    trainings.wait_phase("big", "Running", timeout=45)
    (workload,) = kueue.workloads()
    assert workload["metadata"]["uid"] != old
    limits = workload["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"]
    assert limits == {"limits": {"nvidia.com/gpu": "4"}}
    assert [p.spec.containers[0].resources.limits for p in trainings.pods("big")] == [
        {"nvidia.com/gpu": "4"}
    ] * 2

    sidecar = {"name": "probe", "image": "probe", "resources": {"limits": {"nvidia.com/gpu": 1}}}
    trainings.patch("big", {"spec": {"podTemplate": {"spec": {"containers": [sidecar]}}}})
    wait_for(
        lambda: (
            (s := trainings.status("big"))["phase"] == "Queued"
            and "insufficient" in s.get("message", "")
        ),
        timeout=45,
        what="2 x (4 + 1) GPUs back in the queue, not admitted",
    )
    (workload,) = kueue.workloads()
    containers = workload["spec"]["podSets"][0]["template"]["spec"]["containers"]
    assert {c["name"] for c in containers} == {"trainer", "probe"}
    assert trainings.pods("big", alive_only=False) == []


def test_without_the_label_nothing_changes(
    queued_operator: Operator, trainings: Trainings, kueue: Kueue
) -> None:
    trainings.create(gpu_training("plain", None))
    status = trainings.wait_phase("plain", "Running", timeout=45)
    assert "queue" not in status
    assert kueue.workloads() == []


def test_deleting_a_queued_training_deletes_its_workload(
    queued_operator: Operator, trainings: Trainings, kueue: Kueue
) -> None:
    queue = kueue.queue()
    trainings.create(gpu_training("brief", queue))
    trainings.wait_phase("brief", "Running", timeout=45)
    assert kueue.workload_of("brief")["metadata"]["finalizers"] == [f"{KUEUE}/resource-in-use"]
    trainings.custom.delete_namespaced_custom_object(
        "berth.dev", "v1alpha1", trainings.namespace, "berttrainings", "brief"
    )
    wait_for(lambda: not kueue.workloads(), timeout=45, what="the Workload deleted")

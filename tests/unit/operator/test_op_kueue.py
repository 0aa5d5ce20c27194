"""Queueing with Kueue, pure: the Workload a training gets, and what each Workload state makes
the reconcile pass do (berth_operator.kueue, berth_operator.policy)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from berth_operator import kueue
from berth_operator.policy import Plan, reconcile
from tests.unit.operator.factories import T0, Training, make_pod, make_training, running_group

LATER = T0 + timedelta(seconds=30)
NOW = "2025-01-01T12:00:30Z"
FLAVORS = {
    "a100": {
        "spec": {
            "nodeLabels": {"gpu": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }
    }
}


def queued(training: Training | None = None, queue: str = "team") -> Training:
    training = training if training is not None else make_training().with_gpu(8)
    out = training._copy()
    out["metadata"]["labels"] = {kueue.QUEUE_LABEL: queue}
    return out


def condition(type_: str, status: bool, reason: str = "R", message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2025-01-01T11:00:00Z",
    }


def workload(
    training: dict[str, Any], *conditions: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """The training's Workload as the operator caches it."""
    meta = training["metadata"]
    body: dict[str, Any] = {
        "metadata": {
            "name": kueue.workload_name(meta["name"], meta["uid"]),
            "namespace": meta["namespace"],
            "resourceVersion": "7",
            "generation": 1,
            "labels": {"berth.dev/training": meta["name"], kueue.JOB_UID_LABEL: meta["uid"]},
            "annotations": {kueue.POD_SET_HASH_ANNOTATION: kueue.pod_set_hash(training)},
            "finalizers": [kueue.FINALIZER],
        },
        "spec": {"active": True, "queueName": "team"},
        "status": {"conditions": list(conditions)},
    }
    for key, value in fields.items():
        part = "metadata" if key in ("deletionTimestamp", "finalizers") else "status"
        body[part][key] = value
    return body


ADMISSION = {
    "clusterQueue": "cq",
    "podSetAssignments": [{"name": "workers", "count": 3, "flavors": {"nvidia.com/gpu": "a100"}}],
}


def admitted(training: dict[str, Any]) -> dict[str, Any]:
    return workload(
        training,
        condition("QuotaReserved", True, "QuotaReserved"),
        condition("Admitted", True, "Admitted"),
        admission=ADMISSION,
    )


def evicted(training: dict[str, Any], reason: str = "Preempted") -> dict[str, Any]:
    return workload(
        training,
        condition("QuotaReserved", True, "QuotaReserved"),
        condition("Admitted", True, "Admitted"),
        condition("Evicted", True, reason, "Preempted to accommodate a workload"),
        admission=ADMISSION,
    )


def plan_for(
    training: dict[str, Any], pods: list[dict[str, Any]], wl: dict[str, Any] | None
) -> Plan:
    return reconcile(training, pods, LATER, kueue.Queueing("team", wl))


def conds(plan: Plan) -> dict[str, str]:
    return {c["type"]: c["status"] for c in plan.status.get("conditions", [])}


# -- the Workload ------------------------------------------------------------------------------


def test_workload_is_one_pod_set_of_every_worker_with_the_template() -> None:
    training = queued()
    pod = make_pod(training, 0)
    body = kueue.build_workload(training, pod, ("high", 1000))
    assert body["metadata"]["name"] == kueue.workload_name("bert", "uid-1")
    assert body["metadata"]["finalizers"] == [kueue.FINALIZER]
    assert body["metadata"]["labels"]["berth.dev/training"] == "bert"
    assert body["metadata"]["labels"][kueue.JOB_UID_LABEL] == "uid-1"
    (pod_set,) = body["spec"]["podSets"]
    assert (pod_set["name"], pod_set["count"]) == ("workers", 3)
    assert pod_set["template"]["spec"]["containers"][0]["resources"] == {
        "limits": {"nvidia.com/gpu": "8"}
    }
    assert body["spec"]["queueName"] == "team"
    assert body["spec"]["active"] is True
    assert body["spec"]["priorityClassRef"] == {
        "group": "kueue.x-k8s.io",
        "kind": "WorkloadPriorityClass",
        "name": "high",
    }
    assert body["spec"]["priority"] == 1000
    suspended = queued(make_training().with_run_policy(suspend=True))
    assert kueue.build_workload(suspended, pod, None)["spec"]["active"] is False
    assert "priority" not in kueue.build_workload(suspended, pod, None)["spec"]


def test_gke_tpu_workload_asks_for_the_slices_chips_on_tpu_nodes() -> None:
    tpu = {"provider": "gke", "acceleratorType": "tpu-v5-lite-podslice", "topology": "2x4"}
    training = queued(make_training(workers=2).with_spec(tpu=tpu))
    body = kueue.build_workload(training, make_pod(training, 0), None)
    (pod_set,) = body["spec"]["podSets"]
    assert pod_set["count"] == 2
    template = pod_set["template"]["spec"]
    assert template["containers"][0]["resources"]["requests"] == {"google.com/tpu": "8"}
    assert template["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "2x4"


def test_workload_names_differ_per_uid_and_are_dns_names() -> None:
    first, second = kueue.workload_name("bert", "a"), kueue.workload_name("bert", "b")
    assert first != second and first.startswith("berttraining-bert-")
    assert first == first.lower() and len(first) <= 63


def test_children_never_carry_kueue_labels() -> None:
    training = queued()
    training["metadata"]["labels"]["team"] = "nlp"
    owner = kueue.without_kueue_labels(training)
    assert owner["metadata"]["labels"] == {"team": "nlp"}
    assert training["metadata"]["labels"][kueue.QUEUE_LABEL] == "team"  # not changed in place


def test_observe_ignores_a_workload_of_another_training_uid() -> None:
    training = queued()
    assert kueue.observe(admitted(training), "uid-1") is not None
    assert kueue.observe(admitted(training), "uid-2") is None
    assert kueue.observe(None, "uid-1") is None


def test_placement_merges_flavor_then_admission_check_updates() -> None:
    wl = admitted(queued())
    wl["status"]["admissionChecks"] = [
        {
            "name": "prov",
            "state": "Ready",
            "podSetUpdates": [
                {
                    "name": "workers",
                    "nodeSelector": {"zone": "b"},
                    "labels": {"checked": "yes"},
                    "annotations": {"a": "1"},
                    "tolerations": [{"key": "zone", "operator": "Exists"}],
                },
                {"name": "other", "nodeSelector": {"never": "x"}},
            ],
        }
    ]
    where = kueue.placement(wl, FLAVORS)
    assert where.node_selector == {"gpu": "a100", "zone": "b"}
    assert [t["key"] for t in where.tolerations] == ["gpu", "zone"]
    pod = kueue.apply_placement(make_pod(queued(), 0), where)
    assert pod["spec"]["nodeSelector"] == {"gpu": "a100", "zone": "b"}
    assert pod["metadata"]["labels"]["checked"] == "yes"
    assert pod["metadata"]["labels"]["berth.dev/index"] == "0"  # ours are kept
    assert pod["metadata"]["annotations"] == {"a": "1"}


def test_release_gives_back_the_quota_like_kueues_job_reconciler() -> None:
    state = kueue.observe(evicted(queued()), "uid-1")
    assert state is not None
    patch = kueue.release(state, NOW)
    assert patch["metadata"] == {"resourceVersion": "7"}
    assert patch["status"]["admission"] is None
    got = {c["type"]: c for c in patch["status"]["conditions"]}
    assert (got["QuotaReserved"]["status"], got["QuotaReserved"]["reason"]) == ("False", "Pending")
    assert got["QuotaReserved"]["lastTransitionTime"] == NOW
    assert (got["Admitted"]["status"], got["Admitted"]["reason"]) == ("False", "NoReservation")
    assert (got["Requeued"]["status"], got["Requeued"]["reason"]) == ("True", "Preempted")
    assert got["Evicted"]["status"] == "True"  # Kueue resets it when it admits again
    deactivated = kueue.observe(evicted(queued(), reason="Deactivated"), "uid-1")
    assert deactivated is not None
    requeued = {c["type"]: c for c in kueue.release(deactivated, NOW)["status"]["conditions"]}
    assert requeued["Requeued"]["status"] == "False"


def test_orphaned_workloads_lose_the_finalizer() -> None:
    training = queued()
    mine, other = admitted(training), admitted(training)
    other["metadata"]["labels"][kueue.JOB_UID_LABEL] = "uid-old"
    other["metadata"]["name"] = "berttraining-bert-old"
    assert kueue.orphaned([mine, other], "uid-1") == [
        ("berttraining-bert-old", {"metadata": {"finalizers": [], "resourceVersion": "7"}})
    ]
    assert [name for name, _ in kueue.orphaned([mine, other], None)] == [
        mine["metadata"]["name"],
        "berttraining-bert-old",
    ]


# -- the reconcile pass ------------------------------------------------------------------------


def test_no_workload_yet_creates_it_and_no_pod() -> None:
    plan = plan_for(queued(), [], None)
    assert plan.create_workload and plan.create == []
    assert plan.status["phase"] == "Queued"
    assert plan.status["queue"] == {
        "name": "team",
        "workload": kueue.workload_name("bert", "uid-1"),
    }
    assert conds(plan)["Queued"] == "True"
    assert [e.reason for e in plan.events] == ["Queued"]


@pytest.mark.parametrize(
    ("conditions", "reason", "message"),
    [
        ([], "Queued", "waiting for LocalQueue team to admit Workload"),
        (
            [condition("QuotaReserved", False, "Pending", "insufficient quota for nvidia.com/gpu")],
            "Pending",
            "insufficient quota for nvidia.com/gpu",
        ),
        (
            [condition("QuotaReserved", False, "Inadmissible", "LocalQueue team doesn't exist")],
            "Inadmissible",
            "LocalQueue team doesn't exist",
        ),
        (
            [condition("QuotaReserved", True, "QuotaReserved")],
            "QuotaReserved",
            "quota reserved in ClusterQueue cq; admission checks pending",
        ),
    ],
    ids=["new", "no-quota", "no-local-queue", "checks-pending"],
)
def test_not_admitted_stays_queued_in_kueues_words(
    conditions: list[dict[str, Any]], reason: str, message: str
) -> None:
    training = queued().with_status(phase="Queued")
    wl = workload(training, *conditions, admission=ADMISSION if "checks" in message else None)
    plan = plan_for(training, [], wl)
    assert plan.create == [] and not plan.create_workload
    assert plan.status["phase"] == "Queued"
    assert message in plan.status["message"]
    queued_cond = next(c for c in plan.status["conditions"] if c["type"] == "Queued")
    assert queued_cond["reason"] == reason
    assert plan.workload_status is None and plan.workload_patch is None


def test_admitted_creates_the_workers_and_names_the_cluster_queue() -> None:
    waiting = plan_for(queued(), [], workload(queued()))
    training = queued().with_status(**waiting.status)
    plan = plan_for(training, [], admitted(training))
    assert plan.create == [0, 1, 2]
    assert plan.status["phase"] == "Starting"
    assert plan.status["queue"]["clusterQueue"] == "cq"
    assert conds(plan)["Queued"] == "False"


def test_admitted_and_running_is_a_fixed_point() -> None:
    training = queued().with_status(phase="Starting")
    first = reconcile(training, running_group(training), LATER, kueue.Queueing("team", None))
    assert first.create_workload  # (no Workload in the cache: the gate holds)
    wl = admitted(training)
    plan = plan_for(training, running_group(training), wl)
    assert plan.status["phase"] == "Running" and plan.delete == [] and plan.create == []
    assert plan.workload_status is not None  # PodsReady: Started
    wl["status"]["conditions"].append(condition("PodsReady", True, "Started"))
    again = plan_for(training.with_status(**plan.status), running_group(training), wl)
    assert again.status == plan.status and again.events == []
    assert again.workload_status is None and again.workload_patch is None


@pytest.mark.parametrize(
    ("before", "ready", "after"),
    [
        (None, False, ("False", "WaitForStart")),
        (None, True, ("True", "Started")),
        (("True", "Started"), True, None),
        (("True", "Started"), False, ("False", "WaitForRecovery")),
        (("False", "WaitForRecovery"), False, None),
        (("False", "WaitForRecovery"), True, ("True", "Recovered")),
        (("False", "WaitForStart"), False, None),
    ],
)
def test_pods_ready_follows_kueues_job_reconciler(
    before: tuple[str, str] | None, ready: bool, after: tuple[str, str] | None
) -> None:
    wl = admitted(queued())
    if before:
        wl["status"]["conditions"].append(condition("PodsReady", before[0] == "True", before[1]))
    state = kueue.observe(wl, "uid-1")
    assert state is not None
    patch = kueue.pods_ready(state, ready, NOW)
    if after is None:
        assert patch is None
    else:
        assert patch is not None
        (cond,) = [c for c in patch["status"]["conditions"] if c["type"] == "PodsReady"]
        assert (cond["status"], cond["reason"]) == after


def test_eviction_stops_the_workers_then_releases_the_quota_without_a_restart() -> None:
    training = (
        queued()
        .with_run_policy(backoffLimit=0)
        .with_status(phase="Running", restarts=0, startTime="2025-01-01T12:00:00Z")
    )
    pods = running_group(training)
    wl = evicted(training)
    stopping = plan_for(training, pods, wl)
    assert sorted(stopping.delete) == [p["metadata"]["name"] for p in pods]
    assert stopping.status["phase"] == "Queued" and stopping.status["restarts"] == 0
    assert "evicted by Kueue (Preempted)" in stopping.status["message"]
    assert "stopping the workers" in stopping.status["message"]
    assert "startTime" not in stopping.status
    assert stopping.workload_status is None  # not while a worker is left
    # The workers exit (SIGTERM: they checkpoint), some failing: no failure, no restart.
    exiting = [make_pod(training, i, "Failed", exit_code=143, terminating=True) for i in range(3)]
    held = plan_for(training.with_status(**stopping.status), exiting, wl)
    assert held.status["phase"] == "Queued" and held.status["restarts"] == 0
    assert held.workload_status is None and held.delete == []
    gone = plan_for(training.with_status(**stopping.status), [], wl)
    assert gone.workload_status is not None
    assert gone.workload_status["status"]["admission"] is None
    assert [e.reason for e in gone.events] == ["Requeued"]
    assert gone.status["restarts"] == 0 and gone.create == []


def test_requeued_after_eviction_waits_then_is_readmitted() -> None:
    training = queued().with_status(phase="Queued", restarts=1)
    wl = workload(
        training,
        condition("Evicted", True, "Preempted", "Preempted to accommodate a workload"),
        condition("QuotaReserved", False, "Pending", "insufficient quota"),
    )
    plan = plan_for(training, [], wl)
    assert plan.status["phase"] == "Queued"
    assert "evicted by Kueue (Preempted)" in plan.status["message"]
    assert "insufficient quota" in plan.status["message"]
    assert plan.workload_status is None
    again = admitted(training)  # admission resets Evicted
    again["status"]["conditions"].append(condition("Evicted", False, "QuotaReserved"))
    readmitted = plan_for(training, [], again)
    assert readmitted.create == [0, 1, 2] and readmitted.restart == 1


def test_suspend_deactivates_and_resume_reactivates() -> None:
    training = queued().with_run_policy(suspend=True).with_status(phase="Running")
    pods = running_group(training)
    plan = plan_for(training, pods, admitted(training))
    assert plan.workload_patch == {"spec": {"active": False}}
    assert plan.status["phase"] == "Suspended" and len(plan.delete) == 3
    inactive = evicted(training, reason="Deactivated")
    inactive["spec"]["active"] = False
    released = plan_for(training.with_status(phase="Suspended"), [], inactive)
    assert released.workload_patch is None
    assert released.workload_status is not None  # the quota goes back while suspended
    resumed = queued().with_status(phase="Suspended")
    plan = plan_for(resumed, [], inactive)
    assert plan.workload_patch == {"spec": {"active": True}}
    assert plan.status["phase"] == "Queued"
    assert "Resumed" in {e.reason for e in plan.events}


def test_finished_training_finishes_its_workload_then_drops_the_finalizer() -> None:
    training = queued().with_status(phase="Succeeded", message="worker 0 completed")
    plan = plan_for(training, [], admitted(training))
    assert plan.workload_status is not None
    (finished,) = [
        c for c in plan.workload_status["status"]["conditions"] if c["type"] == "Finished"
    ]
    assert (finished["status"], finished["reason"]) == ("True", "Succeeded")
    assert finished["message"] == "worker 0 completed"
    done = admitted(training)
    done["status"]["conditions"].append(condition("Finished", True, "Succeeded"))
    plan = plan_for(training, [], done)
    assert plan.workload_status is None
    assert plan.workload_patch == {"metadata": {"finalizers": [], "resourceVersion": "7"}}
    failed = queued().with_status(phase="Failed", message="boom")
    reason = next(
        c["reason"]
        for c in plan_for(failed, [], admitted(failed)).workload_status["status"]["conditions"]
        if c["type"] == "Finished"
    )
    assert reason == "Failed"


def test_deleted_workload_stops_the_workers_and_lets_go_when_they_are_gone() -> None:
    training = queued().with_status(phase="Running")
    wl = admitted(training)
    wl["metadata"]["deletionTimestamp"] = "2025-01-01T12:00:10Z"
    plan = plan_for(training, running_group(training), wl)
    assert len(plan.delete) == 3 and plan.status["phase"] == "Queued"
    assert plan.workload_patch is None
    plan = plan_for(training.with_status(**plan.status), [], wl)
    assert plan.workload_patch == {"metadata": {"finalizers": [], "resourceVersion": "7"}}


def test_changed_resources_replace_the_workload_once_the_workers_are_gone() -> None:
    training = queued().with_status(phase="Running")
    wl = admitted(training)  # made for 8 GPUs a worker
    grown = training.with_gpu(4)
    plan = plan_for(grown, running_group(training), wl)
    assert plan.status["phase"] == "Queued" and len(plan.delete) == 3
    assert "replacing Workload" in plan.status["message"]
    assert not plan.delete_workload and plan.workload_patch is None
    plan = plan_for(grown.with_status(**plan.status), [], wl)
    assert plan.delete_workload
    assert plan.workload_patch == {"metadata": {"finalizers": [], "resourceVersion": "7"}}
    fresh = kueue.build_workload(grown, make_pod(grown, 0), None)
    container = fresh["spec"]["podSets"][0]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "4"}}
    # A change that Kueue does not count (the trainer config) keeps the Workload.
    retuned = training.with_spec(training={"globalBatchSize": 96, "sequenceLength": 64})
    assert kueue.pod_set_hash(retuned) == kueue.pod_set_hash(training)


GPU_SIDECAR = {"name": "probe", "image": "p", "resources": {"limits": {"nvidia.com/gpu": 1}}}
SIDECAR = {"name": "probe", "image": "p", "resources": {"requests": {"cpu": "2"}}}
ZONE = {"key": "zone", "operator": "In", "values": ["a"]}
AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": ZONE}}


@pytest.mark.parametrize(
    ("pod_spec", "requeues"),
    [
        ({"containers": [GPU_SIDECAR]}, True),
        ({"initContainers": [SIDECAR]}, True),
        ({"initContainers": [{**SIDECAR, "restartPolicy": "Always"}]}, True),
        ({"containers": [{"name": "trainer", "resources": {"limits": {"cpu": "4"}}}]}, True),
        ({"nodeSelector": {"pool": "a100"}}, True),
        ({"tolerations": [{"key": "gpu", "operator": "Exists"}]}, True),
        ({"affinity": AFFINITY}, True),
        ({"runtimeClassName": "gvisor"}, True),
        ({"containers": [{"name": "trainer", "env": [{"name": "X", "value": "1"}]}]}, False),
        ({"containers": [SIDECAR]}, True),
        ({"priorityClassName": "high", "terminationGracePeriodSeconds": 60}, False),
    ],
    ids=[
        "gpu-sidecar",
        "init-container",
        "sidecar-init-container",
        "trainer-resources-from-the-template",
        "node-selector",
        "tolerations",
        "affinity",
        "runtime-class",
        "trainer-env",
        "cpu-sidecar",
        "not-counted",
    ],
)
def test_pod_set_hash_covers_what_kueue_counts_of_the_merged_worker_pod(
    pod_spec: dict[str, Any], requeues: bool
) -> None:
    """The hash is of the worker pod with podTemplate merged in, as Kueue reads a pod set:
    a GPU sidecar added after admission must replace the Workload, an env var must not."""
    training = queued()
    changed = training.with_spec(podTemplate={"metadata": {"labels": {"x": "y"}}, "spec": pod_spec})
    assert (kueue.pod_set_hash(changed) != kueue.pod_set_hash(training)) is requeues


def test_pod_set_hash_ignores_the_group_restart_and_the_image() -> None:
    training = queued().with_spec(podTemplate={"spec": {"containers": [GPU_SIDECAR]}})
    first, later = make_pod(training, 0), make_pod(training, 0, restart=3)
    assert first["metadata"]["labels"] != later["metadata"]["labels"]
    assert kueue.counted(first) == kueue.counted(later)
    assert kueue.pod_set_hash(training.with_spec(image="trainer:2")) == kueue.pod_set_hash(training)
    # What the Workload says is what the pass compares with.
    body = kueue.build_workload(training, first, None)
    assert body["metadata"]["annotations"][kueue.POD_SET_HASH_ANNOTATION] == kueue.pod_set_hash(
        training
    )


def test_a_gpu_sidecar_added_after_admission_replaces_the_workload() -> None:
    training = queued().with_status(phase="Running")
    wl = admitted(training)
    sidecar = training.with_spec(podTemplate={"spec": {"containers": [GPU_SIDECAR]}})
    plan = plan_for(sidecar, running_group(training), wl)
    assert plan.status["phase"] == "Queued" and len(plan.delete) == 3
    assert "spec.podTemplate" in plan.status["message"]
    assert "replacing Workload" in plan.status["message"]
    plan = plan_for(sidecar.with_status(**plan.status), [], wl)
    assert plan.delete_workload


def test_a_workload_of_an_older_operator_is_adopted_not_replaced() -> None:
    """Older operators hashed three spec fields under another key: an upgrade keeps admitted
    trainings running and writes the hash of ours."""
    training = queued().with_status(phase="Running")
    wl = admitted(training)
    wl["metadata"]["annotations"] = {"berth.dev/pod-set-hash": "0123456789abcdef"}
    plan = plan_for(training, running_group(training), wl)
    assert plan.status["phase"] == "Running" and not plan.delete and not plan.delete_workload
    annotations = {kueue.POD_SET_HASH_ANNOTATION: kueue.pod_set_hash(training)}
    assert plan.workload_patch == {"metadata": {"annotations": annotations}}
    wl["metadata"]["annotations"].update(annotations)
    assert plan_for(training, running_group(training), wl).workload_patch is None


def test_without_queueing_the_queue_status_goes() -> None:
    training = make_training().with_status(phase="Running", queue={"name": "team"})
    plan = reconcile(training, running_group(training), LATER)
    assert plan.status.get("queue") is None and not plan.create_workload


def test_kueue_is_told_the_kind_everywhere_under_its_one_name() -> None:
    """Kueue's `externalFrameworks` entry names the served kind (Kind.version.group): the test
    control plane's Kueue config, the docs and the chart must all follow the API."""
    assert kueue.FRAMEWORK == "BertTraining.v1alpha1.berth.dev"
    repo = Path(__file__).resolve().parents[3]
    for path in ("hack/testcluster/kueue.py", "docs/operator.md", "charts/berth/values.yaml"):
        assert kueue.FRAMEWORK in (repo / path).read_text(), path

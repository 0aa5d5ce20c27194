"""data.prepare: the Indexed Job's manifest and the Preparing phase's decisions (pure layer)."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from berth_operator import kueue, labels, podpolicy
from berth_operator.builders import build_worker_pod
from berth_operator.networkpolicy import build_prepare_network_policy
from berth_operator.policy import Plan, next_due, prepared, reconcile
from berth_operator.prepare import (
    DOCUMENTED_PERMANENT,
    PERMANENT,
    Preparation,
    build_prepare_job,
    observe_job,
)
from berth_operator.progress import (
    prepare_bytes_from_metrics,
    prepare_progress,
    progress_changed,
)
from berth_operator.workers import format_time
from berth_trainer.exit_codes import ExitCode
from tests.unit.operator.factories import T0, Training, make_pod, make_training
from tests.unit.operator.test_op_kueue import admitted, queued

LATER = T0 + timedelta(seconds=30)


def preparing(workers: int = 2, prepare_workers: int = 2, **run_policy: Any) -> Training:
    """A training with data.prepare of `prepare_workers` slices."""
    training = make_training(workers=workers)
    training["spec"]["data"]["prepare"] = {"workers": prepare_workers, "output": "/data/shards"}
    training["spec"]["training"]["globalBatchSize"] = 48
    return training.with_run_policy(**run_policy) if run_policy else training


def job(
    training: dict[str, Any],
    *,
    active: int = 0,
    succeeded: int = 0,
    failed: int = 0,
    condition: tuple[str, str, str] | None = None,
    owner: str = "uid-1",
) -> dict[str, Any]:
    """The training's prepare Job as the API server reports it (`condition`: type, reason,
    message of a True condition)."""
    body = build_prepare_job(training, "img")
    body["metadata"]["ownerReferences"] = [
        {"kind": "BertTraining", "name": "bert", "uid": owner, "controller": True}
    ]
    status: dict[str, Any] = {"active": active, "succeeded": succeeded, "failed": failed}
    if condition is not None:
        kind, reason, message = condition
        status["conditions"] = [
            {"type": kind, "status": "True", "reason": reason, "message": message}
        ]
    body["status"] = status
    return body


def prepare_pod(
    training: dict[str, Any],
    index: int,
    phase: str = "Running",
    exit_code: int | None = None,
    message: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """A pod of the prepare Job (index `index`), as the Job controller names and labels it."""
    template = copy.deepcopy(build_prepare_job(training, "img")["spec"]["template"])
    template["metadata"]["labels"][labels.JOB_COMPLETION_INDEX] = str(index)
    status: dict[str, Any] = {"phase": phase, "podIP": f"127.20.1.{index + 1}"}
    if reason is not None:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": reason, "message": message}
        ]
    if exit_code is not None:
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
        }
        if message:
            terminated["message"] = message
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    return {
        "metadata": {
            "name": f"bert-prepare-{index}-abcde",
            "namespace": "ml",
            "labels": template["metadata"]["labels"],
            "creationTimestamp": format_time(T0),
        },
        "spec": template["spec"],
        "status": status,
    }


def _conds(plan: Plan) -> dict[str, str]:
    return {c["type"]: c["status"] for c in plan.status.get("conditions", [])}


# -- the Job -----------------------------------------------------------------------------------


@pytest.mark.parametrize("slices", [1, 2, 16])
def test_job_is_indexed_with_one_index_per_prepare_worker(slices: int) -> None:
    body = build_prepare_job(preparing(prepare_workers=slices), "img")
    assert body["apiVersion"] == "batch/v1" and body["kind"] == "Job"
    assert body["metadata"]["name"] == "bert-prepare"
    spec = body["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == slices
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["maxFailedIndexes"] == 0


@pytest.mark.parametrize(
    ("restart_policy", "backoff", "per_index", "codes"),
    [
        ("OnFailure", 3, 3, list(DOCUMENTED_PERMANENT)),
        ("ExitCode", 5, 5, list(PERMANENT)),
        ("Never", 3, 0, list(PERMANENT)),
    ],
)
def test_restart_policy_maps_onto_the_job(
    restart_policy: str, backoff: int, per_index: int, codes: list[int]
) -> None:
    training = preparing(restartPolicy=restart_policy, backoffLimit=backoff)
    spec = build_prepare_job(training, "img")["spec"]
    assert spec["backoffLimitPerIndex"] == per_index
    ignore, fail = spec["podFailurePolicy"]["rules"]
    assert ignore == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert fail["action"] == "FailJob"
    assert fail["onExitCodes"] == {"containerName": "trainer", "operator": "In", "values": codes}
    assert ExitCode.DATA_INVALID in codes and ExitCode.CONFIG_INVALID in codes
    # Retryable codes are retried (a preempted or killed prepare pod), never fail the Job.
    assert not {ExitCode.PREEMPTED_TF_DEFAULT, ExitCode.PREEMPTED, 137} & set(codes)
    assert len(codes) <= 255 and codes == sorted(set(codes))  # the API server's rules


def test_prepare_pod_is_the_worker_pod_running_prepare() -> None:
    training = preparing().with_gpu(2)
    training["spec"]["podTemplate"] = {
        "metadata": {"labels": {"team": "nlp"}},
        "spec": {
            "nodeSelector": {"pool": "cpu"},
            "serviceAccountName": "reader",
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "corpus"}}],
            "containers": [
                {"name": "trainer", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
            ],
        },
    }
    worker = build_worker_pod(training, 0, "img", restart=0)
    template = build_prepare_job(training, "img")["spec"]["template"]
    pod, spec = template["spec"], worker["spec"]
    for same in ("securityContext", "volumes", "nodeSelector", "serviceAccountName"):
        assert pod[same] == spec[same], same
    assert pod["automountServiceAccountToken"] is True
    assert "hostname" not in pod and "subdomain" not in pod
    (container,) = pod["containers"]
    (trainer,) = spec["containers"]
    assert container["command"] == [
        "berth-trainer",
        "prepare",
        "--config",
        "/etc/berth/config.yaml",
        "--worker",
        "$(JOB_COMPLETION_INDEX)",
        "--metrics-port",
        "9090",
    ]
    for same in ("image", "securityContext", "volumeMounts", "terminationMessagePolicy"):
        assert container[same] == trainer[same], same
    assert [p["containerPort"] for p in container["ports"]] == [9090]
    env = {e["name"] for e in container["env"]}
    assert {"BERTH_NAMESPACE", "BERTH_TRAINING"} <= env
    assert not {"TF_CONFIG", "BERTH_WORKER_INDEX", "BERTH_EXPECTED_GPUS"} & env
    assert "resources" not in container  # it tokenizes on CPUs: no GPU held while it runs
    meta_labels = template["metadata"]["labels"]
    assert meta_labels[labels.ROLE] == "prepare" and meta_labels["team"] == "nlp"
    assert labels.INDEX not in meta_labels and labels.RESTART not in meta_labels
    assert podpolicy.violations(template, podpolicy.Level.RESTRICTED) == []


def test_cpu_and_memory_stay_accelerators_go() -> None:
    training = preparing().with_spec(
        resources={"limits": {"nvidia.com/gpu": 1, "cpu": 4, "memory": "8Gi"}}
    )
    (container,) = build_prepare_job(training, "img")["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"limits": {"cpu": "4", "memory": "8Gi"}}


def test_job_and_policy_labels_select_the_prepare_pods_only() -> None:
    training = preparing()
    body = build_prepare_job(training, "img")
    assert body["metadata"]["labels"][labels.TRAINING] == "bert"
    assert body["metadata"]["labels"][labels.ROLE] == "prepare"
    policy = build_prepare_network_policy(training, [{"podSelector": {"matchLabels": {"a": "b"}}}])
    assert policy["metadata"]["name"] == "bert-prepare"
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= body["spec"]["template"]["metadata"]["labels"].items()
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9090}]


# -- the decisions -----------------------------------------------------------------------------


def test_new_training_with_prepare_creates_the_job_not_the_workers() -> None:
    plan = reconcile(preparing(), [], T0)
    assert plan.create_prepare_job and plan.create == []
    assert plan.status["phase"] == "Preparing"
    assert plan.status["prepare"]["job"] == "bert-prepare"
    assert plan.status["prepare"]["summary"] == "0/2"
    assert _conds(plan)["Prepared"] == "False"
    assert "startTime" not in plan.status
    assert [e.reason for e in plan.events] == ["Preparing"]


@pytest.mark.parametrize(("active", "succeeded"), [(2, 0), (1, 1), (0, 1)])
def test_running_job_keeps_preparing(active: int, succeeded: int) -> None:
    training = preparing().with_status(phase="Preparing")
    running = Preparation(job(training, active=active, succeeded=succeeded))
    plan = reconcile(training, [], LATER, preparation=running)
    assert not plan.create_prepare_job and plan.create == []
    assert plan.status["phase"] == "Preparing"
    assert plan.status["prepare"]["succeeded"] == succeeded
    assert plan.status["prepare"]["summary"] == f"{succeeded}/2"
    assert plan.events == []  # already Preparing


def test_completed_job_creates_the_workers_in_the_same_pass() -> None:
    training = preparing(workers=3).with_status(phase="Preparing")
    done = Preparation(job(training, succeeded=2, condition=("Complete", "", "")))
    plan = reconcile(training, [], LATER, preparation=done)
    assert plan.create == [0, 1, 2] and not plan.create_prepare_job
    assert plan.status["phase"] == "Starting"
    assert _conds(plan)["Prepared"] == "True"
    assert prepared(plan.status)
    assert "Prepared" in [e.reason for e in plan.events]


def test_failed_job_fails_the_training_with_the_pods_termination_message() -> None:
    training = preparing().with_status(phase="Preparing")
    said = "data.train: corpus/b.txt line 3: not UTF-8"
    failed = Preparation(
        job(
            training,
            failed=1,
            condition=("Failed", "PodFailurePolicy", "Container trainer ... FailJob rule"),
        ),
        [prepare_pod(training, 0), prepare_pod(training, 1, "Failed", 3, said)],
    )
    plan = reconcile(training, [], LATER, preparation=failed)
    assert plan.status["phase"] == "Failed"
    assert plan.create == [] and not plan.create_prepare_job
    message = plan.status["message"]
    assert "slice 1" in message and "exit code 3" in message and said in message
    failed_condition = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed_condition["reason"] == "PrepareFailed"
    assert _conds(plan)["Prepared"] == "False"
    (event,) = [e for e in plan.events if e.reason == "PrepareFailed"]
    assert event.type == "Warning" and said in event.message


def test_failed_job_without_a_failed_pod_says_what_the_job_says() -> None:
    training = preparing().with_status(phase="Preparing")
    failed = Preparation(job(training, condition=("Failed", "DeadlineExceeded", "too slow")))
    plan = reconcile(training, [], LATER, preparation=failed)
    assert plan.status["phase"] == "Failed"
    assert (
        plan.status["message"]
        == "data.prepare: Job bert-prepare failed (DeadlineExceeded): too slow"
    )


def test_prepared_training_never_prepares_again() -> None:
    training = preparing().with_status(phase="Preparing")
    done = reconcile(training, [], LATER, preparation=Preparation())
    assert done.create_prepare_job  # not prepared yet: the Job is (re)created
    prepared_status = reconcile(
        training,
        [],
        LATER,
        preparation=Preparation(job(training, succeeded=2, condition=("Complete", "", ""))),
    ).status
    again = make_training(workers=2)
    again["spec"] = training["spec"]
    again = again.with_status(**prepared_status)
    # The Job is gone (deleted by hand): the Prepared condition still stands.
    plan = reconcile(again, [], LATER + timedelta(seconds=1))
    assert not plan.create_prepare_job and plan.create == [0, 1]
    # A group restart after a worker failure creates workers again, never a Job.
    running = again.with_status(phase="Running")
    pods = [make_pod(running, 0), make_pod(running, 1, "Failed", exit_code=137)]
    restart = reconcile(running, pods, LATER + timedelta(seconds=2))
    assert restart.status["phase"] == "Restarting" and not restart.create_prepare_job


@pytest.mark.parametrize("suspend", [True, False])
def test_suspend_deletes_a_running_job_only(suspend: bool) -> None:
    training = preparing(suspend=suspend).with_status(phase="Preparing")
    plan = reconcile(training, [], LATER, preparation=Preparation(job(training, active=2)))
    assert plan.delete_prepare_job == ("bert-prepare" if suspend else None)
    assert plan.status["phase"] == ("Suspended" if suspend else "Preparing")


def test_job_state_reads_counts_and_conditions() -> None:
    training = preparing()
    state = observe_job(job(training, active=1, succeeded=1, failed=2))
    assert (state.active, state.succeeded, state.failed, state.complete) == (1, 1, 2, False)
    assert state.failure is None
    target = observe_job(job(training, condition=("FailureTarget", "PodFailurePolicy", "x")))
    assert target.failure == ("PodFailurePolicy", "x")


def test_pod_policy_refuses_a_training_whose_prepare_pod_breaks_it() -> None:
    training = preparing()
    training["spec"]["podTemplate"] = {"spec": {"hostNetwork": True}}
    plan = reconcile(training, [], T0)
    assert plan.status["phase"] == "Failed" and not plan.create_prepare_job


# -- progress ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slices", "expected"),
    [
        ({}, {}),
        ({"p0": (0, 100)}, {"preparedBytes": 0, "inputBytes": 100, "summary": "prepare 0%"}),
        (
            {"p0": (50, 100), "p1": (100, 100)},
            {"preparedBytes": 150, "inputBytes": 200, "summary": "prepare 75%"},
        ),
        ({"p0": (5, 0)}, {"preparedBytes": 5, "inputBytes": 0, "summary": "prepare -"}),
    ],
)
def test_prepare_progress_sums_the_pods(
    slices: dict[str, tuple[int, int]], expected: dict[str, Any]
) -> None:
    assert prepare_progress(slices) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("berth_prepare_input_bytes 10\n", None),
        ("berth_prepare_input_total_bytes 7.0\n", (0, 7)),
        (
            "# TYPE berth_prepare_input_bytes gauge\nberth_prepare_input_bytes 3.0\n"
            "berth_prepare_input_total_bytes 9.0\nberth_prepare_examples 4.0\n",
            (3, 9),
        ),
    ],
)
def test_prepare_bytes_from_metrics(text: str, expected: tuple[int, int] | None) -> None:
    assert prepare_bytes_from_metrics(text) == expected


def test_training_progress_after_preparing_is_not_rewritten_for_the_prepare_fields() -> None:
    old = {"preparedBytes": 9, "inputBytes": 9, "step": 5, "summary": "5/10", "updatedAt": "x"}
    assert not progress_changed(old, {"step": 5, "summary": "5/10"})
    assert progress_changed(old, {"step": 6, "summary": "6/10"})


@pytest.mark.parametrize(("after", "fails"), [(899, False), (900, True)])
def test_a_prepare_pod_pending_too_long_fails_and_stops_the_job(after: int, fails: bool) -> None:
    training = preparing().with_status(phase="Preparing")
    stuck = prepare_pod(training, 1, "Pending", message="0/4 nodes", reason="Unschedulable")
    preparation = Preparation(job(training, active=2), [prepare_pod(training, 0), stuck])
    now = T0 + timedelta(seconds=after)
    plan = reconcile(training, [], now, preparation=preparation)
    assert plan.status["phase"] == ("Failed" if fails else "Preparing")
    assert plan.delete_prepare_job == ("bert-prepare" if fails else None)
    if fails:
        assert "pendingTimeoutSeconds" in plan.status["message"]
        failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "Unschedulable"
    # The rule's due time wakes the training with no other event.
    waiting = training.with_status(phase="Preparing")
    assert next_due(waiting, [], [prepare_pod(training, 0), stuck]) == T0 + timedelta(seconds=900)


def test_kueue_admits_the_training_before_its_job_runs() -> None:
    training = queued(preparing())
    held = reconcile(training, [], LATER, kueue.Queueing("team", None))
    assert held.status["phase"] == "Queued" and not held.create_prepare_job
    going = reconcile(training, [], LATER, kueue.Queueing("team", admitted(training)))
    assert going.status["phase"] == "Preparing" and going.create_prepare_job
    # Its pods run under the training's admission: the Job is never queued a second time.
    assert kueue.QUEUE_LABEL not in build_prepare_job(training, "img")["metadata"]["labels"]

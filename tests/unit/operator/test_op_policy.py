"""Policy: (training, pods, now) → plan, over the whole lifecycle, without a cluster."""

from __future__ import annotations

from datetime import timedelta

import pytest

from berth_operator.policy import (
    FINISH_GRACE_SECONDS,
    Plan,
    next_due,
    reconcile,
    should_retry,
    status_patch,
)
from berth_operator.workers import observe_pod
from tests.unit.operator.factories import T0, make_pod, make_training, running_group

LATER = T0 + timedelta(seconds=30)


def _conds(plan: Plan) -> dict[str, str]:
    return {c["type"]: c["status"] for c in plan.status.get("conditions", [])}


def _reasons(plan: Plan) -> list[str]:
    return [e.reason for e in plan.events]


def test_new_training_creates_every_worker_and_starts() -> None:
    plan = reconcile(make_training(), [], T0)
    assert plan.create == [0, 1, 2]
    assert plan.delete == []
    assert plan.restart == 0
    assert plan.status["phase"] == "Starting"
    assert plan.status["startTime"] == "2025-01-01T12:00:00Z"
    assert plan.status["workers"]["summary"] == "0/3"
    assert _conds(plan)["Created"] == "True"


def test_all_ready_is_running() -> None:
    training = make_training().with_status(phase="Starting", restarts=0)
    plan = reconcile(training, running_group(training), LATER)
    assert plan.create == [] and plan.delete == []
    assert plan.status["phase"] == "Running"
    assert plan.status["workers"] == {
        "ready": 3,
        "active": 3,
        "succeeded": 0,
        "failed": 0,
        "summary": "3/3",
    }
    assert _conds(plan)["Running"] == "True"
    assert "AllWorkersReady" in _reasons(plan)


def test_partially_created_group_creates_only_missing() -> None:
    training = make_training().with_status(phase="Starting")
    plan = reconcile(training, [make_pod(training, 0, "Pending")], LATER)
    assert plan.create == [1, 2]
    assert plan.status["phase"] == "Starting"


def test_running_is_a_fixed_point() -> None:
    training = make_training().with_status(phase="Starting")
    first = reconcile(training, running_group(training), LATER)
    again = reconcile(
        training.with_status(**first.status), running_group(training), LATER + timedelta(seconds=5)
    )
    assert status_patch(first.status, again.status) == {}
    assert again.events == [] and again.create == [] and again.delete == []


def test_chief_success_succeeds_and_cleans_running_pods() -> None:
    training = make_training().with_status(phase="Running")
    pods = [
        make_pod(training, 0, "Succeeded", exit_code=0),
        make_pod(training, 1, "Succeeded", exit_code=0),
        make_pod(training, 2),
    ]
    plan = reconcile(training, pods, LATER)
    assert plan.status["phase"] == "Succeeded"
    assert plan.status["completionTime"] == "2025-01-01T12:00:30Z"
    assert plan.delete == []  # worker 2 gets FINISH_GRACE_SECONDS to exit (and keep its logs)
    assert _conds(plan)["Succeeded"] == "True"
    done = training.with_status(**plan.status)
    assert next_due(done, pods) == LATER + timedelta(seconds=FINISH_GRACE_SECONDS)
    later = LATER + timedelta(seconds=FINISH_GRACE_SECONDS)
    assert reconcile(done, pods, later).delete == ["bert-worker-2"]  # cleanPodPolicy Running
    assert next_due(done, pods[:2]) is None  # nothing left running: nothing due


FIGURES = (
    '{"step":100,"totalSteps":100,"loss":1.5,'
    '"validation":{"step":100,"metrics":{"accuracy":0.4125,"loss":2.75}}}'
)


@pytest.mark.parametrize(
    ("message", "progress", "validation"),
    [
        (
            FIGURES,
            {"step": 100, "totalSteps": 100, "loss": 1.5, "percent": 100, "etaSeconds": 0,
             "summary": "100/100", "examplesPerSecond": 320.0, "lastCheckpointStep": 60},
            {"step": 100, "summary": "acc 0.412", "metrics": [
                {"name": "accuracy", "value": 0.4125}, {"name": "loss", "value": 2.75}]},
        ),
        # A user's image, an older trainer, a cut message: the scraped figures stay as they are.
        ("done", None, None),
        (None, None, None),
        (FIGURES[:50], None, None),
    ],
)  # fmt: skip
def test_chief_success_writes_its_final_figures_with_the_phase(
    message: str | None, progress: dict | None, validation: dict | None
) -> None:
    scraped = {"step": 40, "totalSteps": 100, "percent": 40, "loss": 2.5, "summary": "40/100",
               "examplesPerSecond": 320.0, "lastCheckpointStep": 60, "etaSeconds": 9,
               "updatedAt": "2025-01-01T12:00:10Z"}  # fmt: skip
    training = make_training().with_status(phase="Running", progress=scraped)
    chief = make_pod(training, 0, "Succeeded", exit_code=0, message=message)
    plan = reconcile(training, [chief, *running_group(training)[1:]], LATER)
    assert plan.status["phase"] == "Succeeded"
    patch = status_patch(training["status"], plan.status)
    assert patch["phase"] == "Succeeded"  # one write: the phase with the figures
    if progress is None:
        assert "progress" not in patch and "validation" not in patch
        return
    assert patch["progress"] == {**progress, "updatedAt": "2025-01-01T12:00:30Z"}
    assert patch["validation"] == {**validation, "updatedAt": "2025-01-01T12:00:30Z"}
    # Later passes (the pods cleaned up, the message gone) leave them alone.
    done = training.with_status(**{**training["status"], **plan.status})
    again = reconcile(done, [], LATER + timedelta(seconds=FINISH_GRACE_SECONDS))
    assert "progress" not in status_patch(done["status"], again.status)


@pytest.mark.parametrize(
    ("policy", "phase", "seconds", "deleted"),
    [
        ("All", "Succeeded", 1, ["bert-worker-0", "bert-worker-1"]),
        ("Running", "Succeeded", 1, []),
        ("Running", "Succeeded", FINISH_GRACE_SECONDS, ["bert-worker-1"]),
        ("Running", "Failed", 1, ["bert-worker-1"]),
        ("None", "Succeeded", FINISH_GRACE_SECONDS, []),
    ],
)
def test_clean_pod_policy_after_finish(
    policy: str, phase: str, seconds: int, deleted: list[str]
) -> None:
    training = (
        make_training(workers=2)
        .with_run_policy(cleanPodPolicy=policy)
        .with_status(phase=phase, completionTime="2025-01-01T12:00:00Z")
    )
    pods = [make_pod(training, 0, "Succeeded", exit_code=0), make_pod(training, 1)]
    assert reconcile(training, pods, T0 + timedelta(seconds=seconds)).delete == deleted


@pytest.mark.parametrize(
    ("policy", "code", "restarts"),
    [
        ("OnFailure", 137, True),
        ("OnFailure", 2, True),
        ("ExitCode", 137, True),
        ("ExitCode", 201, True),
        ("ExitCode", 42, True),
        ("ExitCode", 2, False),
        ("ExitCode", 1, False),
        ("Never", 137, False),
    ],
)
def test_failure_restarts_whole_group_or_fails(policy: str, code: int, restarts: bool) -> None:
    training = (
        make_training()
        .with_run_policy(restartPolicy=policy)
        .with_status(phase="Running", restarts=0)
    )
    pods = running_group(training)
    pods[1] = make_pod(training, 1, "Failed", exit_code=code, message="boom: bad config")
    plan = reconcile(training, pods, LATER)
    if restarts:
        assert plan.status["phase"] == "Restarting"
        assert plan.status["restarts"] == plan.restart == 1
        assert sorted(plan.delete) == ["bert-worker-0", "bert-worker-1", "bert-worker-2"]
        assert plan.create == []
        assert "Restarting" in _reasons(plan)
    else:
        assert plan.status["phase"] == "Failed"
        assert "boom: bad config" in plan.status["message"]
        assert f"exit code {code}" in plan.status["message"]
        assert plan.status["restarts"] == 0
    assert "WorkerFailed" in _reasons(plan)


def test_restart_waits_for_old_pods_then_creates_new_group() -> None:
    training = make_training().with_status(phase="Restarting", restarts=1)
    old = [
        make_pod(
            training,
            i,
            "Failed" if i == 1 else "Running",
            restart=0,
            exit_code=137 if i == 1 else None,
            terminating=True,
        )
        for i in range(3)
    ]
    waiting = reconcile(training, old, LATER)
    assert waiting.create == [] and waiting.delete == []  # already terminating
    assert waiting.status["phase"] == "Restarting"
    fresh = reconcile(training, [], LATER)
    assert fresh.create == [0, 1, 2] and fresh.restart == 1
    ready = reconcile(
        training.with_status(**fresh.status), running_group(training, restart=1), LATER
    )
    assert ready.status["phase"] == "Running"
    assert _conds(ready)["Restarting"] == "False"


def test_stale_pods_of_an_older_restart_are_deleted() -> None:
    training = make_training().with_status(phase="Restarting", restarts=1)
    plan = reconcile(training, running_group(training, restart=0), LATER)
    assert sorted(plan.delete) == ["bert-worker-0", "bert-worker-1", "bert-worker-2"]
    assert plan.create == []


def test_lagging_status_never_deletes_newer_pods() -> None:
    training = make_training().with_status(phase="Restarting", restarts=0)
    plan = reconcile(training, running_group(training, restart=1), LATER)
    assert plan.delete == [] and plan.restart == 1
    assert plan.status["restarts"] == 1 and plan.status["phase"] == "Running"


def test_backoff_limit_counts_group_restarts() -> None:
    training = (
        make_training().with_run_policy(backoffLimit=1).with_status(phase="Running", restarts=1)
    )
    pods = running_group(training, restart=1)
    pods[0] = make_pod(training, 0, "Failed", restart=1, exit_code=137)
    plan = reconcile(training, pods, LATER)
    assert plan.status["phase"] == "Failed"
    assert _conds(plan)["Failed"] == "True"
    assert plan.status["conditions"][-1]["reason"] == "BackoffLimitExceeded"


def test_evicted_worker_is_retryable_under_exit_code() -> None:
    training = (
        make_training().with_run_policy(restartPolicy="ExitCode").with_status(phase="Running")
    )
    pods = running_group(training)
    pods[2] = make_pod(training, 2, "Failed", pod_reason="Evicted", message="node low on memory")
    plan = reconcile(training, pods, LATER)
    assert plan.status["phase"] == "Restarting"
    assert "evicted" in plan.status["message"] and "node low on memory" in plan.status["message"]


def test_worker_deleted_while_running_restarts_group() -> None:
    training = make_training().with_status(phase="Running")
    plan = reconcile(training, running_group(training)[:2], LATER)
    assert plan.status["phase"] == "Restarting"
    assert (
        "WorkerDeleted" in plan.status["conditions"][-1]["reason"]
        or "deleted" in plan.status["message"]
    )


def test_pending_timeout_fails_with_scheduler_reason() -> None:
    training = (
        make_training()
        .with_run_policy(pendingTimeoutSeconds=10)
        .with_status(phase="Starting", startTime="2025-01-01T12:00:00Z")
    )
    pods = [make_pod(training, i, "Pending", unschedulable=True) for i in range(3)]
    assert reconcile(training, pods, T0 + timedelta(seconds=5)).status["phase"] == "Starting"
    plan = reconcile(training, pods, T0 + timedelta(seconds=11))
    assert plan.status["phase"] == "Failed"
    assert "Unschedulable" in plan.status["message"]
    assert "0/3 nodes are available" in plan.status["message"]
    assert sorted(plan.delete) == ["bert-worker-0", "bert-worker-1", "bert-worker-2"]


def test_active_deadline() -> None:
    training = (
        make_training()
        .with_run_policy(activeDeadlineSeconds=5)
        .with_status(phase="Running", startTime="2025-01-01T12:00:00Z")
    )
    assert (
        reconcile(training, running_group(training), T0 + timedelta(seconds=4)).status["phase"]
        == "Running"
    )
    plan = reconcile(training, running_group(training), T0 + timedelta(seconds=5))
    assert plan.status["phase"] == "Failed"
    assert plan.status["conditions"][-1]["reason"] == "DeadlineExceeded"
    assert len(plan.delete) == 3


def test_suspend_deletes_pods_and_resume_recreates() -> None:
    training = (
        make_training()
        .with_run_policy(suspend=True)
        .with_status(phase="Running", startTime="2025-01-01T12:00:00Z")
    )
    plan = reconcile(training, running_group(training), LATER)
    assert plan.status["phase"] == "Suspended" and len(plan.delete) == 3
    assert _conds(plan)["Suspended"] == "True"
    resumed_training = training.with_run_policy(suspend=False).with_status(**plan.status)
    resumed = reconcile(resumed_training, [], LATER + timedelta(seconds=60))
    assert resumed.create == [0, 1, 2]
    assert resumed.status["phase"] == "Starting"
    assert resumed.status["startTime"] == "2025-01-01T12:01:30Z"
    assert _conds(resumed)["Suspended"] == "False"
    assert "Resumed" in _reasons(resumed)


def test_ttl_after_finished_deletes_the_training() -> None:
    training = (
        make_training()
        .with_run_policy(ttlSecondsAfterFinished=10)
        .with_status(phase="Succeeded", completionTime="2025-01-01T12:00:00Z")
    )
    assert not reconcile(training, [], T0 + timedelta(seconds=9)).delete_training
    assert reconcile(training, [], T0 + timedelta(seconds=10)).delete_training


def test_invalid_spec_fails_without_creating() -> None:
    training = make_training().with_spec(task="classification")  # no numClasses
    plan = reconcile(training, [], T0)
    assert plan.status["phase"] == "Failed"
    assert plan.status["message"].startswith("spec")
    assert "numClasses" in plan.status["message"]
    assert plan.create == []


def test_should_retry_without_exit_code() -> None:
    training = make_training()
    state = observe_pod(make_pod(training, 0, "Failed", pod_reason="Evicted"))
    assert state is not None
    assert should_retry("ExitCode", state) and not should_retry("Never", state)


def test_status_patch_only_changed_fields() -> None:
    assert status_patch(
        {"phase": "Running", "restarts": 0}, {"phase": "Running", "restarts": 1, "message": "x"}
    ) == {"restarts": 1, "message": "x"}

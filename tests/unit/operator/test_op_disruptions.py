"""Disruptions and lost nodes: restart the group without spending runPolicy.backoffLimit, and
never wait on a pod a dead node holds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from berth_operator.nodes import NodeHealth
from berth_operator.policy import LOST_NODE_GRACE_SECONDS, reconcile, suspect_nodes
from tests.unit.operator.factories import T0, make_pod, make_training, running_group

LATER = T0 + timedelta(seconds=30)
UNREACHABLE, NOT_READY = NodeHealth.UNREACHABLE, NodeHealth.NOT_READY


def _group(training: dict[str, Any], **on: Any) -> list[dict[str, Any]]:
    """Workers 0 and 1 on node a, 2 on b, all Running and Ready unless `on` says otherwise
    (index → make_pod keyword arguments)."""
    return [
        make_pod(training, i, node="a" if i < 2 else "b", **on.get(str(i), {})) for i in range(3)
    ]


@pytest.mark.parametrize(
    ("phase", "pods", "health", "why"),
    [
        # Drain, preemption, the taint manager: the pod says so itself.
        ("Running", {"1": {"disruption": "EvictionByEvictionAPI"}}, {}, "EvictionByEvictionAPI"),
        ("Running", {"2": {"disruption": "PreemptionByScheduler"}}, {}, "PreemptionByScheduler"),
        # A dead node: its pods lost readiness, which had moved the phase back to Starting.
        ("Starting", {"0": {"ready": False}}, {"a": UNREACHABLE}, "node a is unreachable"),
        ("Running", {"2": {"ready": False}}, {"b": NodeHealth.GONE}, "node b is gone"),
        ("Running", {"2": {"ready": False}}, {"b": NOT_READY}, "node b is not ready"),
    ],
)
def test_disruption_restarts_the_group_outside_the_backoff_limit(
    phase: str, pods: dict[str, Any], health: dict[str, NodeHealth], why: str
) -> None:
    training = (
        make_training()
        .with_run_policy(backoffLimit=0)  # a failure would fail the training
        .with_status(phase=phase, restarts=0)
    )
    plan = reconcile(training, _group(training, **pods), LATER, health=health)
    assert plan.status["phase"] == "Restarting"
    assert (plan.status["restarts"], plan.status["disruptions"], plan.restart) == (0, 1, 1)
    assert why in plan.status["message"]
    # A worker that was told (DisruptionTarget) takes part in the SIGTERM checkpoint: full grace.
    assert (plan.delete_grace is None) == ("node" not in why)
    assert {e.reason for e in plan.events} >= {"Disrupted", "Restarting"}
    assert sorted(plan.delete + plan.force_delete) == [f"bert-worker-{i}" for i in range(3)]


def test_pods_on_a_dead_node_go_with_grace_0_and_the_next_group_follows() -> None:
    training = make_training().with_status(phase="Running", restarts=0)
    pods = _group(training, **{"0": {"ready": False}, "1": {"ready": False}})
    plan = reconcile(training, pods, LATER, health={"a": UNREACHABLE})
    assert plan.force_delete == ["bert-worker-0", "bert-worker-1"]
    assert plan.delete == ["bert-worker-2"]  # its kubelet stops it: with a short grace, as it
    assert plan.delete_grace == LOST_NODE_GRACE_SECONDS  # cannot agree on a step to save at
    # Next pass: the live worker is still saving; the API server dropped the two on node a.
    restarting = training.with_status(**plan.status)
    saving = [make_pod(training, 2, node="b", terminating=True)]
    again = reconcile(restarting, saving, LATER, health={"a": UNREACHABLE})
    assert again.create == [0, 1] and again.restart == 1
    assert again.status["phase"] == "Restarting" and again.status["disruptions"] == 1
    # A pod someone else deleted on the dead node is stuck Terminating: it goes with grace 0.
    stuck = [make_pod(training, 0, node="a", ready=False, terminating=True)]
    assert reconcile(restarting, stuck, LATER, health={"a": UNREACHABLE}).force_delete == [
        "bert-worker-0"
    ]


@pytest.mark.parametrize(
    ("pods", "health"),
    [
        ({}, {"a": NOT_READY}),  # the node flaps, its pods are still Ready: wait
        ({"0": {"ready": False}}, {"a": NodeHealth.READY}),  # starting up on a fine node
        (  # done there
            {
                "0": {"phase": "Succeeded", "exit_code": 0},
                "1": {"phase": "Succeeded", "exit_code": 0},
            },
            {"a": UNREACHABLE},
        ),
    ],
)
def test_no_disruption(pods: dict[str, Any], health: dict[str, NodeHealth]) -> None:
    training = make_training().with_status(phase="Running", restarts=0)
    plan = reconcile(training, _group(training, **pods), LATER, health=health)
    assert plan.status["phase"] in ("Running", "Starting", "Succeeded")
    assert plan.status["disruptions"] == 0 and plan.force_delete == []


def test_a_disruption_outranks_the_failures_it_causes() -> None:
    training = (
        make_training()
        .with_run_policy(restartPolicy="ExitCode")
        .with_status(phase="Running", restarts=0)
    )
    pods = _group(
        training,
        **{
            "0": {"phase": "Failed", "exit_code": 1},  # its collective broke: permanent code
            "1": {"phase": "Failed", "exit_code": 201, "disruption": "TerminationByKubelet"},
        },
    )
    plan = reconcile(training, pods, LATER)
    assert plan.status["phase"] == "Restarting"
    assert (plan.status["restarts"], plan.status["disruptions"]) == (0, 1)


def test_disruption_limit() -> None:
    training = (
        make_training()
        .with_run_policy(disruptionLimit=2)
        .with_status(phase="Running", restarts=0, disruptions=2)
    )
    pods = [make_pod(training, i, restart=2) for i in range(3)]
    pods[1] = make_pod(training, 1, restart=2, disruption="EvictionByEvictionAPI")
    plan = reconcile(training, pods, LATER)
    assert plan.status["phase"] == "Failed"
    assert plan.status["message"].startswith("runPolicy.disruptionLimit 2 reached: worker 1")


def test_the_group_number_counts_both_kinds_of_restart() -> None:
    training = make_training().with_status(phase="Restarting", restarts=1, disruptions=2)
    plan = reconcile(training, running_group(training, restart=2), LATER)
    assert plan.restart == 3 and plan.create == []
    assert sorted(plan.delete) == [f"bert-worker-{i}" for i in range(3)]  # group 2 is stale
    fresh = reconcile(training, [], LATER)
    assert fresh.create == [0, 1, 2] and fresh.restart == 3


def test_suspect_nodes_are_those_of_unready_or_deleted_workers() -> None:
    training = make_training(workers=4)
    pods = [
        make_pod(training, 0, node="a"),  # Ready: its node is fine
        make_pod(training, 1, node="b", ready=False),
        make_pod(training, 2, node="c", terminating=True),
        make_pod(training, 3, "Succeeded", node="d", exit_code=0),  # finished: no matter
        make_pod(training, 4, "Pending"),  # not scheduled yet
    ]
    assert suspect_nodes(pods) == ["b", "c"]


def test_a_worker_evicted_and_deleted_between_passes_is_a_disruption() -> None:
    """A node that deletes an evicted pod at once (KWOK here; a kubelet with nothing to stop)
    leaves only the watch's last word: the deleted pod with its DisruptionTarget."""
    training = make_training().with_run_policy(backoffLimit=0).with_status(phase="Running")
    pods = running_group(training)
    evicted = make_pod(training, 1, disruption="EvictionByEvictionAPI", terminating=True)
    plan = reconcile(training, [pods[0], pods[2]], LATER, deleted=[evicted])
    assert plan.status["phase"] == "Restarting"
    assert (plan.status["restarts"], plan.status["disruptions"]) == (0, 1)
    # Without it, the same pass sees a worker vanish from a running group: a failure.
    assert reconcile(training, [pods[0], pods[2]], LATER).status["phase"] == "Failed"
